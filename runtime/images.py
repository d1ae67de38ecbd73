"""Turn an image file (or its bytes) into the one pixel format the model pipeline uses.

Everything downstream (`runtime.preprocessing.prepare`, the demo, training) expects an
HxWx3 uint8 BGR array. Clinic exports come in many shapes: 8- and 16-bit PNG, grayscale,
RGBA screenshots, CMYK JPEGs, multi-page TIFF, DICOM. This module normalises all of them
and turns every way a file can be unusable into one exception type, `ImageReadError`,
whose message is short enough to show to a user as is ("<file>: <reason>").

Safety: the image size is read from the file header before anything is decoded, and
files over `max_pixels` are refused. A few hundred bytes of PNG or JPEG can claim
100000x100000 pixels; decoding that would take ~30 GB of memory. Formats whose header
we do not parse still go to OpenCV, which has its own (much larger) limit, and the
decoded size is checked afterwards.

Only the standard library, numpy and cv2 are imported here: this is the light runtime
for CPU-only clinic PCs. pydicom is optional and imported only when a DICOM file shows up.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import threading
import warnings
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 64_000_000
# Larger than any scan, even a long uncompressed DICOM cine loop; refused before reading,
# so a huge or endless file (a disk image, /dev/zero under a .png name) never fills memory.
MAX_FILE_BYTES = 1 << 30
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DICOM_MISSING = "DICOM support needs the 'dicom' extra: pip install pydicom"
# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG, reserved) and CC (DAC) share
# the range but are not frame headers.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0..RST7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


class ImageReadError(ValueError):
    """Clear, user-facing reason a file can't be used as an image."""


# --------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file and return it as an HxWx3 uint8 BGR array.

    Raises ImageReadError (with the path in the message) for anything that is not a
    usable image: missing file, directory, no permission, empty, corrupt, too large.
    """
    name = str(path)
    data = read_file_bytes(Path(path), name)
    return decode_image(data, max_pixels=max_pixels, name=name)


def read_file_bytes(path: Path, name: str) -> bytes:
    # Checked up front because opening a directory raises PermissionError on Windows,
    # which would give a misleading message.
    if path.is_dir():
        raise ImageReadError(f"{name}: is a directory, not an image file")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found") from None
    except OSError as e:     # e.g. a symlink loop
        raise ImageReadError(f"{name}: cannot read file ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):
        # Reading a FIFO or a device would block forever or never end.
        raise ImageReadError(f"{name}: not a regular file (a pipe, socket or device), so not an image file")
    if info.st_size > MAX_FILE_BYTES:
        raise ImageReadError(f"{name}: the file is {info.st_size / 1e9:.1f} GB, larger than any scan "
                             f"(limit {MAX_FILE_BYTES / 1e9:.1f} GB)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found") from None
    except PermissionError:
        raise ImageReadError(f"{name}: permission denied") from None
    except OSError as e:
        raise ImageReadError(f"{name}: cannot read file ({e.strerror or e})") from None
    if not data:
        raise ImageReadError(f"{name}: empty file")
    return data


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image"
) -> np.ndarray:
    """Decode image file bytes into an HxWx3 uint8 BGR array.

    `name` is only used in error messages and to recognise DICOM by its `.dcm` suffix.
    Any byte string either decodes or raises ImageReadError; nothing else escapes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image needs bytes, got {type(data).__name__}")
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    data = bytes(data)
    if not data:
        raise ImageReadError(f"{name}: empty file")
    fmt = _sniff(data)
    if fmt is None and _looks_like_dicom(data, name):
        return _decode_dicom(data, max_pixels, name)
    _check_pixels(image_dimensions(data), max_pixels, name)
    if fmt == "png":
        _check_png_chunks(data, name)
    array = _cv2_decode(data, fmt, name)
    _check_pixels((array.shape[1], array.shape[0]), max_pixels, name)
    try:
        return to_bgr_uint8(array)
    except ImageReadError as e:
        raise ImageReadError(f"{name}: {e}") from None


def _check_pixels(size: tuple[int, int] | None, max_pixels: int, name: str) -> None:
    if size is None:
        return
    width, height = size
    if width * height > max_pixels:
        raise ImageReadError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the "
            f"limit of {max_pixels:,} (refused as a possible decompression bomb; "
            "pass a larger max_pixels if the file is trusted)"
        )


def _check_png_chunks(data: bytes, name: str) -> None:
    # OpenCV 5.0 allocates each chunk's declared length before reading it, so an
    # 850-byte PNG with one corrupted length field made it touch 4 GB of memory. In a
    # valid PNG every chunk lies inside the file, so that is checked before decoding.
    i, size = len(_PNG_SIGNATURE), len(data)
    while i + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, i)
        remaining = max(0, size - i - 12)
        if length > remaining:
            raise ImageReadError(
                f"{name}: not a readable image (corrupt or truncated PNG data: a chunk "
                f"claims {length:,} bytes but only {remaining:,} remain)"
            )
        if kind == b"IEND":
            return
        i += 12 + length


def _cv2_decode(data: bytes, fmt: str | None, name: str) -> np.ndarray:
    # JPEG has no alpha, so it can use the flags that honour EXIF orientation (phone
    # photos of a scanner screen). IMREAD_UNCHANGED ignores orientation but is the only
    # way to get the alpha channel and 16-bit depth of PNG/TIFF.
    if fmt == "jpeg":
        flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    else:
        flags = cv2.IMREAD_UNCHANGED
    try:
        with _quiet_opencv():
            array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        reason = f"decoder error: {_short_reason(e)}"
        raise ImageReadError(f"{name}: not a readable image ({reason})") from None
    if array is None:
        what = f"corrupt or truncated {fmt.upper()} data" if fmt else (
            "unknown format or corrupt data; supported: " + ", ".join(IMAGE_EXTENSIONS)
        )
        raise ImageReadError(f"{name}: not a readable image ({what})")
    return array


def _short_reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# OpenCV logs a WARN/ERROR line to stderr for every corrupt file; a batch over a folder
# of bad exports would bury the real output. The log level is process-global, so it is
# lowered only while a decode runs, with a counter so overlapping decodes in several
# threads restore the caller's level exactly once. (libpng still prints "libpng error"
# lines itself; that cannot be switched off from Python.)
_log_lock = threading.Lock()
_log_users = 0
_log_saved: int | None = None


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None or not hasattr(logging, "LOG_LEVEL_SILENT"):
        yield
        return
    _enter_quiet(logging)
    try:
        yield
    finally:
        _leave_quiet(logging)


def _enter_quiet(logging) -> None:
    global _log_users, _log_saved
    with _log_lock:
        try:
            if _log_users == 0:
                _log_saved = logging.getLogLevel()
                logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        except Exception:  # logging is cosmetic; never let it break decoding
            _log_saved = None
        _log_users += 1


def _leave_quiet(logging) -> None:
    global _log_users
    with _log_lock:
        _log_users -= 1
        if _log_users == 0 and _log_saved is not None:
            with contextlib.suppress(Exception):
                logging.setLogLevel(_log_saved)


# ----------------------------------------------------------------- pixel normalising


def to_bgr_uint8(array: np.ndarray) -> np.ndarray:
    """Normalise an in-memory image to HxWx3 uint8 BGR.

    Accepts HxW gray, HxWx1 gray, HxWx2 gray+alpha, HxWx3 BGR, HxWx4 BGRA with dtype
    uint8, uint16 (scaled by the full 16-bit range: value / 257, rounded), bool, or
    float (taken as 0..1 if the maximum is <= 1, else as 0..255; clipped). Alpha is
    composited onto black, so transparent areas come out black rather than showing
    whatever color the transparent pixels happen to store. Raises ImageReadError for
    arrays that are not an image (wrong shape, empty, NaN/inf, unsupported dtype).
    An input that is already HxWx3 uint8 and contiguous is returned as is, not copied.
    """
    arr = _as_hwc(array)
    arr = _to_uint8(arr)
    channels = arr.shape[2]
    if channels == 2:  # gray + alpha -> BGRA
        gray, alpha = arr[..., :1], arr[..., 1:]
        arr = np.concatenate([gray, gray, gray, alpha], axis=2)
    if arr.shape[2] == 4:
        arr = _composite_on_black(arr)
    elif channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _as_hwc(array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(
            f"unsupported image shape {arr.shape}: expected HxW, HxWx1, HxWx3 or HxWx4"
        )
    if arr.size == 0:
        raise ImageReadError(f"empty image (shape {arr.shape})")
    return arr


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        # Integer rounding of value/257: maps 0..65535 exactly onto 0..255.
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        return _float_to_uint8(arr)
    raise ImageReadError(f"unsupported pixel type {arr.dtype}")


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ImageReadError("image contains NaN or infinite values")
    # A float image is either 0..1 or 0..255; there is no header to say which, so the
    # data decides. (An almost black 0..255 image would be read as 0..1 and brightened.)
    scale = 255.0 if float(arr.max()) <= 1.0 else 1.0
    return np.clip(np.rint(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _composite_on_black(bgra: np.ndarray) -> np.ndarray:
    # Premultiply: color * alpha / 255 with rounding, in uint16 (255*255+127 fits).
    alpha = bgra[..., 3:4].astype(np.uint16)
    return ((bgra[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


# ----------------------------------------------------------------- header parsing


def _sniff(data: bytes) -> str | None:
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header of a PNG, JPEG, BMP or TIFF; else None.

    Only the header is read, so this is cheap and safe on hostile files. None means the
    format is not one of these or the header is too damaged to give a size.
    """
    parsers = {"png": _png_size, "jpeg": _jpeg_size, "bmp": _bmp_size, "tiff": _tiff_size}
    data = bytes(data)
    fmt = _sniff(data)
    if fmt is None:
        return None
    try:
        return parsers[fmt](data)
    except (struct.error, OverflowError):  # header cut short, or an offset beyond any file (found by fuzzing)
        return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk must come first: signature(8) length(4) "IHDR"(4) width(4) height(4)
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments after SOI until a frame header; APPn segments (EXIF
    # thumbnails etc.) are skipped by their length, so their sizes are never mistaken
    # for the image's.
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            return None  # lost sync: not a well-formed segment sequence
        while i < n and data[i] == 0xFF:  # any number of fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0x00, 0xD9, 0xDA):  # invalid, EOI or SOS before any frame header
            return None
        length = struct.unpack_from(">H", data, i)[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, i + 3)  # after length, precision
            return width, height
        if length < 2:
            return None
        i += length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        return struct.unpack_from("<HH", data, 18)
    if header_size < 16:
        return None
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(width), abs(height)  # negative height means top-down rows


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    if struct.unpack_from(order + "H", data, 2)[0] == 42:  # classic TIFF
        ifd = struct.unpack_from(order + "I", data, 4)[0]
        count_fmt, entry_size, value_at = "H", 12, 8
    else:  # BigTIFF: 64-bit offsets and counts
        ifd = struct.unpack_from(order + "Q", data, 8)[0]
        count_fmt, entry_size, value_at = "Q", 20, 12
    if ifd >= len(data):  # a random BigTIFF offset can exceed what unpack_from accepts at all
        return None
    count = struct.unpack_from(order + count_fmt, data, ifd)[0]
    first = ifd + struct.calcsize(count_fmt)
    count = min(count, max(0, (len(data) - first) // entry_size))
    sizes = {}
    for k in range(count):
        entry = first + k * entry_size
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength
            value_fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if value_fmt is None:
                return None
            # Values are left-justified in the field, so this works for both byte orders.
            sizes[tag] = struct.unpack_from(order + value_fmt, data, entry + value_at)[0]
    if 256 in sizes and 257 in sizes:
        return sizes[256], sizes[257]
    return None


# --------------------------------------------------------------------------- DICOM


def _looks_like_dicom(data: bytes, name: str) -> bool:
    # Part 10 files have a 128-byte preamble then "DICM"; some older .dcm files lack it.
    return data[128:132] == b"DICM" or name.lower().endswith(".dcm")


def _decode_dicom(data: bytes, max_pixels: int, name: str) -> np.ndarray:
    """Decode a DICOM image with pydicom.

    Grayscale: modality LUT, then the VOI LUT / window from the file, then the min..max
    of the result is stretched to 0..255; MONOCHROME1 (white = low) is inverted so the
    output always shows tissue bright as on screen. Color (RGB, YBR, palette) is
    converted to BGR. Multi-frame files (cine loops) give their middle frame: the
    first and last frames of an ultrasound clip are often the probe touching down or
    lifting off (runtime.scan_input chooses other frames). Files with BurnedInAnnotation
    YES raise a UserWarning because the pixels may show the patient's name.
    """
    ds, frames = open_dicom(data, max_pixels, name)
    return dicom_frame(ds, frames // 2 if frames > 1 else None, name)


def open_dicom(data: bytes, max_pixels: int, name: str):
    """(pydicom dataset, number of frames) of DICOM bytes; the frame size is checked
    against max_pixels and a BurnedInAnnotation YES file warns. Pixels are not decoded."""
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(f"{name}: {_DICOM_MISSING}") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:  # pydicom raises many types for broken files
        raise ImageReadError(f"{name}: not a readable DICOM file ({_short_reason(e)})") from None
    _check_pixels((cols, rows), max_pixels, name)
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        warnings.warn(
            f"{name}: DICOM BurnedInAnnotation is YES; the pixels contain burned-in text "
            "that may identify the patient. Do not share the image without de-identifying it.",
            UserWarning,
            stacklevel=4,
        )
    return ds, max(frames, 1)


def dicom_frame(ds, frame: int | None, name: str) -> np.ndarray:
    """One frame (0-based; None: a single-frame file) of an opened DICOM as HxWx3 uint8 BGR."""
    try:
        return _dicom_pixels(ds, frame)
    except ImageReadError as e:
        raise ImageReadError(f"{name}: {e}") from None
    except Exception as e:  # missing codec plugins, bad pixel data, ...
        reason = f"cannot decode DICOM pixel data ({_short_reason(e)})"
        raise ImageReadError(f"{name}: {reason}") from None


def looks_like_dicom(data: bytes, name: str) -> bool:
    """Whether decode_image would read these bytes as DICOM."""
    return _sniff(data) is None and _looks_like_dicom(data, name)


def _dicom_pixels(ds, frame: int | None) -> np.ndarray:
    luts = _dicom_luts()
    arr = _dicom_frame(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        arr = luts["voi"](luts["modality"](arr, ds), ds)
        gray = _stretch_to_uint8(np.asarray(arr, dtype=np.float64))
        return to_bgr_uint8(255 - gray if photometric == "MONOCHROME1" else gray)
    if photometric == "PALETTE COLOR":
        arr = luts["color"](arr, ds)
    # pydicom hands color data over as RGB (it converts YBR itself).
    rgb = to_bgr_uint8(np.asarray(arr))
    return np.ascontiguousarray(rgb[..., ::-1])


def _dicom_frame(ds, frame: int | None) -> np.ndarray:
    try:  # pydicom >= 3 can decode just the one frame of a long cine loop
        from pydicom.pixels import pixel_array
    except ImportError:
        arr = ds.pixel_array
        return arr if frame is None else arr[frame]
    return pixel_array(ds, index=frame)


def _dicom_luts() -> dict:
    try:
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import (
            apply_color_lut,
            apply_modality_lut,
            apply_voi_lut,
        )
    return {"modality": apply_modality_lut, "voi": apply_voi_lut, "color": apply_color_lut}


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ImageReadError("DICOM pixel data contains NaN or infinite values")
    low, high = float(arr.min()), float(arr.max())
    if high <= low:  # flat image: nothing to stretch
        return np.zeros(arr.shape, np.uint8)
    return np.rint((arr - low) * (255.0 / (high - low))).astype(np.uint8)
