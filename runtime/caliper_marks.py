"""Find and erase white measurement calipers on a B-mode scan (issue 20).

Coloured marks are erased by colour (runtime.overlay_marks); white ones cannot be: a white
pixel may be a bright echo or a microcalcification, a sign of malignancy that must stay.
So this module keys on shape, not brightness. A sonographer's caliper is a '+' or an 'x'
of thin, bright, straight strokes a few pixels long, crossing at their middles, with
a dotted line between the two ends of one measurement and a small number beside it.
Tissue makes thin bright streaks (mostly horizontal, along the beam's lateral blur), but
not two perpendicular ones crossing at their middles.

How: the thin bright strokes are the pixels much brighter than a 5x5 opening of the
image (strokes up to 2 px thick) and bright in themselves. A caliper's centre is where a
'+' or an 'x' of such strokes with arms of `arm` px each way fits entirely (an erosion
with that shape). Around each centre the strokes within `reach` are erased (the cross,
its number); between two centres the strokes within 2 px of the straight line joining
them are erased when dots lie along most of it, and not along the lines 4 px beside it
(the measurement's dotted line, not bright speckle that covers every line alike). The
erased pixels, grown by 1 px for the anti-aliased rim, are filled from the tissue around
them (Telea inpainting, as for coloured marks).

Off by default (`scan_region.white_calipers: keep`): on the frames benchmark it missed a
third of the calipers it found on BUS-BRA's plain scans once the same scans were resampled
onto a screen, so a model trained with it changed more calls on screens, not fewer
(docs/scanner-images.md, "White calipers erased by their shape").

What it does not do: marks other than calipers (arrows, text away from a caliper, body
markers) stay; calipers on bright tissue (little contrast) or much smaller than `arm`
are missed; an 'x' at an angle other than 45 degrees is missed.
Numpy + OpenCV only.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from runtime.components import connected_components

MODES = ("erase", "keep")
SIDE_SHIFT = 4.0     # px beside a line between two calipers where its dots should not be
MAX_STROKE_SHARE = 0.15   # thin bright strokes cover 1-8 % of a development scan (max 7.7 %)
MAX_HIT_PIXELS = 400      # caliper-centre pixels: more is a texture of crosses, not marks


@dataclass(frozen=True)
class CaliperConfig:
    contrast: int = 50          # gray levels above the 5x5 opening: a thin stroke
    min_gray: int = 150         # and at least this bright (white or light gray marks)
    faint_contrast: int = 35    # the same for what is erased near a caliper and for dotted
    faint_gray: int = 100       # lines (dots, anti-aliased rims: dimmer than the cross's core)
    arm: float = 0.007          # share of the long side: a caliper arm's length each way (>= 3 px)
    reach: float = 3.0          # arms' lengths around a centre whose strokes belong to the caliper
    dotted_share: float = 0.35  # share of a line between two centres that strokes must cover


def _strokes(gray: np.ndarray, config: CaliperConfig) -> tuple[np.ndarray, np.ndarray]:
    """uint8 0/1 maps of thin (<= 2 px) bright strokes: strict (a caliper's core) and faint."""
    opened = cv2.morphologyEx(gray, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    tophat = cv2.subtract(gray, opened)
    strict = (tophat >= config.contrast) & (gray >= config.min_gray)
    faint = (tophat >= config.faint_contrast) & (gray >= config.faint_gray)
    return strict.astype(np.uint8), faint.astype(np.uint8)


def _cross_kernels(arm: int) -> list[np.ndarray]:
    side = 2 * arm + 1
    plus = np.zeros((side, side), np.uint8)
    plus[arm, :] = 1
    plus[:, arm] = 1
    tilted = np.eye(side, dtype=np.uint8) | np.fliplr(np.eye(side, dtype=np.uint8))
    return [plus, tilted]


def caliper_centres(strokes: np.ndarray, arm: int) -> list[tuple[int, int]]:
    """(x, y) of every '+' or 'x' of strokes with arms of `arm` px each way."""
    hits = np.zeros_like(strokes)
    for kernel in _cross_kernels(arm):
        hits |= cv2.erode(strokes, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    ys, xs = np.nonzero(hits)
    if len(xs) > MAX_HIT_PIXELS:        # crosses everywhere: a texture (noise), not marks
        return []
    # touching hit pixels are one centre (8-connected; see runtime.components for why not OpenCV's)
    touching = (np.abs(xs[:, None] - xs[None, :]) <= 1) & (np.abs(ys[:, None] - ys[None, :]) <= 1)
    labels = connected_components(len(xs), zip(*np.nonzero(np.triu(touching, k=1))))
    groups = [labels == g for g in range(labels.max(initial=-1) + 1)]
    return [(int(round(xs[g].mean())), int(round(ys[g].mean()))) for g in groups]


def _segment(a: tuple[int, int], b: tuple[int, int], skip: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Integer points one px apart along a-b without its ends' `skip` px, moved `shift` px
    sideways (perpendicular to it)."""
    length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
    t = np.linspace(skip / length, 1 - skip / length, max(2, int(length) - 2 * skip))
    nx, ny = -(b[1] - a[1]) / length, (b[0] - a[0]) / length
    return (np.round(a[0] + t * (b[0] - a[0]) + shift * nx).astype(int),
            np.round(a[1] + t * (b[1] - a[1]) + shift * ny).astype(int))


def _dotted_line(faint: np.ndarray, a: tuple[int, int], b: tuple[int, int], skip: int,
                 config: CaliperConfig) -> bool:
    """Whether strokes lie along most of a-b, and far more than along the lines beside it
    (bright speckle covers every line alike; a measurement's dots only its own)."""
    if np.hypot(b[0] - a[0], b[1] - a[1]) <= 2 * skip + 6:
        return False
    near = cv2.dilate(faint, np.ones((3, 3), np.uint8))
    height, width = faint.shape

    def share(shift: float) -> float:
        xs, ys = _segment(a, b, skip, shift)
        inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
        return float(near[ys[inside], xs[inside]].mean()) if inside.any() else 0.0

    on = share(0.0)
    beside = max(share(-SIDE_SHIFT), share(SIDE_SHIFT))
    return on >= config.dotted_share and on >= 2.0 * beside


def caliper_pixels(image_bgr: np.ndarray, config: CaliperConfig = CaliperConfig()) -> np.ndarray:
    """uint8 0/1: the pixels of the white calipers found (with a 1 px rim), else all 0."""
    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if image_bgr.ndim == 3 else image_bgr
    strokes, faint = _strokes(gray, config)
    erase = np.zeros_like(strokes)
    if strokes.mean() > MAX_STROKE_SHARE:    # not a B-mode scan's texture (noise, a pattern)
        return erase
    arm = max(3, int(round(config.arm * max(gray.shape))))
    centres = caliper_centres(strokes, arm)
    if not centres:
        return erase
    reach = int(round(config.reach * arm))
    height, width = gray.shape
    for x, y in centres:
        window = (slice(max(0, y - reach), min(height, y + reach + 1)), slice(max(0, x - reach), min(width, x + reach + 1)))
        erase[window] |= faint[window]
    for i, a in enumerate(centres):
        for b in centres[i + 1:]:
            if _dotted_line(faint, a, b, arm + 1, config):
                band = np.zeros_like(faint)
                cv2.line(band, a, b, 1, 5)
                erase |= band & faint
    return cv2.dilate(erase, np.ones((3, 3), np.uint8))


def erase_calipers(image_bgr: np.ndarray, config: CaliperConfig = CaliperConfig()) -> np.ndarray:
    """The image with its white calipers filled in from the tissue around them (the same
    array when none are found)."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        return image_bgr
    marks = caliper_pixels(image_bgr, config)
    if not marks.any():
        return image_bgr
    return cv2.inpaint(np.ascontiguousarray(image_bgr), marks, 3, cv2.INPAINT_TELEA)
