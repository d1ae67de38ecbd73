"""The scan region a DICOM ultrasound file states itself: the Sequence of Ultrasound
Regions (0018,6011).

Scanners that fill it in say exactly where each part of the screen is (the B-mode image,
a Doppler spectrum, an ECG trace, a colour bar) and how large a pixel is. That is better
than anything found in the pixels, so `auto` uses it whenever it is there and usable.

The rule (`choose_tissue_region`):
- candidates are the regions whose RegionDataType is 1 (tissue) and whose
  RegionSpatialFormat is 1 (2D); several: the largest (by area), the first of equal ones;
- RegionLocationMinX0/MinY0/MaxX1/MaxY1 are pixel indices, Max inclusive, so the box is
  x = MinX0, y = MinY0, width = MaxX1 - MinX0 + 1, height = MaxY1 - MinY0 + 1;
- the box must lie inside the image. A Max one pixel past the last column/row is a
  common scanner off-by-one (pydicom's examples_palette.dcm has MaxX1 = 800 for 800
  columns) and is clipped; a region further outside means the pixels were resized or cut
  after the scanner wrote the region (pydicom's examples_ybr_color.dcm: a 640x480 region
  on 320x240 pixels), so it is not used at all, with the reason given;
- mm per pixel = PhysicalDeltaX/Y x 10 when PhysicalUnitsX/YDirection are both 3 (cm);
  otherwise (no units, seconds, Hz ...) it is not stated.

A colour flow region (RegionDataType 2) in the file means a colour Doppler overlay: the
file is refused with that reason (`colour_flow_reason`).

pydicom is not imported here: the functions read a dataset that runtime.images opened.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.scan_region import ScanRegion

TISSUE = 1                    # RegionDataType (0018,6014)
COLOUR_FLOW = 2
SPATIAL_2D = 1                # RegionSpatialFormat (0018,6012)
UNITS_CM = 3                  # PhysicalUnitsX/YDirection (0018,6024/6026)

COLOUR_FLOW_REASON = ("colour Doppler overlay: the DICOM file declares a colour flow region in the scan; "
                      "give the B-mode image")


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions, as the file states it."""

    min_x: int
    min_y: int
    max_x: int                # inclusive
    max_y: int                # inclusive
    spatial_format: int | None
    data_type: int | None
    units_x: int | None
    units_y: int | None
    delta_x: float | None
    delta_y: float | None

    @property
    def area(self) -> int:
        return max(0, self.max_x - self.min_x + 1) * max(0, self.max_y - self.min_y + 1)

    @property
    def is_tissue_2d(self) -> bool:
        return self.data_type == TISSUE and self.spatial_format == SPATIAL_2D

    def mm_per_pixel(self) -> tuple[float, float] | None:
        if self.units_x != UNITS_CM or self.units_y != UNITS_CM:
            return None
        if not _positive(self.delta_x) or not _positive(self.delta_y):
            return None
        return (float(self.delta_x) * 10.0, float(self.delta_y) * 10.0)


@dataclass(frozen=True)
class DicomRegionChoice:
    """What the file's regions give: the box to use (None: none usable) and, when the
    file has regions but none is used, why not."""

    region: ScanRegion | None
    reason: str | None = None
    colour_flow: bool = False


def read_regions(ds: Any) -> list[UltrasoundRegion]:
    """The regions of a pydicom dataset (empty when it has no sequence). Items missing
    a location are left out; other missing values are None."""
    items = ds.get("SequenceOfUltrasoundRegions", None) or []
    regions = []
    for item in items:
        location = [_int(item.get(k)) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                                 "RegionLocationMaxX1", "RegionLocationMaxY1")]
        if any(v is None for v in location):
            continue
        regions.append(UltrasoundRegion(
            *location,
            spatial_format=_int(item.get("RegionSpatialFormat")), data_type=_int(item.get("RegionDataType")),
            units_x=_int(item.get("PhysicalUnitsXDirection")), units_y=_int(item.get("PhysicalUnitsYDirection")),
            delta_x=_float(item.get("PhysicalDeltaX")), delta_y=_float(item.get("PhysicalDeltaY")),
        ))
    return regions


def choose_tissue_region(regions: list[UltrasoundRegion], width: int, height: int) -> DicomRegionChoice:
    """The tissue region to crop to in a `width` x `height` image (see the module text)."""
    colour = any(r.data_type == COLOUR_FLOW for r in regions)
    if not regions:
        return DicomRegionChoice(None, None, colour)
    tissue = [r for r in regions if r.is_tissue_2d]
    if not tissue:
        return DicomRegionChoice(None, "the DICOM file's ultrasound regions hold no 2D tissue region", colour)
    best = max(tissue, key=lambda r: r.area)            # max() keeps the first of equal areas
    problem = _outside(best, width, height)
    if problem is not None:
        return DicomRegionChoice(None, f"the DICOM file's tissue region {problem}: its pixels were probably "
                                       "resized or cut after the scanner wrote it, so it is not used", colour)
    x1, y1 = min(best.max_x, width - 1), min(best.max_y, height - 1)
    box = ScanRegion(best.min_x, best.min_y, x1 - best.min_x + 1, y1 - best.min_y + 1, source="dicom",
                     mm_per_pixel=best.mm_per_pixel())
    return DicomRegionChoice(box, None, colour)


def colour_flow_reason(choice: DicomRegionChoice | None) -> str | None:
    return COLOUR_FLOW_REASON if choice is not None and choice.colour_flow else None


def _outside(r: UltrasoundRegion, width: int, height: int) -> str | None:
    corners = f"({r.min_x},{r.min_y})-({r.max_x},{r.max_y})"
    if r.max_x < r.min_x or r.max_y < r.min_y:
        return f"{corners} is empty"
    # one pixel past the edge is tolerated (and clipped): a common scanner off-by-one
    if r.min_x < 0 or r.min_y < 0 or r.min_x >= width or r.min_y >= height or r.max_x > width or r.max_y > height:
        return f"{corners} does not fit the {width}x{height} image"
    return None


def _int(value) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _float(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _positive(value: float | None) -> bool:
    return value is not None and value == value and 0.0 < value < float("inf")
