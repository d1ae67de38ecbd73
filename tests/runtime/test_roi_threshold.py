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


class _FixedMap:
    """A localiser stand-in whose map marks one rectangle (the real one is tested in
    tests/runtime/test_localiser.py); here only where the box is cut from matters."""

    threshold, margin = 0.5, 0.0

    def __init__(self, box):
        self.box = box

    def lesion_map(self, image):
        out = np.zeros(image.shape[:2], np.float32)
        x, y, w, h = self.box
        out[y:y + h, x:x + w] = 1.0
        return out


def test_boxes_are_cut_from_the_scan_with_its_coloured_marks_erased(export):
    """Training erases coloured marks from the scan region, then cuts the lesion box from
    it: a given box and a proposed box must see the same pixels."""
    doc = json.loads((export / "manifest.json").read_text())
    doc["scan_region"]["colour_marks"] = "inpaint"
    (export / "manifest.json").write_text(json.dumps(doc))
    image = _scan(3)
    cv2.drawMarker(image, (160, 130), (0, 255, 255), cv2.MARKER_CROSS, 14, 1, cv2.LINE_AA)
    cv2.drawMarker(image, (220, 170), (0, 255, 255), cv2.MARKER_CROSS, 14, 1, cv2.LINE_AA)
    cv2.putText(image, "D1 1.2cm", (150, 200), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 230, 0), 1, cv2.LINE_AA)
    box = (140, 110, 100, 100)
    from runtime.overlay_marks import erase_colour_marks
    with Classifier.load(export) as clf:
        assert clf.region_finder.colour_marks == "inpaint"
        given = clf.predict(image, region="off", roi=box)
        clean = clf.predict(erase_colour_marks(image), region="off", roi=box)
        clf.localiser = _FixedMap(box)
        auto = clf.predict(image, region="off", roi="auto")
    assert given.ok and auto.ok and auto.roi_source == "proposed:localiser"
    assert (auto.roi.x, auto.roi.y, auto.roi.width, auto.roi.height) == box
    assert given.probability == pytest.approx(clean.probability, abs=1e-6)
    assert auto.probability == pytest.approx(given.probability, abs=1e-6)


def test_models_without_a_scan_region_record_keep_their_marks(export):
    doc = json.loads((export / "manifest.json").read_text())
    doc.pop("scan_region")
    (export / "manifest.json").write_text(json.dumps(doc))
    with Classifier.load(export) as clf:
        assert clf.region_finder.colour_marks == "keep"
