"""The synthetic scanner screens (benchmarks/screens.py) and the figures of benchmarks/frames.py."""
from __future__ import annotations

import io

import numpy as np
import pytest

from benchmarks.frames import _to_scan, _to_screen, compare, coverage, edge_error, lesion_in_fan
from benchmarks.screens import (Layout, add_overlay, draw_calipers, fan_mask, make_screen, plain_scan, random_layout,
                                screen_dicom, synthetic_scan)


def _scan(seed=0):
    return synthetic_scan(300, 260, np.random.default_rng(seed))


def test_a_seed_gives_the_same_screen_and_another_seed_another():
    scan, _ = _scan()
    a = make_screen(scan, np.random.default_rng(5))
    b = make_screen(scan, np.random.default_rng(5))
    c = make_screen(scan, np.random.default_rng(6))
    assert a.box == b.box and a.layout == b.layout and np.array_equal(a.image, b.image)
    assert a.layout != c.layout


def test_layouts_vary_what_screens_vary():
    layouts = [random_layout(np.random.default_rng(s)) for s in range(60)]
    assert len({l.canvas for l in layouts}) >= 8
    assert {l.probe for l in layouts} == {"linear", "curved", "sector"}
    assert {l.background == (0, 0, 0) for l in layouts} == {True, False}
    assert any(l.pane for l in layouts) and any(l.jpeg_quality for l in layouts)
    assert {s for l in layouts for s in l.panels} == {"left", "right", "top", "bottom"}


def test_the_box_holds_the_scan_pixels():
    scan, _ = _scan(1)
    layout = Layout(canvas=(800, 600), scan_height=0.5, jpeg_quality=None)   # 300 px -> 300 px: no resampling
    screen = make_screen(scan, np.random.default_rng(0), layout)
    assert screen.box[2:] == (260, 300)
    assert np.array_equal(screen.scan, scan)
    outside = screen.image.copy()
    x, y, w, h = screen.box
    outside[y:y + h, x:x + w] = 0
    assert outside.any()                                   # text, ruler, bars around it


def test_fans_fill_their_box_and_plain_scan_matches():
    mask = fan_mask(200, 180, "curved", 0.8)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (0, 0, 179, 199)
    assert 0.5 < mask.mean() / 255 < 0.95
    scan, _ = _scan(2)
    layout = Layout(probe="sector")
    fan = plain_scan(scan, layout)
    assert (fan[fan_mask(300, 260, "sector") == 0] == 0).all()
    assert plain_scan(scan, Layout(probe="linear")) is scan


def test_calipers_are_deterministic_and_sit_on_the_lesion():
    scan, mask = _scan(3)
    a = draw_calipers(scan, np.random.default_rng(1), mask)
    b = draw_calipers(scan, np.random.default_rng(1), mask)
    assert np.array_equal(a, b)
    changed = np.any(a != scan, axis=2)
    assert 0.001 < changed.mean() < 0.1                    # marks, not a new picture
    grown = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    grown[max(0, ys.min() - 8):ys.max() + 9, max(0, xs.min() - 8):xs.max() + 9] = True
    assert changed[grown].sum() > 0                       # calipers at the lesion's edges


def test_overlays_colour_a_box_of_the_asked_size():
    scan, _ = _scan(4)
    for kind in ("colour Doppler", "power Doppler", "elastography"):
        shown = add_overlay(scan, np.random.default_rng(2), kind, 0.1)
        changed = np.any(shown != scan, axis=2)
        assert 0.01 < changed.mean() < 0.2
    with pytest.raises(ValueError):
        add_overlay(scan, np.random.default_rng(0), "M-mode", 0.1)


def test_dicom_with_a_region_sequence():
    pydicom = pytest.importorskip("pydicom")
    scan, _ = _scan(5)
    layout = Layout(canvas=(640, 480), gray_bar=True)
    screen = make_screen(scan, np.random.default_rng(0), layout)
    data = screen_dicom(screen, mm_per_pixel=(0.12, 0.1))
    ds = pydicom.dcmread(io.BytesIO(data))
    regions = ds.SequenceOfUltrasoundRegions
    tissue = [r for r in regions if r.RegionDataType == 1]
    assert len(tissue) == 1 and len(regions) == 1 + len(screen.regions)
    t = tissue[0]
    x, y, w, h = screen.box
    assert (t.RegionLocationMinX0, t.RegionLocationMinY0, t.RegionLocationMaxX1, t.RegionLocationMaxY1) == \
        (x, y, x + w - 1, y + h - 1)
    assert t.PhysicalUnitsXDirection == 3 and t.PhysicalDeltaX == pytest.approx(0.012)
    from runtime.images import decode_image
    assert np.array_equal(decode_image(data), screen.image)         # BGR back, pixel for pixel
    cine = pydicom.dcmread(io.BytesIO(screen_dicom(screen, frames=3)))
    assert int(cine.NumberOfFrames) == 3


def test_box_arithmetic():
    mask = np.zeros((100, 80), bool)
    mask[40:60, 10:30] = True
    assert coverage(mask, (0, 0, 80, 100)) == 1.0
    assert coverage(mask, (20, 0, 60, 100)) == 0.5
    assert edge_error((10, 10, 50, 50), (12, 9, 50, 50)) == 2
    placed = (100, 50, 160, 200)                          # an 80x100 scan shown at 2x
    assert _to_scan((100, 50, 160, 200), placed, (100, 80)) == (0, 0, 80, 100)
    assert _to_screen((0, 0, 80, 100), placed, (100, 80)) == (100, 50, 160, 200)


def test_compare_counts_changed_calls_and_refusals():
    y = np.array([0, 0, 1, 1])
    plain = np.array([0.1, 0.8, 0.7, 0.9])
    other = np.array([0.1, 0.4, 0.7, np.nan])
    c = compare(y, plain, other, 0.5)
    assert c["n"] == 3 and c["refused"] == 1 and c["calls_changed_n"] == 1
    assert c["calls_changed"] == pytest.approx(1 / 3)
    assert c["auc_plain"] == pytest.approx(0.75) and c["auc_other"] == 1.0


def test_the_interval_resamples_whole_scans():
    from benchmarks.frames import share_ci
    # 100 scans, 4 screens each; 5 scans change every call, the others none: 5 % changed
    groups = np.tile(np.arange(100), 4)
    flags = np.isin(groups, [3, 20, 41, 77, 90])
    lo, hi = share_ci(flags, groups)
    assert lo < flags.mean() < hi
    # the same share spread over 20 scans (one screen each) varies less between scan draws
    spread = np.zeros(400, bool)
    spread[np.arange(0, 80, 4)] = True
    lo2, hi2 = share_ci(spread, groups)
    assert hi2 - lo2 < (hi - lo) * 0.75
    assert share_ci(flags, groups) == [lo, hi]                  # seeded: the same interval every run
    assert share_ci(np.zeros(0, bool), np.zeros(0, int)) is None
    c = compare(np.tile([0, 1], 200), np.full(400, 0.6), np.where(flags, 0.4, 0.6), 0.5, groups)
    assert c["calls_changed_ci"] == [lo, hi]


def test_lesion_in_fan_is_the_share_of_the_lesion_a_fan_keeps():
    mask = np.zeros((100, 140), bool)
    mask[60:80, 60:80] = True                              # deep in the middle: inside every fan
    corner = np.zeros((100, 140), bool)
    corner[0:10, 0:10] = True                              # a top corner: outside a sector
    sector, linear = Layout(probe="sector"), Layout(probe="linear")
    assert lesion_in_fan(mask, sector) == 1.0
    assert lesion_in_fan(corner, sector) == 0.0 and lesion_in_fan(corner, linear) == 1.0
    half = mask | corner                                   # 400 px inside, 100 outside
    assert lesion_in_fan(half, sector) == pytest.approx(0.8)
    assert lesion_in_fan(None, sector) == 1.0


def test_by_probe_separates_the_frames_effect_from_the_fans():
    from benchmarks.frames import _by_probe
    # two scans, two screens each (records scan by scan): screen 0 linear, screen 1 sector
    screens = [{"probe": "linear"}, {"probe": "sector"}, {"probe": "linear"}, {"probe": "sector"}]
    probs = {"plain": np.array([0.6, 0.4]),
             "reference0": np.array([0.6, 0.4]), "framed0": np.array([0.6, 0.4]),     # linear: nothing changes
             "reference1": np.array([0.4, 0.6]), "framed1": np.array([0.4, 0.6])}     # the fan flips both calls
    run = {"labels": np.array([1, 0]), "screens": screens, "probs": probs}
    out = _by_probe(run, np.ones(2, bool), 0.5, 2)
    assert out["linear"]["calls_changed"] == 0.0 and out["linear"]["calls_changed_vs_probe_plain"] == 0.0
    # against the rectangle every sector call changed; against the fan on black (the frame's own effect) none
    assert out["sector"]["calls_changed"] == 1.0 and out["sector"]["calls_changed_vs_probe_plain"] == 0.0
    assert out["sector"]["screens"] == 2


@pytest.mark.slow
def test_the_benchmark_runs_on_a_few_test_scans_of_the_shipped_model(tmp_path):
    """The whole benchmark (screens, calls, boxes, overlays, timing, files) on 4 test scans."""
    import json
    from pathlib import Path
    from benchmarks.frames import DEFAULT_MODEL, FramesConfig, run
    from tests.conftest import missing
    data = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not data.is_dir():
        missing("the shipped model's development data not present")
    doc = run(FramesConfig(model=DEFAULT_MODEL, split_root=data, out=tmp_path, layouts=2, limit=4,
                           dev_scans=False, examples=1), command="test")
    figures = doc["accuracy"]["all"]
    assert figures["calipers on plain scans"]["n"] == 8          # a caliper draw per screen
    assert figures["framed, finder on"]["n"] + figures["framed, finder on"]["refused"] == 8
    assert {"calls_changed", "calls_changed_vs_probe_plain"} <= set(next(iter(figures["by_probe"].values())))
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["test_scans"] == 4 and "vs the probe's plain scan" in (tmp_path / "results.md").read_text()
