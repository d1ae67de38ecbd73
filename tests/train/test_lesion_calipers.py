"""train.augment.lesion_calipers: realistic measurement marks on the lesion (issue 20)."""
from __future__ import annotations

import numpy as np

from benchmarks.screens import synthetic_scan
from train.augment import lesion_calipers


def test_calipers_are_drawn_on_the_lesion_edges_and_are_seeded():
    scan, mask = synthetic_scan(256, 256, np.random.default_rng(0))
    a = lesion_calipers(scan, mask, np.random.default_rng(3))
    assert np.array_equal(a, lesion_calipers(scan, mask, np.random.default_rng(3)))
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
