"""A lesion box is read at its own operating point (manifest threshold.roi), when the
export has one; whole scans keep the model's threshold."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from runtime.classifier import Classifier
from runtime.manifest import read_manifest, write_roi_threshold
from runtime.shipped import MODELS_DIR, SHIPPED_MODEL
from tests.conftest import missing

MODEL = MODELS_DIR / SHIPPED_MODEL


@pytest.fixture
def export(tmp_path):
    if not (MODEL / "manifest.json").is_file():
        missing(f"the shipped model {MODEL} is missing")
    target = tmp_path / "export"
    shutil.copytree(MODEL, target)
    return target


def _scan(seed=0):
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 90, (300, 360), dtype=np.uint8), (3, 3), 0)
    gray[120:180, 150:230] += 120
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def test_a_box_is_read_at_its_own_threshold(export):
    record = {"value": 0.61, "chosen_on": "validation split, lesion crops", "policy": "p", "n": 10, "malignant": 3}
    write_roi_threshold(export, record)
    assert read_manifest(export).roi_threshold_value == 0.61
    with Classifier.load(export) as clf:
        whole = clf.predict(_scan(), region="off")
        box = clf.predict(_scan(), region="off", roi=(140, 110, 100, 80))
        assert whole.ok and box.ok, (whole.error, box.error)
        assert whole.threshold == clf.threshold != 0.61
        assert box.threshold == 0.61
        assert box.label == ("malignant" if box.probability >= 0.61 else "benign")
    write_roi_threshold(export, None)
    assert read_manifest(export).roi_threshold_value is None
    assert "roi" not in json.loads((export / "manifest.json").read_text())["threshold"]


def test_a_bad_box_threshold_is_refused(export):
    doc = json.loads((export / "manifest.json").read_text())
    doc["threshold"]["roi"] = {"value": 1.5}
    (export / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="threshold.roi.value"):
        read_manifest(export)
