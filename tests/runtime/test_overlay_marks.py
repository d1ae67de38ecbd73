"""runtime.overlay_marks: coloured marks are erased from the scan, gray tissue is not."""
import cv2
import numpy as np
import pytest

from runtime.overlay_marks import MAX_SHARE, apply_colour_marks, colour_mark_pixels, erase_colour_marks
from runtime.scan_crop import region_config_from_dict
from runtime.scan_region import RegionConfig


def _tissue(seed=0, size=240):
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 255, (size, size)).astype(np.uint8), (5, 5), 0)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def test_gray_scans_are_left_exactly_as_they_are():
    scan = _tissue()
    assert erase_colour_marks(scan) is scan
    assert not colour_mark_pixels(scan).any()


def test_yellow_calipers_are_filled_in_from_the_tissue_around_them():
    scan = _tissue(1)
    marked = scan.copy()
    cv2.drawMarker(marked, (60, 70), (0, 255, 255), cv2.MARKER_CROSS, 12, 1, cv2.LINE_AA)
    cv2.putText(marked, "D1 1.2cm", (10, 150), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 230, 0), 1, cv2.LINE_AA)
    erased = erase_colour_marks(marked)
    chroma = lambda im: (im.astype(int).max(axis=2) - im.astype(int).min(axis=2))  # noqa: E731
    assert chroma(marked).max() > 200 and chroma(erased).max() < 10      # no colour left
    drawn = np.any(marked != scan, axis=2)
    assert np.abs(erased.astype(int) - scan.astype(int))[drawn].mean() < \
        np.abs(marked.astype(int) - scan.astype(int))[drawn].mean() / 2   # much closer to the tissue
    assert np.array_equal(erased[~cv2.dilate(drawn.astype(np.uint8), np.ones((9, 9))).astype(bool)],
                          scan[~cv2.dilate(drawn.astype(np.uint8), np.ones((9, 9))).astype(bool)])


def test_large_colour_areas_are_not_repainted():
    scan = _tissue(2)
    scan[20:110, 20:110] = (0, 0, 255)          # a Doppler-sized blob: refused elsewhere, not erased here
    assert 90 * 90 / scan[..., 0].size > MAX_SHARE
    assert erase_colour_marks(scan) is scan


def test_modes_and_the_manifest_record():
    scan = _tissue(3)
    scan[50, 50:60] = (255, 255, 0)
    assert apply_colour_marks(scan, "keep") is scan
    assert apply_colour_marks(scan, "inpaint") is not scan
    with pytest.raises(ValueError, match="colour_marks"):
        apply_colour_marks(scan, "blur")
    old = {k: v for k, v in RegionConfig().to_dict().items() if k != "colour_marks"}
    assert region_config_from_dict(old).colour_marks == "keep"             # models from before the step
    assert region_config_from_dict(RegionConfig().to_dict()).colour_marks == "inpaint"
    with pytest.raises(ValueError, match="colour_marks"):
        region_config_from_dict({**old, "colour_marks": "blur"})
