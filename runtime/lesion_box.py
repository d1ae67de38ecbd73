"""Lesion boxes (issue 21): the box a clinician draws, the box a lesion mask gives, and
the box proposed from a lesion map.

One box type and one set of rules serve the runtime (a box from the user, a proposed
box), training (lesion-centred crops drawn like a clinician's box) and the head-to-head
study, so a box means the same thing everywhere. Boxes are (x, y, width, height) in the
pixels of the picture they are given for; `inside` moves a box between a picture and a
crop of it.

Numpy + OpenCV only (runtime is the light core).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# A clinician's box is not the mask's tight box: they leave a margin around the lesion
# and place the corners by eye. Training crops and the study's "clinician" boxes draw a
# margin of 10-40 % of the box's side on each side and move each edge by up to 10 %.
CLINICIAN_MARGIN = (0.10, 0.40)
CLINICIAN_JITTER = 0.10
# A proposed box gets the smallest of those margins: the model read lesions with context.
PROPOSED_MARGIN = 0.10


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: columns x .. x+width-1, rows y .. y+height-1."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"a box needs a positive width and height, got {self.width}x{self.height}")

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    @property
    def area(self) -> int:
        return self.width * self.height

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y:self.bottom, self.x:self.right]

    def shifted(self, dx: int, dy: int) -> "Box":
        return Box(self.x + dx, self.y + dy, self.width, self.height)

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


def clipped(box: Box, width: int, height: int) -> Box | None:
    """The part of `box` inside a width x height picture (None: no overlap)."""
    x0, y0 = max(box.x, 0), max(box.y, 0)
    x1, y1 = min(box.right, width), min(box.bottom, height)
    return Box(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def intersection(a: Box, b: Box) -> Box | None:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.right, b.right), min(a.bottom, b.bottom)
    return Box(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    both = intersection(a, b)
    shared = both.area if both is not None else 0
    return shared / float(a.area + b.area - shared)


def mask_box(mask: np.ndarray) -> Box | None:
    """The tight box of a lesion mask's nonzero pixels (None: an empty mask)."""
    ys, xs = np.nonzero(np.asarray(mask))
    if xs.size == 0:
        return None
    return Box(int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


def with_margin(box: Box, share: float, width: int, height: int) -> Box:
    """`box` grown by `share` of its own width/height on each side, clipped to the picture."""
    mx, my = round(box.width * share), round(box.height * share)
    grown = Box(box.x - mx, box.y - my, box.width + 2 * mx, box.height + 2 * my)
    return clipped(grown, width, height) or box


def clinician_box(box: Box, width: int, height: int, rng: np.random.Generator,
                  margin: tuple[float, float] = CLINICIAN_MARGIN, jitter: float = CLINICIAN_JITTER) -> Box:
    """A box as a clinician might draw around the lesion whose tight box is `box`: each side
    moved out by a margin drawn from `margin` (share of the box's side), then each edge
    moved by up to `jitter` of the side either way; clipped to the picture, and never
    smaller than a third of the lesion's box."""
    w, h = box.width, box.height
    left, right = (rng.uniform(*margin, size=2) + rng.uniform(-jitter, jitter, size=2)) * w
    top, bottom = (rng.uniform(*margin, size=2) + rng.uniform(-jitter, jitter, size=2)) * h
    x0, x1 = box.x - left, box.right + right
    y0, y1 = box.y - top, box.bottom + bottom
    drawn = Box(int(round(x0)), int(round(y0)), max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0))))
    kept = clipped(drawn, width, height)
    if kept is None or kept.width < w / 3 or kept.height < h / 3:
        return clipped(box, width, height) or box
    return kept


def box_from_map(lesion_map: np.ndarray, threshold: float = 0.5, margin: float = PROPOSED_MARGIN) -> Box | None:
    """The proposed lesion box from a lesion map (h, w floats 0..1 over the picture: a
    localiser's probabilities or a normalised Grad-CAM map): the connected piece above
    `threshold` that holds the map's peak, its box grown by `margin`. None when nothing
    reaches the threshold."""
    values = np.nan_to_num(np.asarray(lesion_map, dtype=np.float32))
    if values.ndim != 2 or values.size == 0 or float(values.max()) < threshold:
        return None
    above = (values >= threshold).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    peak = np.unravel_index(int(np.argmax(values)), values.shape)
    x, y, w, h = (int(v) for v in stats[labels[peak], :4])
    return with_margin(Box(x, y, w, h), margin, values.shape[1], values.shape[0])
