"""The radiologists' yardstick (benchmarks.studies.birads): BI-RADS as a score against
biopsy, beside a model on the same images (issue 22)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from benchmarks.studies.birads import birads_yardstick, busbra_samples, main, split_part


def test_birads_auc_and_the_biopsy_operating_point():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    birads = np.array([2, 3, 4, 2, 4, 5, 3, 5])
    model = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])     # separates perfectly
    doc = birads_yardstick(y, birads, groups=list("abcdefgh"), model_p=model, model_threshold=0.5, n_resamples=200)
    # pairs (malignant, benign): 16; BI-RADS wins 13, ties 2 (4-4, 3-3), loses 1 (3 vs 4) -> (13 + 1) / 16
    assert doc["birads"]["roc_auc"]["value"] == (13 + 1) / 16
    assert doc["birads"]["sensitivity"]["value"] == 0.75          # 3 of 4 malignant at BI-RADS >= 4
    assert doc["birads"]["specificity"]["value"] == 0.75          # one benign is BI-RADS 4
    assert doc["model"]["roc_auc"]["value"] == 1.0 and doc["model"]["sensitivity"]["value"] == 1.0
    assert doc["model_minus_birads"]["difference"] == 1.0 - (13 + 1) / 16
    assert doc["birads_counts"] == {"2": 2, "3": 2, "4": 2, "5": 2}


def _busbra_like(root: Path) -> Path:
    (root / "Images").mkdir(parents=True)
    rows = []
    for i in range(12):
        cv2.imwrite(str(root / "Images" / f"bus_{i:04d}.png"), np.full((20, 20), 10 * i, np.uint8))
        rows.append([f"bus_{i:04d}", str(i // 2), "malignant" if i % 3 == 0 else "benign", str(2 + i % 4)])
    with open(root / "bus_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Case", "Pathology", "BIRADS"])
        w.writerows(rows)
    return root / "bus_data.csv"


def test_split_parts_are_matched_by_source_folder(tmp_path):
    csv_path = _busbra_like(tmp_path / "elsewhere" / "busbra")
    known = busbra_samples(csv_path)
    split = {"sources": [{"name": "bb", "path": "/old/place/busbra/bus_data.csv", "kind": "csv"},
                         {"name": "busi", "path": "/old/place/busi", "kind": "folder"}],
             "files": {"test": [{"source": "bb", "path": "Images/bus_0003.png"},
                                {"source": "busi", "path": "benign/x.png"},
                                {"source": "bb", "path": "Images/bus_0007.png"}]}}
    assert [s.relative for s in split_part(split, "test", csv_path, known)] == ["Images/bus_0003.png",
                                                                               "Images/bus_0007.png"]
    assert [s.birads for s in split_part(split, "test", csv_path, known)] == [5, 5]


def test_without_a_model_it_writes_birads_on_all_images(tmp_path, capsys):
    csv_path = _busbra_like(tmp_path / "busbra")
    assert main(["--busbra", str(csv_path), "--out", str(tmp_path / "out"), "--bootstrap", "50"]) == 0
    doc = json.loads((tmp_path / "out" / "birads.json").read_text())
    assert list(doc["parts"]) == ["all BUS-BRA images (no model)"] and doc["parts"]["all BUS-BRA images (no model)"]["n"] == 12
    assert "| all BUS-BRA images (no model) | 12 (4) |" in (tmp_path / "out" / "birads.md").read_text()
    assert main(["--busbra", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "bus_data.csv not found" in capsys.readouterr().err
