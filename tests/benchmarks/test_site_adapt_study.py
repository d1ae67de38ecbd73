"""benchmarks.studies.site_adapt: repeated draws of a site's scans, adapted on and scored."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.dataset import Sample


def test_a_draw_takes_whole_patients_until_it_has_enough():
    from benchmarks.studies.site_adapt import draw
    samples = [Sample("s", None, f"{i}.png", i % 2, None, group=f"p{i // 3}") for i in range(30)]
    chosen = draw(samples, 10, np.random.default_rng(0))
    patients = {samples[i].group for i in chosen}
    assert 10 <= len(chosen) <= 12
    assert chosen == {i for i, s in enumerate(samples) if s.group in patients}      # every image of each patient


def test_each_negative_class_is_scored_against_the_positives():
    from benchmarks.studies.site_adapt import scores
    y = np.array([1] * 10 + [0] * 20)
    classes = ["malignant"] * 10 + ["benign"] * 10 + ["normal"] * 10
    p = np.r_[np.full(10, 0.9), np.full(10, 0.1), np.full(10, 0.95)]       # normal rated above malignant
    out = scores(y, p, classes)
    assert out["benign vs malignant"] == 1.0 and out["normal vs malignant"] == 0.0 and out["auc"] == 0.5


@pytest.mark.slow
def test_the_study_writes_each_draw_before_and_after(tiny_export, tiny_dataset, tmp_path):
    from benchmarks.studies.site_adapt import main
    site = tmp_path / "site"
    for copy in range(3):                         # 60 scans: 20 to adapt on, the rest scored
        for p in tiny_dataset.rglob("*.png"):
            target = site / p.parent.name / f"{copy}-{p.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, target)
    out = tmp_path / "study"
    assert main([str(tiny_export), "--data", str(site), "--draws", "2", "--size", "20", "--out", str(out)]) == 0
    doc = json.loads((out / "site_adapt.json").read_text())
    assert len(doc["draws"]) == 2 and (out / "site_adapt.png").stat().st_size > 0
    for row in doc["draws"]:
        assert row["adapted_on"] == 20 and row["scored"] == 40
        assert row["gain"] == pytest.approx(row["adapted"]["auc"] - row["parent"]["auc"])
        # benign (and normal, with 10 or more of them scored) against malignant
        assert {"auc", "benign vs malignant"} <= set(row["parent"]) == set(row["adapted"])
    assert "2 draws" in (out / "site_adapt.md").read_text()


def test_too_few_scans_are_refused_plainly(tiny_export, tiny_dataset, capsys):
    from benchmarks.studies.site_adapt import main
    assert main([str(tiny_export), "--data", str(tiny_dataset), "--size", "20"]) == 2
    assert "usable labelled scans; the study needs --size" in capsys.readouterr().err
