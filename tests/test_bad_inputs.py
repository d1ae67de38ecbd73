"""Whatever lands in a clinic's folder, `predict_paths` gives one row per file: a valid
prediction or an error reason, never an exception or a dead process. Real model (the
tiny export), real files written to disk."""
from __future__ import annotations

import io
import itertools
import math

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.classifier import Classifier
from runtime.images import read_image
from tests.conftest import dicom_bytes
from runtime.predict_files import predict_paths

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clf(tiny_export) -> Classifier:
    return Classifier.load(tiny_export, variant="onnx-fp32", threads=1, max_pixels=2_000_000)


def encode(ext: str, image: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def scan_like(height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width), dtype=np.uint8)
    image[10:25, 12:30] += 150                      # a bright blob
    return image


def cmyk_jpeg() -> bytes:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.new("CMYK", (48, 40), (0, 120, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 1000)
    return PNG + chunk + struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))


CASES = {
    # name: (file name, bytes factory, expected outcome: "ok", "error" or "either", error text)
    "not an image": ("report.png", lambda: b"Patient report\n" * 20, "error", "not a readable image"),
    "empty": ("empty.png", lambda: b"", "error", "empty file"),
    "truncated png": ("cut.png", lambda: encode(".png", scan_like())[:200], "error", "not a readable image"),
    "truncated jpeg": ("cut.jpg", lambda: encode(".jpg", scan_like())[:300], "either", ""),
    "bomb header": ("bomb.png", bomb_png, "error", "decompression bomb"),
    "16-bit png": ("deep.png", lambda: encode(".png", scan_like().astype(np.uint16) * 257), "ok", ""),
    "grayscale png": ("gray.png", lambda: encode(".png", scan_like()), "ok", ""),
    "rgba png": ("rgba.png", lambda: encode(".png", np.dstack([np.dstack([scan_like()] * 3),
                                                               np.full((40, 48), 200, np.uint8)])), "ok", ""),
    "cmyk jpeg": ("cmyk.jpg", cmyk_jpeg, "ok", ""),
    "dicom monochrome2": ("scan.dcm", lambda: dicom_bytes(scan_like(), "MONOCHROME2"), "ok", ""),
    "dicom monochrome1": ("inv.dcm", lambda: dicom_bytes(scan_like(), "MONOCHROME1"), "ok", ""),
    "fake dicom": ("fake.dcm", lambda: b"\x00" * 128 + b"DICM" + b"\xff" * 64, "error", "DICOM"),
    "gif": ("anim.gif", lambda: b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 20, "error", "not a readable image"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_and_odd_files(clf, tmp_path, case):
    name, make, expected, text = CASES[case]
    path = tmp_path / name
    path.write_bytes(make())
    [row] = predict_paths(clf, [path])
    assert row.path == str(path)
    if row.ok:
        assert expected in ("ok", "either"), f"{case} unexpectedly decoded"
        assert 0.0 <= row.probability <= 1.0 and row.label in ("benign", "malignant")
    else:
        assert expected in ("error", "either"), row.error
        assert row.error.startswith(f"{path}: ") and text in row.error
        assert row.label is None and row.probability is None


def test_all_bad_files_in_one_batch(clf, tmp_path):
    """Mixed in one call (batches of 4): bad files do not disturb the good ones."""
    paths = []
    for case, (name, make, _, _) in CASES.items():
        path = tmp_path / name
        path.write_bytes(make())
        paths.append(path)
    (tmp_path / "folder.png").mkdir()                  # a directory with an image name
    paths.append(tmp_path / "folder.png")
    together = {r.path: r for r in predict_paths(clf, paths, batch_size=4)}
    assert len(together) == len(paths)
    assert "folder contains no image files" in together[str(tmp_path / "folder.png")].error
    for path in paths[:-1]:
        [alone] = predict_paths(clf, [path])
        assert together[str(path)].ok == alone.ok
        if alone.ok:
            assert together[str(path)].probability == pytest.approx(alone.probability, abs=1e-7)


def test_dicom_monochrome1_is_inverted_before_the_model(clf, tmp_path):
    """A MONOCHROME1 file (white = low values) must reach the model as the inverted
    image, i.e. exactly like a PNG of 255 - pixels; MONOCHROME2 like the pixels."""
    pixels = scan_like()
    pixels[0, 0], pixels[-1, -1] = 0, 255               # full range: the DICOM stretch is the identity
    (tmp_path / "m1.dcm").write_bytes(dicom_bytes(pixels, "MONOCHROME1"))
    (tmp_path / "m2.dcm").write_bytes(dicom_bytes(pixels, "MONOCHROME2"))
    cv2.imwrite(str(tmp_path / "inverted.png"), 255 - pixels)
    cv2.imwrite(str(tmp_path / "plain.png"), pixels)
    rows = {r.path.rsplit("/", 1)[-1]: r for r in predict_paths(clf, [tmp_path])}
    assert all(r.ok for r in rows.values())
    assert rows["m1.dcm"].probability == pytest.approx(rows["inverted.png"].probability, abs=1e-7)
    assert rows["m2.dcm"].probability == pytest.approx(rows["plain.png"].probability, abs=1e-7)
    np.testing.assert_array_equal(read_image(tmp_path / "m1.dcm")[..., 0], 255 - pixels)


# ------------------------------------------------------------------------ fuzzing


def _bases() -> list[bytes]:
    image = scan_like(24, 30)
    color = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    bases = [
        encode(".png", image), encode(".png", color), encode(".png", image.astype(np.uint16) * 257),
        encode(".jpg", color), encode(".jpg", image, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        encode(".bmp", color), encode(".tiff", color), encode(".tiff", image.astype(np.uint16)),
    ]
    try:
        bases.append(dicom_bytes(image, "MONOCHROME2"))
        bases.append(dicom_bytes(image.astype(np.uint16) * 100, "MONOCHROME1"))
    except pytest.skip.Exception:
        pass
    return bases


BASES = _bases()
EXTENSIONS = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".dcm", ".bin", ""]


@st.composite
def malformed_files(draw) -> tuple[bytes, str]:
    """A valid small image of some format, damaged: cut short, bytes overwritten
    (header fields included), a block duplicated; or plain random bytes."""
    ext = draw(st.sampled_from(EXTENSIONS))
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=0, max_size=400)), ext
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, 6))):
        # bias writes towards headers, where sizes and lengths live
        limit = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 200)
        position = draw(st.integers(0, limit))
        data[position:position + 4] = draw(st.binary(min_size=1, max_size=4))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 4)) == 0 and len(data) > 20:
        start = draw(st.integers(0, len(data) - 10))
        data = data[:start] + data[start:start + 10] * draw(st.integers(2, 50)) + data[start:]
    return bytes(data), ext


def test_fuzzed_files_end_as_rows(clf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    counter = itertools.count()
    outcomes = {"ok": 0, "error": 0}

    @settings(max_examples=250, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(malformed_files())
    def check(case):
        data, ext = case
        path = folder / f"f{next(counter):04d}{ext}"
        path.write_bytes(data)
        rows = predict_paths(clf, [path])
        assert len(rows) == 1 and rows[0].path == str(path)
        row = rows[0]
        if row.ok:
            assert row.error is None and row.label in ("benign", "malignant")
            assert math.isfinite(row.probability) and 0.0 <= row.probability <= 1.0
            outcomes["ok"] += 1
        else:
            assert row.label is None and row.probability is None
            assert isinstance(row.error, str) and row.error.startswith(f"{path}: ")
            assert "Traceback" not in row.error
            outcomes["error"] += 1

    check()
    assert next(counter) >= 200
    assert outcomes["ok"] > 0 and outcomes["error"] > 0     # the generator reaches both outcomes
