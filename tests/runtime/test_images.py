"""Tests for runtime.images: every supported format decodes to HxWx3 uint8 BGR, and every
kind of bad input ends in ImageReadError. Images are generated on the fly; PIL is used
here only to produce files OpenCV cannot write (CMYK JPEG, EXIF orientation,
big-endian and BigTIFF)."""
from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from runtime.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    decode_image,
    image_dimensions,
    read_image,
    to_bgr_uint8,
)
from tests.conftest import dicom_bytes, missing, needs_module

BUSI = Path("/work/shared/data/busi")


def encode(ext: str, array: np.ndarray, params: tuple = ()) -> bytes:
    ok, buf = cv2.imencode(ext, array, list(params))
    assert ok
    return buf.tobytes()


def pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def color_bars(height: int = 24, width: int = 36) -> np.ndarray:
    """BGR image: blue, green, red vertical bars."""
    img = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    img[:, :third] = (255, 0, 0)
    img[:, third : 2 * third] = (0, 255, 0)
    img[:, 2 * third :] = (0, 0, 255)
    return img


def assert_bgr(image: np.ndarray, height: int, width: int) -> None:
    assert image.shape == (height, width, 3)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous


def gradient(height: int = 20, width: int = 30) -> np.ndarray:
    return (np.arange(height * width, dtype=np.uint32) % 256).astype(np.uint8).reshape(
        height, width
    )


# ------------------------------------------------------------------ formats decode


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_color_round_trip(tmp_path, ext):
    img = color_bars()
    path = tmp_path / f"bars{ext}"
    path.write_bytes(encode(ext, img))
    out = read_image(path)
    assert_bgr(out, 24, 36)
    np.testing.assert_array_equal(out, img)


def test_jpeg_color(tmp_path):
    img = color_bars()
    path = tmp_path / "bars.jpg"
    path.write_bytes(encode(".jpg", img, (cv2.IMWRITE_JPEG_QUALITY, 95)))
    out = read_image(path)
    assert_bgr(out, 24, 36)
    # JPEG is lossy, but the bars must keep their color and BGR order.
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 8
    assert out[12, 5].astype(int).tolist() == pytest.approx((255, 0, 0), abs=20)
    assert out[12, 30].astype(int).tolist() == pytest.approx((0, 0, 255), abs=20)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff"])
def test_grayscale_is_replicated_to_three_channels(tmp_path, ext):
    gray = gradient()
    path = tmp_path / f"gray{ext}"
    path.write_bytes(encode(ext, gray))
    out = read_image(path)
    assert_bgr(out, 20, 30)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    if ext != ".jpg":
        np.testing.assert_array_equal(out[..., 0], gray)


def test_16bit_png_uses_full_16bit_range(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 1000, 128, 129]], np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(encode(".png", values))
    out = read_image(path)
    assert_bgr(out, 1, 6)
    # 1000/257 = 3.89 -> 4; 128/257 = 0.498 -> 0; 129/257 = 0.502 -> 1
    assert out[0, :, 0].tolist() == [0, 100, 255, 4, 0, 1]


def test_16bit_big_endian_tiff(tmp_path):
    values = np.array([[0, 257 * 7, 65535], [257, 514, 771]], np.uint16)
    image = Image.frombytes("I;16B", (3, 2), values.astype(">u2").tobytes())
    data = pil_bytes(image, "TIFF")
    assert data[:4] == b"MM\x00*"
    assert image_dimensions(data) == (3, 2)
    out = decode_image(data)
    assert out[..., 2].tolist() == [[0, 7, 255], [1, 2, 3]]


def test_rgba_transparent_areas_become_black(tmp_path):
    bgra = np.zeros((10, 30, 4), np.uint8)
    bgra[:, :10] = (0, 0, 255, 0)  # red, fully transparent -> black
    bgra[:, 10:20] = (0, 255, 0, 255)  # green, opaque -> unchanged
    bgra[:, 20:] = (255, 255, 255, 128)  # white, half transparent -> 128
    path = tmp_path / "alpha.png"
    path.write_bytes(encode(".png", bgra))
    out = read_image(path)
    assert_bgr(out, 10, 30)
    assert out[:, :10].max() == 0
    assert (out[:, 10:20] == (0, 255, 0)).all()
    assert (out[:, 20:] == 128).all()


def test_cmyk_jpeg_comes_out_as_correct_bgr():
    rgb = color_bars()[..., ::-1].copy()  # PIL speaks RGB
    data = pil_bytes(Image.fromarray(rgb, "RGB").convert("CMYK"), "JPEG", quality=95)
    assert b"Adobe" in data  # PIL writes Adobe (inverted) CMYK, like Photoshop
    out = decode_image(data, name="cmyk.jpg")
    assert_bgr(out, 24, 36)
    assert np.abs(out.astype(int) - color_bars().astype(int)).max() <= 20


def test_jpeg_exif_orientation_is_applied():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = pil_bytes(Image.fromarray(img), "JPEG", exif=exif.tobytes(), quality=95)
    assert image_dimensions(data) == (40, 20)  # the stored size
    out = decode_image(data)
    assert_bgr(out, 40, 20)  # the displayed size
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # left half is now on top


def test_multipage_tiff_gives_first_page(tmp_path):
    ok, buf = cv2.imencodemulti(
        ".tiff", [np.full((10, 20), 50, np.uint8), np.full((30, 40), 200, np.uint8)]
    )
    assert ok
    data = buf.tobytes()
    assert image_dimensions(data) == (20, 10)
    out = decode_image(data)
    assert_bgr(out, 10, 20)
    assert (out == 50).all()


def test_bigtiff_dimensions_and_decode():
    data = pil_bytes(Image.fromarray(gradient(12, 17)), "TIFF", big_tiff=True)
    assert data[:4] == b"II+\x00"
    assert image_dimensions(data) == (17, 12)
    np.testing.assert_array_equal(decode_image(data)[..., 1], gradient(12, 17))


def test_real_busi_image():
    path = BUSI / "benign" / "benign (1).png"
    if not path.exists():
        missing("BUSI data not available")
    out = read_image(path)
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
    assert image_dimensions(path.read_bytes()) == (out.shape[1], out.shape[0])


def test_extensions_are_lower_case():
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


# ------------------------------------------------------------ header dimensions


@pytest.mark.parametrize(
    "ext, params",
    [
        (".png", ()),
        (".jpg", ()),
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),  # SOF2 instead of SOF0
        (".bmp", ()),
        (".tiff", ()),
    ],
)
@pytest.mark.parametrize("shape", [(7, 13), (13, 7, 3)])
def test_image_dimensions_match_real_size(ext, params, shape):
    data = encode(ext, np.full(shape, 99, np.uint8), params)
    assert image_dimensions(data) == (shape[1], shape[0])


def test_jpeg_dimensions_skip_exif_thumbnail():
    # The EXIF block sits in an APP1 segment before the frame header and must be skipped.
    exif = Image.Exif()
    exif[0x010F] = "ACME ultrasound"
    data = pil_bytes(Image.fromarray(np.zeros((33, 45, 3), np.uint8)), "JPEG", exif=exif)
    assert b"\xff\xe1" in data[:40] and b"Exif" in data[:60]
    assert image_dimensions(data) == (45, 33)


def test_big_endian_tiff_header_with_short_and_long_values():
    entries = [(256, 3, 1, struct.pack(">HH", 300, 0)), (257, 4, 1, struct.pack(">I", 200))]
    ifd = struct.pack(">H", len(entries)) + b"".join(
        struct.pack(">HHI", tag, kind, count) + value for tag, kind, count, value in entries
    )
    assert image_dimensions(b"MM\x00*" + struct.pack(">I", 8) + ifd) == (300, 200)


def test_top_down_bmp_dimensions():
    data = bytearray(encode(".bmp", np.zeros((5, 8, 3), np.uint8)))
    data[22:26] = struct.pack("<i", -5)  # negative height marks top-down row order
    assert image_dimensions(bytes(data)) == (8, 5)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"GIF89a" + bytes(9)],
)
def test_image_dimensions_unknown_or_cut_short(data):
    assert image_dimensions(data) is None


# ------------------------------------------------------------ decompression bomb


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims the given size, with one tiny IDAT: a classic bomb shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(1000)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("size", [100_000, 9_000])  # 9000^2 is under OpenCV's own limit
def test_pixel_guard_rejects_huge_header_before_decoding(size):
    data = png_header_only(size, size)
    assert image_dimensions(data) == (size, size)
    with pytest.raises(ImageReadError) as info:
        decode_image(data, name="bomb.png")
    message = str(info.value)
    assert message.startswith("bomb.png: ")
    assert f"{size}x{size}" in message
    assert f"{DEFAULT_MAX_PIXELS:,}" in message


def test_png_chunk_length_bomb_is_refused_before_decoding():
    # Found by fuzzing: OpenCV 5.0 allocates a chunk's declared length up front, so one
    # corrupted length field in a tiny PNG cost gigabytes of memory.
    data = bytearray(encode(".png", np.zeros((16, 16, 3), np.uint8)))
    assert data[37:41] == b"IDAT"
    data[33:37] = struct.pack(">I", 0x40000000)  # IDAT "is" 1 GiB long
    before = _peak_rss_mb()
    with pytest.raises(ImageReadError, match="chunk claims 1,073,741,824 bytes"):
        decode_image(bytes(data), name="tiny.png")
    assert _peak_rss_mb() - before < 256


def _peak_rss_mb() -> float:
    from runtime.host import peak_rss_mib
    return peak_rss_mib() or 0.0


def test_max_pixels_is_configurable(tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(encode(".png", np.zeros((64, 64, 3), np.uint8)))
    assert read_image(path, max_pixels=64 * 64).shape == (64, 64, 3)
    with pytest.raises(ImageReadError, match="64x64"):
        read_image(path, max_pixels=64 * 64 - 1)


# ------------------------------------------------------------------ bad inputs


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="not found") as info:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png: empty file"):
        read_image(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path):
    path = tmp_path / "locked.png"
    path.write_bytes(encode(".png", np.zeros((4, 4), np.uint8)))
    path.chmod(0)
    try:
        with pytest.raises(ImageReadError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_text_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("patient notes, not an image\n" * 20)
    with pytest.raises(ImageReadError, match="notes.png: not a readable image"):
        read_image(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match="noise.jpg"):
        read_image(path)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_files_fail_cleanly_or_decode(tmp_path, ext):
    rng = np.random.default_rng(1)
    data = encode(ext, rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    for cut in (1, 8, 30, 100, len(data) // 2, len(data) - 20, len(data) - 2, len(data) - 1):
        path = tmp_path / f"cut{cut}{ext}"
        path.write_bytes(data[:cut])
        try:
            out = read_image(path)
        except ImageReadError as e:
            assert path.name in str(e)
        else:
            assert_bgr(out, 48, 48)


def test_decode_image_rejects_non_bytes():
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]


# ------------------------------------------------------------------ to_bgr_uint8


def test_to_bgr_uint8_shapes_and_dtypes():
    gray = gradient(4, 5)
    assert_bgr(to_bgr_uint8(gray), 4, 5)
    assert_bgr(to_bgr_uint8(gray[..., None]), 4, 5)
    bgr = np.dstack([gray, gray // 2, gray // 3])
    assert to_bgr_uint8(bgr) is bgr  # already in shape: no copy
    opaque = np.dstack([gray, np.full_like(gray, 255)])  # gray + alpha
    np.testing.assert_array_equal(to_bgr_uint8(opaque)[..., 0], gray)
    np.testing.assert_array_equal(to_bgr_uint8(gray.astype(np.uint16) * 257)[..., 0], gray)
    np.testing.assert_array_equal(to_bgr_uint8(gray / 255.0)[..., 0], gray)
    np.testing.assert_array_equal(to_bgr_uint8(gray.astype(np.float32))[..., 0], gray)
    assert to_bgr_uint8(np.array([[-5.0, 300.0]])).tolist() == [[[0] * 3, [255] * 3]]
    assert to_bgr_uint8(np.array([[True, False]]))[..., 0].tolist() == [[255, 0]]
    assert to_bgr_uint8(bgr[:, ::-1]).flags.c_contiguous


@pytest.mark.parametrize(
    "array, reason",
    [
        (np.zeros(10, np.uint8), "shape"),
        (np.zeros((2, 2, 2, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.array([[0.5, np.nan]]), "NaN"),
        (np.array([[0.5, np.inf]]), "NaN"),
        (np.zeros((3, 3), np.int32), "pixel type"),
        (np.zeros((3, 3), np.complex64), "pixel type"),
        (np.array([["a", "b"]]), "pixel type"),
    ],
)
def test_to_bgr_uint8_rejects_nonsense(array, reason):
    with pytest.raises(ImageReadError, match=reason):
        to_bgr_uint8(array)


# ------------------------------------------------------------- property-based


def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return [
        encode(".png", small),
        encode(".png", (small[..., 0].astype(np.uint16) * 257)),
        encode(".png", np.dstack([small, small[..., :1]])),
        encode(".jpg", small),
        encode(".jpg", small, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        encode(".bmp", small),
        encode(".tiff", small),
    ]


SEEDS = _seed_files()
seed_files = st.sampled_from(SEEDS)
truncated = seed_files.flatmap(lambda b: st.integers(0, len(b) - 1).map(lambda n: b[:n]))


@st.composite
def flipped(draw):
    data = bytearray(draw(seed_files))
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


malformed = st.one_of(st.binary(max_size=3000), truncated, flipped())


# A smaller pixel limit keeps the fuzzing light: a flipped size byte can claim millions
# of pixels, and the guard (not OpenCV) should be what refuses them.
@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(malformed)
def test_any_bytes_decode_or_raise_image_read_error(data):
    try:
        out = decode_image(data, max_pixels=1_000_000, name="fuzz.bin")
    except ImageReadError as e:
        assert str(e).startswith("fuzz.bin: ")
    else:
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
        assert out.shape[0] * out.shape[1] <= 1_000_000


# -------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_is_stretched_to_uint8(tmp_path):
    pixels = np.linspace(1000, 3000, 12 * 10).astype(np.uint16).reshape(12, 10)
    path = tmp_path / "scan.dcm"
    path.write_bytes(dicom_bytes(pixels))
    out = read_image(path)
    assert_bgr(out, 12, 10)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert np.all(np.diff(out[..., 0].ravel().astype(int)) >= 0)  # order kept


def test_dicom_detected_by_preamble_without_extension():
    data = dicom_bytes(gradient(6, 9))
    assert data[128:132] == b"DICM"
    assert_bgr(decode_image(data, name="export_0001"), 6, 9)


def test_dicom_monochrome1_is_inverted():
    pixels = gradient(8, 8)
    normal = decode_image(dicom_bytes(pixels, "MONOCHROME2"))
    inverted = decode_image(dicom_bytes(pixels, "MONOCHROME1"))
    np.testing.assert_array_equal(inverted, 255 - normal)


def test_dicom_voi_window_is_applied():
    pixels = np.array([[0, 100, 200, 250, 300, 1000]], np.uint16)
    data = dicom_bytes(pixels, WindowCenter=250, WindowWidth=100)
    row = decode_image(data)[0, :, 0].tolist()
    assert row[0] == row[1] == row[2] == 0  # below the window
    assert row[4] == row[5] == 255  # above the window
    assert 100 < row[3] < 155  # window center lands mid-gray


def test_dicom_rgb_comes_out_bgr():
    rgb = color_bars()[..., ::-1].copy()
    out = decode_image(dicom_bytes(rgb, "RGB"))
    np.testing.assert_array_equal(out, color_bars())


def test_dicom_multiframe_gives_middle_frame():
    frames = np.zeros((5, 6, 6), np.uint8)
    for k in range(5):
        frames[k, k, :] = 200  # frame k has a bright row k
    out = decode_image(dicom_bytes(frames), name="cine.dcm")
    assert_bgr(out, 6, 6)
    assert out[2].min() == 255 and np.delete(out, 2, axis=0).max() == 0


def test_dicom_burned_in_annotation_warns():
    data = dicom_bytes(gradient(4, 4), BurnedInAnnotation="YES")
    with pytest.warns(UserWarning, match="BurnedInAnnotation"):
        assert_bgr(decode_image(data, name="us.dcm"), 4, 4)


def test_dicom_garbage_with_dcm_name_is_image_read_error(tmp_path):
    needs_module("pydicom")
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"this is not dicom at all" * 10)
    with pytest.raises(ImageReadError, match="broken.dcm"):
        read_image(path)


@pytest.mark.parametrize("magic", [b"II+\x00", b"MM\x00+", b"II*\x00", b"MM\x00*"])
def test_tiff_header_with_an_offset_beyond_any_file_is_a_clean_error(magic):
    """Found by `python -m benchmarks.reliability.fuzz`: a BigTIFF header whose first-IFD offset is
    2**64-1 made struct raise OverflowError (not struct.error) in the size parser."""
    data = magic + b"\x08\x00\x00\x00" + b"\xff" * 8 + b"\x00" * 20
    assert image_dimensions(data) is None
    with pytest.raises(ImageReadError, match="not a readable image"):
        decode_image(data, name="x.tif")


def test_huge_file_is_refused_before_reading(tmp_path):
    """A file over MAX_FILE_BYTES is refused from its size alone (a sparse file: no
    gigabyte is written or read)."""
    from runtime.images import MAX_FILE_BYTES

    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageReadError, match="larger than any scan"):
        read_image(path)


def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(path)
