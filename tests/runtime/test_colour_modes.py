"""Colour-overlay flags (runtime/colour_modes.py): overlays flagged, B-mode scans not."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.screens import Layout, add_overlay, draw_calipers, make_screen, synthetic_scan
from runtime.colour_modes import colour_overlay, measure_colour
from runtime.scan_region import ScanRegion, find_scan_region

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _scan(seed=0):
    return synthetic_scan(320, 280, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", ["colour Doppler", "power Doppler", "elastography"])
@pytest.mark.parametrize("size", [0.05, 0.2])
def test_overlays_are_flagged_with_their_name(kind, size):
    scan, _ = _scan()
    shown = add_overlay(scan, np.random.default_rng(1), kind, size)
    reason = colour_overlay(shown)
    assert reason == f"{kind} overlay: give the B-mode image"


def test_an_overlay_on_a_screen_is_found_in_the_scan_region():
    scan, _ = _scan(2)
    shown = add_overlay(scan, np.random.default_rng(2), "elastography", 0.1)
    screen = make_screen(shown, np.random.default_rng(3), Layout(colour_bar=True))
    assert colour_overlay(screen.image, find_scan_region(screen.image)) == "elastography overlay: give the B-mode image"


@pytest.mark.parametrize("seed", range(8))
def test_bmode_with_coloured_calipers_and_text_is_not_flagged(seed):
    scan, mask = _scan(seed)
    marked = draw_calipers(scan, np.random.default_rng(seed), mask)
    assert colour_overlay(marked) is None


def test_a_bmode_screen_with_colour_bar_logo_and_yellow_markers_is_not_flagged():
    scan, _ = _scan(4)
    layout = Layout(colour_bar=True, logo=True, body_marker=True, focus_marker=True, text_colour=(0, 255, 255))
    screen = make_screen(scan, np.random.default_rng(5), layout)
    assert colour_overlay(screen.image, find_scan_region(screen.image)) is None


def test_only_the_region_is_looked_at():
    scan, _ = _scan(6)
    shown = add_overlay(scan, np.random.default_rng(6), "colour Doppler", 0.1)
    colour = np.any(shown != scan, axis=2)
    ys, xs = np.nonzero(colour)
    elsewhere = ScanRegion(0, 0, int(xs.min()) - 2, scan.shape[0]) if xs.min() > 40 else \
        ScanRegion(int(xs.max()) + 2, 0, scan.shape[1] - int(xs.max()) - 2, scan.shape[0])
    assert colour_overlay(shown) is not None
    assert colour_overlay(shown, elsewhere) is None


def test_odd_inputs_are_not_flagged():
    for image in (np.zeros((4, 4, 3), np.uint8), np.zeros((100, 100), np.uint8), np.zeros((100, 100, 3), np.float32)):
        assert colour_overlay(image) is None


def test_real_bmode_scans_are_not_flagged():
    files = sorted((DATA / "busbra" / "Images").glob("bus_*.png"))[:15] + \
        [p for p in sorted((DATA / "busi" / "malignant").glob("*).png"))[:15]]
    if not files:
        pytest.skip("BUSI / BUS-BRA development data not present")
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert colour_overlay(image, find_scan_region(image)) is None, path


def test_busi_colour_doppler_images_are_flagged():
    """BUSI holds a few colour Doppler images (small red/blue flow blobs in a box):
    these are true overlays, listed by benchmarks.frames."""
    path = DATA / "busi" / "benign" / "benign (240).png"
    if not path.is_file():
        pytest.skip("BUSI development data not present")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert colour_overlay(image, find_scan_region(image)) == "colour Doppler overlay: give the B-mode image"


def test_a_long_thin_image_is_measured_not_a_crash():
    # found by fuzzing: a 9 px wide, 5000 px tall image was downscaled to 0 px
    thin = np.zeros((5000, 9, 3), np.uint8)
    thin[::2, :, 2] = 255                                   # red stripes: coloured, so it is measured
    assert measure_colour(thin).coloured_share > 0.3        # measured on the downscaled copy
