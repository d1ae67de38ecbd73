"""benchmarks.reliability.ood counts an image the runtime refuses before the model (input
checks, or the colour check that reads it as a colour overlay) as caught, instead of stopping."""
from __future__ import annotations

import numpy as np

from benchmarks.reliability.ood import _flags
from runtime.classifier import Classifier
from runtime.shipped import default_model_path


def test_a_colour_refusal_counts_as_caught_and_a_gray_scan_like_image_is_scored(monkeypatch):
    monkeypatch.delenv("BCD_MODEL", raising=False)
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)          # strongly coloured noise
    gray = np.repeat(rng.integers(0, 200, (200, 240, 1), dtype=np.uint8), 3, axis=2)
    with Classifier.load(default_model_path(), backend="onnxruntime") as clf:
        refused = [p for p in clf.predict_decoded([colour]) if not p.ok]
        assert refused and "overlay" in refused[0].error, "not refused by the colour check: the test no longer covers it"
        scores, flags = _flags(clf, [colour, gray])
    assert flags[0] and np.isnan(scores[0])
    assert np.isfinite(scores[1])
