"""train.augment.lesion_calipers: realistic measurement marks on the lesion (issue 20)."""
from __future__ import annotations

import numpy as np

from benchmarks.screens import synthetic_scan
from train.augment import lesion_calipers


def test_calipers_are_drawn_on_the_lesion_edges_and_are_seeded():
    scan, mask = synthetic_scan(256, 256, np.random.default_rng(0))
    a = lesion_calipers(scan, mask, np.random.default_rng(3), extras=False)
    assert np.array_equal(a, lesion_calipers(scan, mask, np.random.default_rng(3), extras=False))
    changed = np.any(a != scan, axis=2)
    assert 0.0005 < changed.mean() < 0.05
    ys, xs = np.nonzero(mask)
    near = np.zeros_like(mask)
    near[max(0, ys.min() - 12):ys.max() + 13, max(0, xs.min() - 12):xs.max() + 13] = True
    assert changed[near].sum() >= 0.8 * changed.sum()       # the marks sit on the lesion
    assert a.dtype == np.uint8 and a.shape == scan.shape


def test_without_a_mask_the_marks_go_anywhere():
    scan, _ = synthetic_scan(200, 240, np.random.default_rng(1))
    out = lesion_calipers(scan, None, np.random.default_rng(0))
    assert np.any(out != scan)


def test_marks_are_drawn_large_and_shrunk_so_they_arrive_thin_and_soft():
    """Drawn 1-5x larger and brought down with area averaging, as a screen's marks reach
    the model: most draws leave partly transparent pixels, not only solid ink."""
    scan = np.full((96, 96, 3), 40, np.uint8)
    soft = 0
    for seed in range(20):
        out = lesion_calipers(scan, None, np.random.default_rng(seed)).astype(int)
        changed = np.abs(out - 40).max(axis=2)
        assert changed.any()
        soft += (changed[changed > 0] < 150).mean() > 0.3      # mostly blended, not solid
    assert soft >= 8


def test_extras_sometimes_put_marks_away_from_the_lesion():
    scan, mask = synthetic_scan(256, 256, np.random.default_rng(0))
    ys, xs = np.nonzero(mask)
    near = np.zeros(mask.shape, bool)
    near[max(0, ys.min() - 12):ys.max() + 13, max(0, xs.min() - 12):xs.max() + 13] = True
    away = []
    for seed in range(40):
        changed = np.any(lesion_calipers(scan, mask, np.random.default_rng(seed)) != scan, axis=2)
        away.append(changed[~near].sum() > 0.5 * changed.sum())
    assert 0.1 <= np.mean(away) <= 0.8       # text, arrows and off-lesion calipers, but not always
