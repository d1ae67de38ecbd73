"""A file (or its bytes, or an array) as the classifier takes it: the frame(s) to
classify and what a DICOM file says about its own scan region.

runtime.images turns one file into one picture; this module adds what a scanner's
export carries beyond that:
- cine loops: a multi-frame DICOM holds many frames; `FrameChoice` says which are
  classified: `middle` (the default: the first and last frames of a clip are often the
  probe touching down or lifting off), `all`, or a frame number N (counted from 1, as
  DICOM viewers number them);
- the Sequence of Ultrasound Regions (runtime.dicom_regions), read once here so that the
  region, its mm per pixel and a declared colour flow region reach the prediction.

A still image (PNG, JPEG, ..., a single-frame DICOM) is classified as it is whatever the
choice, so `bcd predict FOLDER --frames 12` works on a folder that mixes cine loops and
stills; a frame number beyond the end of a cine loop is an error.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.dicom_regions import DicomRegionChoice, choose_tissue_region, read_regions
from runtime.images import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    read_file_bytes,
    decode_image,
    dicom_frame,
    looks_like_dicom,
    open_dicom,
    to_bgr_uint8,
)

FRAME_MODES = ("middle", "all")


@dataclass(frozen=True)
class FrameChoice:
    """Which frames of a cine loop are classified: "middle", "all", or frame `number`
    (from 1). Parse user text with FrameChoice.parse("all" / "middle" / "12")."""

    mode: str = "middle"              # middle | all | number
    number: int | None = None         # with mode "number": the frame, counted from 1

    def __post_init__(self) -> None:
        if self.mode == "number":
            if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 1:
                raise ValueError(f"a frame number counts from 1, got {self.number!r}")
        elif self.mode in FRAME_MODES:
            if self.number is not None:
                raise ValueError(f"frame choice {self.mode!r} takes no number")
        else:
            raise ValueError(f"frames must be middle, all or a frame number (from 1), got {self.mode!r}")

    @classmethod
    def parse(cls, value: "str | int | FrameChoice | None") -> "FrameChoice":
        if value is None:
            return cls()
        if isinstance(value, FrameChoice):
            return value
        if isinstance(value, bool):
            raise ValueError(f"frames must be middle, all or a frame number (from 1), got {value!r}")
        if isinstance(value, (int, np.integer)):
            return cls("number", int(value))
        text = str(value).strip().lower()
        if text in FRAME_MODES:
            return cls(text)
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"frames must be middle, all or a frame number (from 1), got {value!r}") from None
        return cls("number", number)

    def __str__(self) -> str:
        return str(self.number) if self.mode == "number" else self.mode

    def indices(self, count: int, name: str = "image") -> list[int]:
        """0-based indices of the frames to classify in a file of `count` frames."""
        if self.mode == "all":
            return list(range(count))
        if self.mode == "middle":
            return [count // 2]
        if self.number > count:
            what = "1 frame" if count == 1 else f"{count} frames (1 to {count})"
            raise ImageReadError(f"{name}: frame {self.number} asked for, but the file has {what}")
        return [self.number - 1]


@dataclass
class DecodedScan:
    """The frame(s) of one input to classify, as HxWx3 uint8 BGR arrays."""

    frames: list[np.ndarray]
    frame_numbers: list[int]               # of the frames, counted from 1 in the file
    frame_count: int = 1                   # frames in the file (1: a still image)
    dicom: DicomRegionChoice | None = None  # what the file's region sequence gives (None: not a DICOM)

    @property
    def display(self) -> np.ndarray:
        """The frame shown, and on which the region is found: the middle one of those chosen."""
        return self.frames[len(self.frames) // 2]

    @property
    def is_cine(self) -> bool:
        return self.frame_count > 1


def still(image: np.ndarray) -> DecodedScan:
    """An in-memory image as a one-frame scan (any array runtime.images.to_bgr_uint8 takes)."""
    return DecodedScan([to_bgr_uint8(image)], [1])


def read_scan(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
              frames: "FrameChoice | str | int | None" = None) -> DecodedScan:
    """Read a file; raises ImageReadError (message starting with the path) when it can't be used."""
    name = str(path)
    return decode_scan(read_file_bytes(Path(path), name), max_pixels, name, frames)


def decode_scan(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image",
                frames: "FrameChoice | str | int | None" = None) -> DecodedScan:
    """Decode file bytes (`name`: for messages, and .dcm recognises DICOM without a preamble)."""
    choice = FrameChoice.parse(frames)
    data = bytes(data)
    if data and looks_like_dicom(data, name):
        return _decode_dicom_scan(data, max_pixels, name, choice)
    return DecodedScan([decode_image(data, max_pixels, name)], [1])


def _decode_dicom_scan(data: bytes, max_pixels: int, name: str, choice: FrameChoice) -> DecodedScan:
    ds, count = open_dicom(data, max_pixels, name)
    picked = choice.indices(count, name) if count > 1 else [0]     # a single-frame file is its one frame
    rows, cols = int(ds.Rows), int(ds.Columns)
    if len(picked) * rows * cols > max_pixels:
        raise ImageReadError(
            f"{name}: the cine loop has {count} frames of {cols}x{rows}, {count * rows * cols:,} pixels in all, over "
            f"the limit of {max_pixels:,}; classify the middle frame or one frame number (or raise max_pixels)")
    images = [dicom_frame(ds, i if count > 1 else None, name) for i in picked]
    height, width = images[0].shape[:2]
    try:
        regions = read_regions(ds)
    except Exception:  # noqa: BLE001 - a damaged region sequence is treated as none (the finder takes over)
        regions = []
    dicom = choose_tissue_region(regions, width, height)
    if dicom.reason is not None:   # shown like the burned-in annotation warning (bcd predict, the demo)
        warnings.warn(f"{name}: {dicom.reason} (region auto falls back to the scan-region finder)", UserWarning,
                      stacklevel=4)
    return DecodedScan(images, [i + 1 for i in picked], count, dicom)
