"""Which part of an image the model sees: THE region step, shared by prediction, the
demo, training, INT8 calibration data and evaluation (`apply_region`).

A region setting (`RegionSetting`) is one of:
- `auto`: the DICOM file's own tissue region when it has a usable one
  (runtime.dicom_regions), else the scan-region finder (runtime.scan_region);
- `off`: the whole image;
- a box `x,y,w,h` in the original image's pixels (x, y: the top-left corner; w, h: the
  size), which must lie inside the image.

The finder's own settings (`runtime.scan_region.RegionConfig`) travel in the export
manifest beside the preprocessing, so a model's runtime finds the region the way its
training data was cropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import cv2
import numpy as np

from runtime.colour_modes import colour_overlay
from runtime.dicom_regions import DicomRegionChoice, colour_flow_reason
from runtime.caliper_marks import MODES as CALIPER_MODES
from runtime.overlay_marks import MODES as MARK_MODES
from runtime.scan_region import RegionConfig, ScanRegion, find_scan_region, whole_image

REGION_MODES = ("auto", "off", "box")
_HELP = "a region is auto, off or a box X,Y,W,H in the image's pixels (e.g. 40,60,512,400)"


class RegionError(ValueError):
    """A region that cannot be used on an image (a given box outside it); the message is for the user."""


@dataclass(frozen=True)
class RegionSetting:
    """How the region of each image is chosen (see the module text)."""

    mode: str = "auto"                                   # auto | off | box
    box: tuple[int, int, int, int] | None = None         # with mode "box": x, y, width, height

    def __post_init__(self) -> None:
        if self.mode not in REGION_MODES:
            raise ValueError(f"unknown region mode {self.mode!r}: {_HELP}")
        if self.mode != "box":
            if self.box is not None:
                raise ValueError(f"region {self.mode!r} takes no box")
            return
        if self.box is None or len(self.box) != 4:
            raise ValueError(f"a region box needs four numbers X,Y,W,H, got {self.box!r}")
        x, y, w, h = (_whole(v, n) for v, n in zip(self.box, ("x", "y", "width", "height")))
        if x < 0 or y < 0:
            raise ValueError(f"the region box's corner {x},{y} is outside the image (x and y start at 0)")
        if w <= 0 or h <= 0:
            raise ValueError(f"the region box's size {w}x{h} must be positive")
        object.__setattr__(self, "box", (x, y, w, h))

    @classmethod
    def parse(cls, value: "str | Sequence[Any] | RegionSetting | None") -> "RegionSetting":
        """"auto", "off", "X,Y,W,H", or four numbers; None: auto."""
        if value is None:
            return cls()
        if isinstance(value, RegionSetting):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("auto", "off"):
                return cls(text)
            parts = [p.strip() for p in text.split(",")]
            if len(parts) != 4:
                raise ValueError(f"region {value!r}: {_HELP}")
            return cls("box", tuple(_number(p, value) for p in parts))
        if isinstance(value, (list, tuple)):
            return cls("box", tuple(value))
        raise ValueError(f"region {value!r}: {_HELP}")

    def __str__(self) -> str:
        return ",".join(map(str, self.box)) if self.mode == "box" else self.mode


@dataclass
class Cropped:
    """An image (and its lesion mask, if given) cut to the region used."""

    image: np.ndarray
    mask: np.ndarray | None
    region: ScanRegion


def colour_refusal(display: np.ndarray, region: ScanRegion, dicom: DicomRegionChoice | None = None) -> str | None:
    """Why an image is refused for its colour (a DICOM file's colour-flow region, or a
    colour Doppler / power Doppler / elastography overlay inside the scan region), else
    None: one rule for the runtime and training."""
    return colour_flow_reason(dicom) or colour_overlay(display, region)


def choose_region(image: np.ndarray, setting: RegionSetting = RegionSetting(),
                  finder: RegionConfig = RegionConfig(), dicom: DicomRegionChoice | None = None) -> ScanRegion:
    """The box to classify in `image` (HxWx3 uint8 BGR); RegionError for a given box that
    does not lie inside it."""
    if setting.mode == "off":
        return whole_image(image)
    if setting.mode == "box":
        return _given(image, setting.box)
    if dicom is not None and dicom.region is not None:
        return dicom.region
    # the caller asked for the finder, even if the manifest's finder settings say off
    config = finder if finder.mode != "off" else replace(finder, mode="auto")
    return _checked(find_scan_region(image, config), image)


def apply_region(image: np.ndarray, mask: np.ndarray | None = None, setting: RegionSetting = RegionSetting(),
                 finder: RegionConfig = RegionConfig(), dicom: DicomRegionChoice | None = None,
                 region: ScanRegion | None = None) -> Cropped:
    """Cut `image` (and `mask`, a lesion mask of the same picture) to the region.

    `region`: a box already chosen (e.g. on another frame of the same cine loop), used
    as is; else it is chosen here (choose_region). A mask of another size than the image
    is first resized to it (nearest neighbour), so it is cut at the same place."""
    region = region if region is not None else choose_region(image, setting, finder, dicom)
    if mask is not None and mask.shape[:2] != image.shape[:2]:
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    whole = region.x == 0 and region.y == 0 and (region.width, region.height) == (image.shape[1], image.shape[0])
    if whole:
        return Cropped(image, mask, region)
    return Cropped(np.ascontiguousarray(region.crop(image)),
                   None if mask is None else np.ascontiguousarray(region.crop(mask)), region)


def region_config_from_dict(d: Any, where: str = "scan_region") -> RegionConfig:
    """A RegionConfig from its to_dict() (a manifest's "scan_region"); ValueError for a
    field this version does not know or a wrong type, so a model is never run with
    settings its runtime cannot honour. The finder's `version` is recorded, not enforced:
    a version-1 export runs with today's finder (they differ on fans only; see
    RegionConfig.version)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    known = {f.name: f for f in fields(RegionConfig)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}: not written by this version of "
                         "`bcd export` (export again with a matching bcd, or update the runtime)")
    # recorded before the marks were erased
    defaults, values = RegionConfig(), {"colour_marks": "keep", "white_calipers": "keep"}
    for key, value in d.items():
        expected = type(getattr(defaults, key))
        if expected is tuple and isinstance(value, list):     # JSON has no tuples
            value = tuple(value)
        ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"{where}.{key}: expected {expected.__name__}, got {type(value).__name__}")
        values[key] = value
    config = RegionConfig(**values)
    if config.mode not in ("auto", "off"):
        raise ValueError(f"{where}.mode: {config.mode!r} is not auto or off")
    if config.colour_marks not in MARK_MODES:
        raise ValueError(f"{where}.colour_marks: {config.colour_marks!r} is not {' or '.join(MARK_MODES)}")
    if config.white_calipers not in CALIPER_MODES:
        raise ValueError(f"{where}.white_calipers: {config.white_calipers!r} is not {' or '.join(CALIPER_MODES)}")
    return config


def _given(image: np.ndarray, box: tuple[int, int, int, int]) -> ScanRegion:
    x, y, w, h = box
    height, width = image.shape[:2]
    if x + w > width or y + h > height:
        raise RegionError(f"the region box {x},{y},{w},{h} (x,y,width,height) does not fit the {width}x{height} "
                          f"image: it reaches x={x + w}, y={y + h}")
    return ScanRegion(x, y, w, h, source="given")


def _checked(region: ScanRegion, image: np.ndarray) -> ScanRegion:
    # the finder's answer is clipped to the image: a box outside it would crop nothing
    height, width = image.shape[:2]
    x, y = min(max(0, region.x), width - 1), min(max(0, region.y), height - 1)
    w, h = min(region.width, width - x), min(region.height, height - y)
    if w < 1 or h < 1:
        return whole_image(image)
    return region if (x, y, w, h) == (region.x, region.y, region.width, region.height) else replace(
        region, x=x, y=y, width=w, height=h)


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"the region box's {what} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"the region box's {what} must be a whole number of pixels, got {value!r}")
    return int(value)


def _number(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"region {whole!r}: {text!r} is not a number; {_HELP}") from None
