"""The lesion the clinician asks about (issue 21): a box inside the scan region, given by
the caller or proposed, that the model classifies instead of the whole scan region.

Two boxes are in play for every input, both in the ORIGINAL image's pixels:
- the scan region (runtime.scan_crop, `Prediction.region`): the B-mode pane of a scanner
  screen, found first as always (the colour refusal still looks at all of it);
- the ROI (`Prediction.roi`): the lesion's box. The model classifies ROI ∩ scan region.

An ROI is asked for per input as
- a box (x, y, width, height), a runtime.lesion_box.Box, or the text "x,y,w,h": given by
  the caller (`roi_source` "given"). A box reaching past the scan region (or the image) is
  clipped to it and the clipped box is recorded; a box with a negative corner, a size
  that is not positive, values that are not numbers, or no overlap with the scan region
  is an error for that input only.
- "auto": proposed from a lesion map over the scan region, by the classifier's
  localiser when it has one (`roi_source` "proposed:localiser"), else by the model's own
  Grad-CAM map (`roi_source` "proposed:gradcam"). When nothing in the map reaches the
  threshold, the whole scan region is classified: `roi` None, `roi_source`
  "none proposed:localiser" / "none proposed:gradcam".
- None: no ROI (the scan region is classified as before; `roi` and `roi_source` None).

Numpy + OpenCV only (runtime is the light core).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from runtime.lesion_box import Box, box_from_map, clipped, intersection

AUTO = "auto"
GIVEN = "given"
GRADCAM = "gradcam"
LOCALISER = "localiser"
# The Grad-CAM map (normalised 0..1 over the scan region) is cut at this level to propose
# a box: of 0.3 .. 0.7, 0.7 is best for the shipped model on its validation split. The box
# is the map's piece as it is (no margin): IoU >= 0.5 with the lesion mask's box on 41/75
# = 55 % of BUSI and 166/215 = 77 % of BUS-BRA validation lesions; with
# lesion_box.PROPOSED_MARGIN (10 % a side) only 37 % and 54 %, since the map's piece at
# 0.7 is already about the lesion's size (runtime/README.md, "Lesion box").
GRADCAM_THRESHOLD = 0.7
PROPOSAL_MARGIN = 0.0
# The smallest lesion box read (px a side, after clipping). A box is upsampled to the
# model's input, so it may be far smaller than a whole scan (input_checks' 64 px): a
# 5 mm lesion on a 500 px BUSI scan is ~40 px across. Smaller than this is a slip.
ROI_MIN_SIDE = 16

_EXPECTED = "expected x,y,w,h as integers (x, y: the top-left corner in the image's pixels; w, h: the size)"


def proposed_source(proposer: str) -> str:
    return f"proposed:{proposer}"


def none_proposed_source(proposer: str) -> str:
    return f"none proposed:{proposer}"


class Localiser(Protocol):
    """What a lesion localiser offers the classifier (set as `Classifier.localiser`)."""

    threshold: float      # lesion_map values at or above it are lesion

    def lesion_map(self, image_bgr: np.ndarray) -> np.ndarray:
        """(h, w) float32 0..1 at the size of `image_bgr` (HxWx3 uint8 BGR)."""
        ...


class RoiError(ValueError):
    """A box that cannot be used on one input; the message is for the user."""


@dataclass(frozen=True)
class RoiRequest:
    """What was asked for one input: a given `box`, `auto`, or `error` (why the value
    given is not a box; that input fails with it). `text` is the value as given, for
    messages."""

    box: Box | None = None
    auto: bool = False
    error: str | None = None
    text: str = ""


# ---------------------------------------------------------------------- parsing


def roi_request(value: Any) -> RoiRequest | None:
    """One input's ROI: None, "auto", a Box, "x,y,w,h" or a sequence of four numbers.
    Bad numbers give a RoiRequest with `error` (that input fails, the others go on); a
    value of another type is a TypeError."""
    if value is None or isinstance(value, RoiRequest):
        return value
    if isinstance(value, Box):
        return RoiRequest(box=value, text=_text(value))
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return RoiRequest(auto=True, text=AUTO)
        return _box_request([p.strip() for p in value.split(",")], value.strip())
    if isinstance(value, (list, tuple, np.ndarray)):
        values = list(np.asarray(value, dtype=object).reshape(-1)) if isinstance(value, np.ndarray) else list(value)
        return _box_request(values, ",".join(map(str, values)))
    raise TypeError(f"roi: expected None, 'auto', a Box or (x, y, w, h), got a {type(value).__name__}")


def roi_requests(roi: Any, count: int) -> list[RoiRequest | None]:
    """`roi` as passed to Classifier.predict, one request per input: one value for all
    inputs (None, "auto", a Box, "x,y,w,h", or four numbers), or a list with one such
    value per input. ValueError/TypeError for an argument that is neither (before any
    work); a bad box inside it only fails its input."""
    if not _is_per_input(roi):
        request = roi_request(roi)
        return [request] * count
    entries = list(roi)
    if len(entries) != count:
        raise ValueError(f"roi: a list of {len(entries)} boxes for {count} input(s); give one per input "
                         "(None for no box), or one box for all")
    return [roi_request(entry) for entry in entries]


def _is_per_input(roi: Any) -> bool:
    """A list of per-input values rather than one box: a sequence holding None, a Box,
    "auto", text with commas or a sequence (a box is four plain numbers)."""
    if isinstance(roi, np.ndarray):
        return roi.ndim == 2
    if not isinstance(roi, (list, tuple)):
        return False
    return any(entry is None or isinstance(entry, (Box, RoiRequest, list, tuple, np.ndarray))
               or (isinstance(entry, str) and (entry.strip().lower() == AUTO or "," in entry))
               for entry in roi)


def parse_roi_text(text: str) -> RoiRequest:
    """A command line's ROI: "auto" or "x,y,w,h" (numbers, corner not negative, size
    positive); ValueError otherwise, worded to follow the option's name ("--roi: ...")."""
    text = str(text).strip()
    if text.lower() == AUTO:
        return RoiRequest(auto=True, text=AUTO)
    box, reason = _box([p.strip() for p in text.split(",")])
    if box is None:
        raise ValueError(f"expected auto or x,y,w,h as integers, got {text!r}: {reason}")
    return RoiRequest(box=box, text=text)


def _box_request(values: Sequence[Any], text: str) -> RoiRequest:
    box, reason = _box(values)
    if box is None:
        return RoiRequest(error=f"roi {text!r}: {reason}; {_EXPECTED}", text=text)
    return RoiRequest(box=box, text=text)


def _box(values: Sequence[Any]) -> tuple[Box | None, str | None]:
    """(the box, None) or (None, why these values are not one)."""
    if len(values) != 4:
        return None, f"{len(values)} value(s), not 4"
    numbers = []
    for value, name in zip(values, ("x", "y", "w", "h")):
        number = _pixels(value)
        if number is None:
            return None, f"{name} = {value!r} is not a number"
        numbers.append(number)
    x, y, w, h = numbers
    if x < 0 or y < 0:
        return None, f"the corner {x},{y} is negative (x and y count from 0 at the top-left corner)"
    if w <= 0 or h <= 0:
        return None, f"the size {w}x{h} must be positive"
    return Box(x, y, w, h), None


def _pixels(value: Any) -> int | None:
    """A number of pixels (fractions rounded: a box drawn on a screen has them), or None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
        return None
    return int(round(float(value)))


def _text(box: Box) -> str:
    return f"{box.x},{box.y},{box.width},{box.height}"


# ---------------------------------------------------------------------- using a box


def fit_roi(box: Box, region, min_side: int, text: str = "") -> Box:
    """The given box clipped to the scan region `region` (a ScanRegion, in the same
    pixels); RoiError when nothing of it lies inside, or when what does is smaller than
    `min_side` on a side."""
    shown = text or _text(box)
    scan = Box(region.x, region.y, region.width, region.height)
    inside = intersection(box, scan)
    if inside is None:
        return _outside(box, scan, region, shown)
    if min(inside.width, inside.height) < min_side:
        cut = "" if inside == box else f" after clipping to the scan region ({inside.width}x{inside.height})"
        raise RoiError(f"roi {shown!r}: the box is {inside.width}x{inside.height} pixels{cut}; a box needs at least "
                       f"{min_side} pixels on each side (draw it with some margin around the lesion)")
    return inside


def _outside(box: Box, scan: Box, region, shown: str):
    where = (f"{scan.width}x{scan.height} image" if region.source == "whole"
             else f"scan region {_text(scan)} ({region.source})")
    raise RoiError(f"roi {shown!r} (x,y,w,h) lies entirely outside the {where}: it covers x {box.x}..{box.right - 1}, "
                   f"y {box.y}..{box.bottom - 1}")


def propose(lesion_map: np.ndarray, threshold: float, region, min_side: int,
            margin: float = PROPOSAL_MARGIN) -> Box | None:
    """The proposed box from a lesion map over the scan region `region` (the map has the
    region's size), in the original image's pixels: the piece of the map at or above
    `threshold` that holds its peak (lesion_box.box_from_map), grown by `margin`; None
    when nothing reaches the threshold. A box smaller than `min_side` is grown about its
    centre (inside the region) so it can be classified."""
    found = box_from_map(lesion_map, threshold=threshold, margin=margin)
    if found is None:
        return None
    return at_least(found, min_side, region.width, region.height).shifted(region.x, region.y)


def at_least(box: Box, side: int, width: int, height: int) -> Box:
    """`box` grown about its centre to at least side x side, kept inside width x height."""
    w, h = min(max(box.width, side), width), min(max(box.height, side), height)
    x = min(max(0, box.x - (w - box.width) // 2), width - w)
    y = min(max(0, box.y - (h - box.height) // 2), height - h)
    return clipped(Box(x, y, w, h), width, height) or box
