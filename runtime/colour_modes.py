"""Flag scans that carry a colour Doppler, power Doppler or elastography overlay (issue 20).

The model reads B-mode (gray) ultrasound. A colour Doppler box, a power Doppler map or an
elastography box paints colour over part of the scan; classified as if it were B-mode,
the answer means nothing. `colour_overlay(image, region)` says so in words a user can act
on ("colour Doppler overlay: give the B-mode image"), or returns None for a B-mode scan.

How (numpy + OpenCV, on a copy whose long side is at most `work_side`):
1. Coloured pixels: max(B,G,R) - min(B,G,R) >= `chroma` (the measure of
   runtime.input_checks), inside the scan region when one is given.
2. Marks are thin, overlays are not: an opening with a square of `blob` (a share of the
   region's long side) removes coloured text, caliper crosses, dotted lines and arrows,
   which B-mode scans often carry; flow blobs, power maps and elastography boxes stay.
3. An overlay is there when what is left covers at least `min_share` of the region.
   Which one, from the hues left (OpenCV hue 0..180): many greens as well as reds and
   blues: elastography (a rainbow map); mostly orange/yellow with little blue: power
   Doppler; otherwise (reds and blues): colour Doppler.

Measured by benchmarks/frames.py: false alarms on every development scan (2123 B-mode
scans of BUSI and BUS-BRA, also with coloured calipers drawn on them) and detection of
synthetic overlays of several sizes. Where it fails: a Doppler box with only a few thin
vessels (less than `min_share` of the scan after the opening) is not flagged; a B-mode
scan shown with a colour tint (a "chroma map") is flagged as an overlay; a colour
overlay outside the given region is not looked at.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

KINDS = ("colour Doppler", "power Doppler", "elastography")
OVERLAY_REASON = "overlay: give the B-mode image"     # how every refusal of this module ends


@dataclass(frozen=True)
class ColourConfig:
    chroma: int = 40             # max - min of B, G, R for a pixel to count as coloured
    work_side: int = 512         # long side of the working copy (integer downscale of larger images)
    blob: float = 0.012          # opening square, share of the region's long side (at least 3 px)
    min_flow: float = 0.0015     # blobs in flow hues (red, orange, blue, magenta): share of the region
    min_map: float = 0.02        # blobs of a rainbow map (elastography): share of the region
    map_green: float = 0.05      # ... with at least this share of each of green, warm and cold hues

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ColourStats:
    """What the decision is made from (benchmarks report it)."""

    coloured_share: float        # share of the region's pixels that are coloured (before the opening)
    blob_share: float            # share covered by coloured blobs (after the opening)
    hues: dict[str, float]       # share of the region covered by blobs of each hue family
    kind: str | None             # one of KINDS, or None for B-mode


def colour_overlay(image_bgr: np.ndarray, region=None, config: ColourConfig = ColourConfig()) -> str | None:
    """A reason when the scan region of an HxWx3 uint8 BGR image holds a colour Doppler,
    power Doppler or elastography overlay, else None. `region`: a
    runtime.scan_region.ScanRegion (or anything with x, y, width, height); None: the
    whole image."""
    kind = measure_colour(image_bgr, region, config).kind
    return None if kind is None else f"{kind} {OVERLAY_REASON}"


def measure_colour(image_bgr: np.ndarray, region=None, config: ColourConfig = ColourConfig()) -> ColourStats:
    part = _crop(image_bgr, region)
    if part is None or part.ndim != 3 or part.shape[2] != 3 or part.dtype != np.uint8 or min(part.shape[:2]) < 8:
        return ColourStats(0.0, 0.0, {}, None)
    factor = max(1, -(-max(part.shape[:2]) // config.work_side))
    if factor > 1:
        # at least 1 px each way: a very long, thin image (found by fuzzing) would give 0
        part = cv2.resize(part, (max(1, part.shape[1] // factor), max(1, part.shape[0] // factor)),
                          interpolation=cv2.INTER_AREA)
    _, spread = channel_range(part)
    coloured = cv2.threshold(spread, config.chroma - 1, 255, cv2.THRESH_BINARY)[1]
    area = float(coloured.size)
    coloured_share = cv2.countNonZero(coloured) / area
    if coloured_share < min(config.min_flow, config.min_map):     # too little colour for any overlay
        return ColourStats(coloured_share, 0.0, {}, None)
    k = max(3, int(round(config.blob * max(part.shape[:2]))))
    blobs = cv2.morphologyEx(coloured, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    blob_share = cv2.countNonZero(blobs) / area
    hues = _hue_families(part, blobs, area)
    return ColourStats(coloured_share, blob_share, hues, _kind(hues, blob_share, config))


def channel_range(image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of an HxWx3 uint8 image: the largest of B, G, R (its brightness) and the
    largest minus the smallest (its colour: 0 for any gray), both uint8."""
    b, g, r = cv2.split(image_bgr)
    high = cv2.max(cv2.max(b, g), r)
    return high, cv2.subtract(high, cv2.min(cv2.min(b, g), r))


def _crop(image: np.ndarray, region) -> np.ndarray | None:
    if not isinstance(image, np.ndarray):
        return None
    if region is None:
        return image
    x, y, w, h = (int(v) for v in (region.x, region.y, region.width, region.height))
    x0, y0 = max(0, x), max(0, y)
    return image[y0:max(y0, y + h), x0:max(x0, x + w)]


# OpenCV hue is 0..180: red wraps around 0. Scanners draw marks and text in yellow, green,
# cyan or white; flow maps are red, orange and blue, power maps red to orange (to yellow
# at their brightest), elastography maps the whole rainbow.
_FAMILIES = {"red": ((0, 8), (165, 181)), "orange": ((8, 22),), "yellow": ((22, 35),), "green": ((35, 85),),
             "cyan": ((85, 97),), "blue": ((97, 135),), "magenta": ((135, 165),)}
_FLOW = ("red", "orange", "blue", "magenta")


def _hue_families(part: np.ndarray, blobs: np.ndarray, area: float) -> dict[str, float]:
    """Share of the region covered by blob pixels of each hue family."""
    hue = cv2.cvtColor(part, cv2.COLOR_BGR2HSV)[..., 0][blobs > 0]
    counts = np.bincount(hue, minlength=181).astype(np.float64)
    return {name: float(sum(counts[a:b].sum() for a, b in spans)) / area for name, spans in _FAMILIES.items()}


def _kind(hues: dict[str, float], blob_share: float, config: ColourConfig) -> str | None:
    warm, cold = hues["red"] + hues["orange"] + hues["yellow"], hues["blue"] + hues["cyan"]
    if (blob_share >= config.min_map and hues["green"] >= config.map_green * blob_share
            and warm >= config.map_green * blob_share and cold >= config.map_green * blob_share):
        return "elastography"
    flow = sum(hues[name] for name in _FLOW)
    if flow < config.min_flow:
        return None
    if hues["blue"] < 0.1 * flow and hues["orange"] >= 0.4 * flow:
        return "power Doppler"
    return "colour Doppler"
