"""The localiser study's own arithmetic and report (the measurement itself runs on the
real export: docs/results/localiser)."""
from __future__ import annotations

import shutil

import pytest

from benchmarks.studies.localiser import run_study, study_markdown, study_plot, wilson
from runtime.lesion_box import Box
from runtime.lesion_scores import score_box, summary_by
from runtime.manifest import write_localiser
from runtime.shipped import shipped_models


def test_wilson_interval():
    assert wilson(0, 0) == (None, None)
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)
    low, high = wilson(47, 65)
    assert low < 47 / 65 < high and high - low < 0.25
    assert wilson(10, 10)[1] == 1.0


def _part(found_a: int, n_a: int) -> dict:
    import numpy as np
    mask = np.zeros((50, 50), np.uint8)
    mask[10:30, 10:30] = 1
    scores = [score_box(Box(10, 10, 20, 20) if k < found_a else Box(35, 35, 10, 10), mask) for k in range(n_a)]
    out = {"images": n_a}
    for method in ("localiser", "gradcam"):
        summaries = summary_by(scores, ["a"] * n_a)
        for r in summaries.values():
            r["found_ci95"] = dict(zip(("low", "high"), wilson(round(r["found"] * n_a), n_a)))
            r["ious"] = [s.iou for s in scores]
        out[method] = summaries
    return out


def test_report_says_whether_the_target_is_met(tmp_path):
    doc = {"export": "x/exp", "cam_threshold": 0.7, "classifier": "onnx-int8", "cpu": "cpu",
           "localiser": {"file": "localiser.onnx", "threshold": 0.4, "margin": 0.1, "source_run": "r"},
           "same_split_as_localiser": True, "parts": {"test": _part(7, 10), "val": _part(5, 10)},
           "timing": {"images": 10, "rounds": 3, "crop_median_size": [100, 120], "load": 1.0, "cpus": 2,
                      "by_threads": {"1": {"lesion_map_median_ms": 3.0, "lesion_map_p90_ms": 4.0,
                                           "session_median_ms": 2.0}}},
           "command": "python -m ...", "seconds": 1.0}
    text = study_markdown(doc)
    assert "a 70.0% (met)" in text and "held out" in text and "not a diagnosis" in text
    assert "1 thread(s): median 3.0 ms" in text and "120x100 px" in text
    doc["parts"]["test"] = _part(6, 10)
    assert "a 60.0% (not met)" in study_markdown(doc)
    study_plot(doc, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_export_without_localiser_is_a_clear_error(tmp_path):
    plain = [p for p in shipped_models() if not (p / "localiser.onnx").exists()]
    if not plain:
        if not shipped_models():
            pytest.skip("no shipped models")
        # every shipped model carries one now: a copy of the first without it
        copy = tmp_path / "plain"
        shutil.copytree(shipped_models()[0], copy, ignore=shutil.ignore_patterns("eval-*"))
        write_localiser(copy, None)
        (copy / "localiser.onnx").unlink()
        plain = [copy]
    with pytest.raises(ValueError, match="no localiser"):
        run_study(plain[0])
