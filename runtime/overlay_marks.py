"""Erase coloured marks from a B-mode scan before the model reads it (issue 20).

Sonographers measure lesions on the scanner: calipers ('+', 'x'), dotted lines, numbers
and arrows, often in yellow, green or cyan, burned into the exported image. A B-mode
scan itself is gray, so a coloured pixel inside the scan region is an overlay, never
tissue. `erase_colour_marks` fills those pixels (and a 1 px rim, where anti-aliasing
blends the mark into the tissue) from the tissue around them (OpenCV's Telea inpainting,
radius 3 px), so the model does not read a measurement as a feature of the lesion.

Measured (benchmarks/frames.py, calipers drawn on the test split's plain scans): with
only the model's training against marks, calipers changed 3.4 % (BUSI) and 5.1 %
(BUS-BRA) of its calls; a third of those marks are white, which no colour rule can find.

What it does not do: white or gray marks stay (they cannot be told from bright echoes,
and erasing bright specks would erase microcalcifications, a sign of malignancy; white
calipers can be found by their shape instead, runtime.caliper_marks, off by default); a
coloured area larger than `MAX_SHARE` of the scan is left alone (that is a colour
Doppler or elastography overlay, refused by runtime.colour_modes, or not a scan).

One step for training (train.data.read_sample), INT8 calibration, evaluation,
prediction and the demo, after the scan-region crop and the colour and input checks;
the manifest's `scan_region.colour_marks` says whether a model was trained with it
("inpaint") or not ("keep": models from before it). Numpy + OpenCV only.
"""
from __future__ import annotations

import cv2
import numpy as np

from runtime.caliper_marks import MODES as CALIPER_MODES
from runtime.caliper_marks import erase_calipers
from runtime.colour_modes import channel_range

CHROMA = 40          # max - min of B, G, R: a coloured pixel (runtime.colour_modes' measure)
MIN_VALUE = 50       # darker coloured pixels are JPEG chroma noise in shadows, not marks
MAX_SHARE = 0.10     # more colour than this is an overlay or a photo, not marks (a lesion box's
                     # calipers can cover a few % of a small box)
RADIUS = 3           # px around each erased pixel that the inpainting reads
MODES = ("inpaint", "keep")


def colour_mark_pixels(image_bgr: np.ndarray) -> np.ndarray:
    """uint8 0/1: the coloured pixels of a BGR image, with a 1 px rim around them."""
    value, chroma = channel_range(image_bgr)
    marks = ((chroma >= CHROMA) & (value >= MIN_VALUE)).astype(np.uint8)
    return cv2.dilate(marks, np.ones((3, 3), np.uint8)) if marks.any() else marks


def erase_colour_marks(image_bgr: np.ndarray) -> np.ndarray:
    """The image with its coloured marks filled in from the tissue around them (the same
    array when there are none, or when colour covers more than MAX_SHARE of it)."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        return image_bgr
    marks = colour_mark_pixels(image_bgr)
    share = float(marks.mean()) if marks.size else 0.0
    if share == 0.0 or share > MAX_SHARE:
        return image_bgr
    return cv2.inpaint(np.ascontiguousarray(image_bgr), marks, RADIUS, cv2.INPAINT_TELEA)


def apply_colour_marks(image_bgr: np.ndarray, mode: str) -> np.ndarray:
    """`mode` as a manifest's scan_region.colour_marks records it."""
    if mode not in MODES:
        raise ValueError(f"colour_marks must be one of {', '.join(MODES)}, got {mode!r}")
    return erase_colour_marks(image_bgr) if mode == "inpaint" else image_bgr


def apply_marks(image_bgr: np.ndarray, colour_mode: str, caliper_mode: str) -> np.ndarray:
    """Both mark steps as a manifest's scan_region records them (colour_marks,
    white_calipers): coloured marks first, then white calipers (runtime.caliper_marks)."""
    if caliper_mode not in CALIPER_MODES:
        raise ValueError(f"white_calipers must be one of {', '.join(CALIPER_MODES)}, got {caliper_mode!r}")
    image_bgr = apply_colour_marks(image_bgr, colour_mode)
    return erase_calipers(image_bgr) if caliper_mode == "erase" else image_bgr
