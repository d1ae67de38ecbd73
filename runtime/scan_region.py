"""Where the ultrasound image is inside what a scanner exports (issue 20).

A clinic's file is often the whole scanner screen: black margins, patient and probe text,
a depth ruler, a logo, a colour bar around the B-mode image. The model was trained on the
B-mode image alone, so the runtime classifies the region found here, and every prediction
says which box it used. One definition serves training, INT8 calibration data, evaluation,
prediction and the demo; the manifest records the finder's settings so that a model and
its runtime agree.

Interface skeleton: `find_scan_region` returns the whole image until the finder lands.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

REGION_SOURCES = ("found", "dicom", "given", "whole")


@dataclass(frozen=True)
class ScanRegion:
    """A box in the original image's pixels; `source` says where it came from."""

    x: int
    y: int
    width: int
    height: int
    source: str = "found"                                   # one of REGION_SOURCES
    mm_per_pixel: tuple[float, float] | None = None         # (x, y), where the file states it (DICOM)

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y:self.y + self.height, self.x:self.x + self.width]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mm_per_pixel"] = list(self.mm_per_pixel) if self.mm_per_pixel is not None else None
        return d


@dataclass(frozen=True)
class RegionConfig:
    """The finder's settings (recorded in manifest.json beside the preprocessing)."""

    mode: str = "auto"          # auto: find the scan; off: the whole image
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def whole_image(image: np.ndarray) -> ScanRegion:
    return ScanRegion(0, 0, int(image.shape[1]), int(image.shape[0]), source="whole")


def find_scan_region(image_bgr: np.ndarray, config: RegionConfig = RegionConfig()) -> ScanRegion:
    """The box of the ultrasound image in an HxWx3 uint8 BGR image."""
    return whole_image(image_bgr)
