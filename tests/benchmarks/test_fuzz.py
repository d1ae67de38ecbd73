"""The short CI form of the fuzz run (benchmarks/reliability/fuzz.py): a few hundred generated
files -- damaged real-format files, random bytes, extreme shapes, headers claiming huge
sizes -- through predict_paths with the real tiny export. Each must end as one
prediction or one clear error row, within the per-input time bound; no crash. The full
run (10,000 inputs, the shipped model) is `python -m benchmarks.reliability.fuzz --inputs 10000`;
its figures are in docs/RELIABILITY.md."""
from __future__ import annotations

import pytest

from tests.conftest import needs_module

needs_module("hypothesis")

from benchmarks.reliability import fuzz  # noqa: E402
from runtime.classifier import Classifier  # noqa: E402


@pytest.mark.slow   # fuzz run
def test_short_fuzz_run_has_no_crash(tiny_export, tmp_path):
    clf = Classifier.load(tiny_export, variant="onnx-fp32", threads=1)
    report = fuzz.run(clf, 300, tmp_path, timeout=60.0, seed=1)
    assert report.inputs == 300
    assert report.crashes == []
    assert report.predictions + sum(report.errors.values()) == 300       # one row per input
    # the generator reaches all outcomes: predictions, refusals, decode errors, bombs
    assert report.predictions > 0
    for kind in ("not a readable image", "too many pixels", "refused: too small"):
        assert report.errors[kind] > 0, dict(report.errors)
    assert not any(k.startswith("other") for k in report.errors), dict(report.errors)
    # growth over the run: the test process may already hold TensorFlow from other tests
    assert report.peak_rss_mb - report.start_rss_mb < 1000


def test_error_kinds_are_recognised():
    assert fuzz.error_kind("x.png: cannot read (KeyError: 'a')") == "crash: unexpected exception"
    assert fuzz.error_kind("x.png: image is 9x9 = 81 pixels, over the limit of 2") == "too many pixels"
    assert fuzz.error_kind("x.png: refused, not a usable ultrasound scan: the image is only 2x2 pixels; a scan "
                           "is at least 64 pixels on its short side") == "refused: too small"
    assert fuzz.error_kind("x.png: something new") == "other: something new"
