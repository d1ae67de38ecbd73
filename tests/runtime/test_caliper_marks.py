"""runtime.caliper_marks: white calipers are found by their shape and erased; bright
tissue (specks, streaks) is not touched."""
import cv2
import numpy as np
import pytest

from runtime.caliper_marks import CaliperConfig, caliper_centres, caliper_pixels, erase_calipers, _strokes
from runtime.images import read_image
from runtime.overlay_marks import apply_marks
from runtime.scan_crop import region_config_from_dict
from runtime.scan_region import RegionConfig, find_scan_region
from tests.conftest import BUSI, missing


def _tissue(seed=0, size=300):
    """Speckle-like gray texture, 30-140 gray levels (a B-mode scan's midtones)."""
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(30, 140, (size, size)).astype(np.uint8), (5, 5), 0)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def _measure(scan, a, b, marker):
    """A sonographer's measurement in white: calipers at a and b, a dotted line, a number."""
    out = scan.copy()
    for p in (a, b):
        cv2.drawMarker(out, p, (255, 255, 255), marker, 12, 1, cv2.LINE_AA)
    for t in np.linspace(0, 1, 14)[1:-1]:
        cv2.circle(out, (int(a[0] + t * (b[0] - a[0])), int(a[1] + t * (b[1] - a[1]))), 1, (255, 255, 255), -1)
    cv2.putText(out, "1", (b[0] + 7, b[1] + 9), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255), 1, cv2.LINE_AA)
    return out


@pytest.mark.parametrize("marker", [cv2.MARKER_CROSS, cv2.MARKER_TILTED_CROSS])
def test_a_white_measurement_is_found_and_filled_in_from_the_tissue(marker):
    scan = _tissue(1)
    a, b = (90, 120), (210, 160)
    marked = _measure(scan, a, b, marker)
    gray = cv2.cvtColor(marked, cv2.COLOR_BGR2GRAY)
    centres = caliper_centres(_strokes(gray, CaliperConfig())[0], 3)
    assert len(centres) == 2 and all(min(np.hypot(x - p[0], y - p[1]) for p in (a, b)) <= 1 for x, y in centres)
    erased = erase_calipers(marked)
    drawn = np.any(marked != scan, axis=2)
    error = lambda image: np.abs(image.astype(int) - scan.astype(int))[drawn].mean()  # noqa: E731
    assert error(erased) < error(marked) / 3          # the cross, the dots and the number mostly gone
    far = ~cv2.dilate(drawn.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert np.array_equal(erased[far], scan[far])     # nothing away from the marks changes


def test_bright_specks_and_streaks_of_tissue_are_left_exactly_as_they_are():
    scan = _tissue(2)
    rng = np.random.default_rng(2)
    for x, y in rng.integers(20, 280, (40, 2)):      # microcalcification-like specks
        cv2.circle(scan, (int(x), int(y)), 1, (250, 250, 250), -1)
    for y in (60, 150, 240):                         # thin bright horizontal echoes
        cv2.line(scan, (30, y), (270, y + 3), (235, 235, 235), 1, cv2.LINE_AA)
    assert not caliper_pixels(scan).any()
    assert erase_calipers(scan) is scan


def test_two_crosses_without_dots_between_them_keep_the_tissue_between():
    scan = _tissue(3)
    marked = scan.copy()
    for p in ((60, 60), (240, 240)):
        cv2.drawMarker(marked, p, (255, 255, 255), cv2.MARKER_CROSS, 12, 1)
    middle = (slice(120, 180), slice(120, 180))
    assert np.array_equal(erase_calipers(marked)[middle], scan[middle])


def test_modes_and_the_manifest_record():
    scan = _measure(_tissue(4), (80, 80), (200, 120), cv2.MARKER_CROSS)
    assert apply_marks(scan, "keep", "keep") is scan
    assert apply_marks(scan, "keep", "erase") is not scan
    with pytest.raises(ValueError, match="white_calipers"):
        apply_marks(scan, "keep", "blur")
    old = {k: v for k, v in RegionConfig().to_dict().items() if k != "white_calipers"}
    assert region_config_from_dict(old).white_calipers == "keep"          # models from before the step
    assert region_config_from_dict(RegionConfig(white_calipers="erase").to_dict()).white_calipers == "erase"
    with pytest.raises(ValueError, match="white_calipers"):
        region_config_from_dict({**old, "white_calipers": "blur"})


def test_real_busi_scans_with_and_without_calipers():
    if not BUSI.exists():
        missing("../shared/data/busi is not here")
    # BUSI 'benign (229)': a lesion measured twice with white '+' calipers (seen by eye)
    image = read_image(BUSI / "benign" / "benign (229).png")
    crop = find_scan_region(image).crop(image)
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    assert len(caliper_centres(_strokes(gray, CaliperConfig())[0], 3)) >= 3
    assert 0 < caliper_pixels(crop).mean() < 0.02      # the marks, not the scan
    for name in ("benign (1).png", "benign (2).png", "malignant (1).png"):     # no calipers on these
        folder = name.split()[0]
        image = read_image(BUSI / folder / name)
        crop = find_scan_region(image).crop(image)
        assert erase_calipers(crop) is crop


def test_noise_is_not_a_field_of_calipers():
    # uniform noise holds '+' shapes of bright pixels by chance; it is not a scan
    noise = cv2.cvtColor(np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8), cv2.COLOR_GRAY2BGR)
    assert not caliper_pixels(noise).any() and erase_calipers(noise) is noise
