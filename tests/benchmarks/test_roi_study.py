"""benchmarks.studies.roi: whole image vs a clinician's box vs the proposed box."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.studies.roi import MODES, compare, main
from tests.conftest import BUSI, missing

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "runtime" / "models" / "bus-vgg16-w50-128"


def _rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    rows = []
    for i, label in enumerate(y):
        rows.append({"label": int(label), "group": f"p{i // 2}", "whole": float(rng.random()),
                     "clinician box": float(label * 0.6 + rng.random() * 0.4),   # separates well
                     "proposed box": float(rng.random()), "proposed_iou": 0.7 if i % 3 else 0.2,
                     "ood": {"whole": False, "clinician box": i % 4 == 0, "proposed box": None}})
    return rows


def test_compare_scores_each_mode_and_its_difference_from_the_whole_image():
    out = compare(_rows(80, 0), threshold=0.5, n_resamples=200)
    assert out["n"] == 80
    assert out["clinician box"]["roc_auc"]["value"] > 0.9 > out["whole"]["roc_auc"]["value"]
    diff = out["clinician box"]["minus_whole"]
    assert diff["difference"] > 0.3 and diff["ci95"]["low"] > 0          # a clear, measured gain
    assert "minus_whole" not in out["whole"]
    assert out["proposed_iou"]["share_at_least_0.5"] == pytest.approx(np.mean([i % 3 != 0 for i in range(80)]))
    assert set(MODES) <= set(out)
    assert out["whole"]["ood_flagged"] == 0.0 and out["clinician box"]["ood_flagged"] == 0.25
    assert out["proposed box"]["ood_flagged"] is None


def test_one_class_gives_no_auc():
    rows = [dict(r, label=1) for r in _rows(10, 1)]
    assert compare(rows, 0.5, 50)["note"] == "one class only: no AUC"


@pytest.mark.slow    # classifies 24 real lesion images three ways (~10 s)
def test_study_runs_on_the_shipped_model(tmp_path):
    if not BUSI.is_dir() or not (SHIPPED / "split.json").is_file():
        missing("BUSI development data or the shipped model not present")
    assert main([str(SHIPPED), "--parts", "test", "--limit", "24", "--bootstrap", "50", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "roi.json").read_text())
    rows = doc["parts"]["test"]["rows"]
    assert len(rows) == 24 and all(0 <= r[m] <= 1 for r in rows for m in MODES)
    assert any(r["clinician box"] != r["whole"] for r in rows)           # the box changes what is read
    assert (tmp_path / "roi.png").stat().st_size > 1000
    assert "clinician box" in (tmp_path / "roi.md").read_text()
