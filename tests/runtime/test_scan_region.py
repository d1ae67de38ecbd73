"""The scan-region finder (runtime/scan_region.py) on generated scanner screens and real scans."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.screens import Layout, make_screen, plain_scan, random_layout, synthetic_scan
from runtime.scan_region import RegionConfig, ScanRegion, find_scan_region, whole_image

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _scan(seed: int = 0, height: int = 300, width: int = 260):
    return synthetic_scan(height, width, np.random.default_rng(seed))


def _edges(region: ScanRegion, box) -> list[int]:
    x, y, w, h = box
    return [region.x - x, region.y - y, region.x + region.width - x - w, region.y + region.height - y - h]


def test_a_tidy_crop_is_its_own_region():
    scan, _ = _scan()
    region = find_scan_region(scan)
    assert (region.x, region.y, region.width, region.height) == (0, 0, 260, 300)
    assert region.source == "found"


@pytest.mark.parametrize("seed", range(6))
def test_linear_screens_give_the_placed_box(seed):
    """Every decoration a screen has, drawn at random (text panels, ruler, bars, logo,
    body marker, frame line, JPEG, gray or black backgrounds, panes): the box found is
    where the scan was put, within a few pixels."""
    scan, _ = _scan(seed, 280 + 20 * seed, 240 + 15 * seed)
    rng = np.random.default_rng(100 + seed)
    screen = make_screen(scan, rng, random_layout(rng, probe="linear"))
    region = find_scan_region(screen.image)
    assert region.source == "found"
    assert max(map(abs, _edges(region, screen.box))) <= 4, (screen.layout, region, screen.box)


def test_black_screen_with_every_decoration_is_exact():
    scan, _ = _scan(3)
    layout = Layout(canvas=(856, 606), background=(0, 0, 0), panels=("left", "top", "right", "bottom"), ruler="right",
                    ruler_gap=2, gray_bar=True, colour_bar=True, logo=True, body_marker=True, frame_line=True)
    screen = make_screen(scan, np.random.default_rng(0), layout)
    assert max(map(abs, _edges(find_scan_region(screen.image), screen.box))) <= 2


def test_a_black_pane_inside_a_gray_screen_gives_the_scan():
    scan, _ = _scan(4)
    layout = Layout(canvas=(1024, 768), background=(40, 40, 40), pane=(0, 0, 0), panels=("left",), ruler="left")
    screen = make_screen(scan, np.random.default_rng(1), layout)
    assert max(map(abs, _edges(find_scan_region(screen.image), screen.box))) <= 3


@pytest.mark.parametrize("probe", ["curved", "sector"])
@pytest.mark.parametrize("seed", range(12))
def test_fans_give_the_box_found_on_the_fan_alone_shifted(probe, seed):
    """The consistency framed and plain predictions rest on: the box on the screen is
    the box on the scan alone (as the probe shows it), scaled and shifted, to 1.5 % of
    the scan's height, at whatever size the screen shows it. A sector's apex and a fan's
    tips used to be cut by the working copy's opening, by up to 3.4 % on these screens,
    and by another amount on the scan alone."""
    scan, _ = synthetic_scan(300 + 10 * seed, 260 + 10 * seed, np.random.default_rng(seed))
    layout = replace(random_layout(np.random.default_rng(50 + seed)), probe=probe, pane=None)
    screen = make_screen(scan, np.random.default_rng(60 + seed), layout)
    alone = find_scan_region(plain_scan(scan, layout))
    x, y, w, h = screen.box
    sx, sy = w / scan.shape[1], h / scan.shape[0]
    expected = (x + alone.x * sx, y + alone.y * sy, alone.width * sx, alone.height * sy)
    found = find_scan_region(screen.image)
    assert max(abs(e) for e in _edges(found, expected)) <= 0.015 * h, (layout, found, expected)


def test_the_lesion_stays_inside_the_box_on_screens():
    for seed in range(4):
        scan, mask = _scan(seed)
        rng = np.random.default_rng(seed)
        screen = make_screen(scan, rng, random_layout(rng))
        region = find_scan_region(screen.image)
        x, y, w, h = screen.box
        sx, sy = scan.shape[1] / w, scan.shape[0] / h
        x0, y0 = int((region.x - x) * sx), int((region.y - y) * sy)
        x1, y1 = int(np.ceil((region.x + region.width - x) * sx)), int(np.ceil((region.y + region.height - y) * sy))
        kept = mask[max(0, y0):y1, max(0, x0):x1].sum() / mask.sum()
        assert kept >= 0.99


def _real_pairs() -> list[tuple[Path, Path]]:
    pairs = []
    for cls in ("benign", "malignant"):
        for image in sorted((DATA / "busi" / cls).glob("*).png"))[:6]:
            pairs.append((image, image.with_name(image.stem + "_mask.png")))
    for image in sorted((DATA / "busbra" / "Images").glob("bus_*.png"))[:12]:
        pairs.append((image, DATA / "busbra" / "Masks" / f"mask_{image.stem[len('bus_'):]}.png"))
    return [(i, m) for i, m in pairs if m.is_file()]


def test_real_scans_keep_their_lesions():
    pairs = _real_pairs()
    if not pairs:
        pytest.skip("BUSI / BUS-BRA development data not present")
    for image_path, mask_path in pairs:
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) >= 128
        region = find_scan_region(image)
        kept = region.crop(mask).sum() / max(1, mask.sum())
        assert kept >= 0.99, (image_path, region)
        assert region.width * region.height >= 0.7 * image.shape[0] * image.shape[1]


def test_real_scan_on_a_screen_gives_its_plain_box_shifted():
    pairs = _real_pairs()
    if not pairs:
        pytest.skip("BUSI / BUS-BRA development data not present")
    image = cv2.imread(str(pairs[0][0]), cv2.IMREAD_COLOR)
    alone = find_scan_region(image)
    layout = Layout(canvas=(856, 606), scan_height=0.7, background=(0, 0, 0), panels=("left", "top"), ruler="right")
    screen = make_screen(image, np.random.default_rng(2), layout)
    x, y, w, h = screen.box
    sx, sy = w / image.shape[1], h / image.shape[0]
    expected = (x + alone.x * sx, y + alone.y * sy, alone.width * sx, alone.height * sy)
    assert max(abs(e) for e in _edges(find_scan_region(screen.image), expected)) <= 4


@pytest.mark.parametrize("image", [
    np.zeros((300, 400, 3), np.uint8),                      # blank
    np.full((300, 400, 3), 255, np.uint8),                  # white
    np.zeros((5, 5, 3), np.uint8),                          # tiny
    np.zeros((1, 900, 3), np.uint8),                        # a line
    np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8),   # noise
    np.random.default_rng(1).random((120, 80)).astype(np.float32),              # float, 2-D
    np.zeros((64, 64), np.uint8),                           # 2-D uint8
])
def test_never_fails_and_falls_back_to_the_whole_image(image):
    region = find_scan_region(image)
    assert (region.x, region.y) == (0, 0)
    assert (region.width, region.height) == (image.shape[1], image.shape[0])


def test_a_small_block_on_black_is_not_a_scan():
    image = np.zeros((600, 800, 3), np.uint8)
    image[10:40, 10:40] = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    assert find_scan_region(image).source == "whole"


def test_mode_off_and_the_region_record():
    scan, _ = _scan()
    screen = make_screen(scan, np.random.default_rng(0), Layout())
    assert find_scan_region(screen.image, RegionConfig(mode="off")) == whole_image(screen.image)
    region = find_scan_region(screen.image)
    assert region.crop(screen.image).shape[:2] == (region.height, region.width)
    d = region.to_dict()
    assert d["source"] == "found" and d["mm_per_pixel"] is None and set(d) >= {"x", "y", "width", "height"}
    assert RegionConfig().to_dict()["mode"] == "auto"
