"""Lesion boxes: geometry, the mask's box, a clinician's box and the box from a map."""
import numpy as np
import pytest

from runtime.lesion_box import (Box, box_from_map, clinician_box, clipped, intersection, iou, mask_box,
                                with_margin)


def test_box_rejects_empty_sizes():
    with pytest.raises(ValueError, match="positive width"):
        Box(0, 0, 0, 5)
    with pytest.raises(ValueError, match="positive width"):
        Box(0, 0, 5, -1)


def test_iou_and_intersection():
    a, b = Box(0, 0, 10, 10), Box(5, 5, 10, 10)
    assert intersection(a, b) == Box(5, 5, 5, 5)
    assert iou(a, b) == pytest.approx(25 / 175)
    assert iou(a, a) == 1.0
    assert iou(a, Box(20, 20, 3, 3)) == 0.0


def test_clipped_keeps_the_part_inside():
    assert clipped(Box(-5, -5, 10, 10), 100, 100) == Box(0, 0, 5, 5)
    assert clipped(Box(200, 0, 10, 10), 100, 100) is None


def test_mask_box_is_tight():
    mask = np.zeros((50, 60), np.uint8)
    mask[10:20, 30:45] = 1
    assert mask_box(mask) == Box(30, 10, 15, 10)
    assert mask_box(np.zeros((5, 5))) is None


def test_with_margin_grows_each_side_and_clips():
    assert with_margin(Box(10, 10, 20, 10), 0.5, 100, 100) == Box(0, 5, 40, 20)
    assert with_margin(Box(0, 0, 20, 10), 0.5, 100, 100) == Box(0, 0, 30, 15)


def test_clinician_box_holds_most_of_the_lesion_and_varies():
    rng = np.random.default_rng(0)
    lesion = Box(100, 80, 60, 40)
    boxes = [clinician_box(lesion, 400, 300, rng) for _ in range(200)]
    assert len(set(boxes)) > 150
    for b in boxes:
        shared = intersection(b, lesion)
        assert shared is not None and shared.area >= 0.7 * lesion.area   # margin 10-40 %, jitter 10 %
        assert b.x >= 0 and b.y >= 0 and b.right <= 400 and b.bottom <= 300
    assert np.mean([b.area for b in boxes]) > 1.3 * lesion.area


def test_box_from_map_takes_the_piece_with_the_peak():
    m = np.zeros((40, 40), np.float32)
    m[5:10, 5:10] = 0.6           # a weaker piece elsewhere
    m[20:30, 15:35] = 0.8
    m[25, 25] = 1.0
    assert box_from_map(m, 0.5, margin=0.0) == Box(15, 20, 20, 10)
    assert box_from_map(m, 0.5, margin=0.1) == Box(13, 19, 24, 12)
    assert box_from_map(m * 0.3, 0.5) is None
