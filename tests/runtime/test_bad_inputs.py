"""Whatever lands in a clinic's folder, `predict_paths` gives one row per file: a valid
prediction or an error reason, never an exception or a dead process. Real model (the
tiny export), real files written to disk."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from runtime.classifier import Classifier
from runtime.images import read_image
from tests.conftest import dicom_bytes, needs_module
from runtime.predict_files import predict_paths

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clf(tiny_export) -> Classifier:
    return Classifier.load(tiny_export, variant="onnx-fp32", threads=1, max_pixels=2_000_000)


def encode(ext: str, image: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def scan_like(height: int = 80, width: int = 96, seed: int = 0) -> np.ndarray:
    """Large and varied enough to pass the runtime's input checks (runtime.input_checks)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width), dtype=np.uint8)
    image[20:50, 24:60] += 150                      # a bright blob
    return image


def cmyk_jpeg() -> bytes:
    Image = needs_module("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(scan_like()).convert("CMYK").save(buf, "JPEG")
    return buf.getvalue()


def colour_photo() -> np.ndarray:
    """A colourful picture: a hue gradient under speckle (BGR)."""
    hue = np.tile(np.linspace(0, 179, 120).astype(np.uint8), (100, 1))
    hsv = np.dstack([hue, np.full_like(hue, 200), scan_like(100, 120) + 40])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def with_doppler_box(image: np.ndarray) -> np.ndarray:
    """A gray scan with a colour-Doppler box: red/blue flow over 15% of the image, and
    a yellow caliper cross, as ultrasound machines draw them."""
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = image.shape
    box = bgr[h // 4:h // 4 + int(h * 0.39), w // 4:w // 4 + int(w * 0.39)]
    flow = np.random.default_rng(3).random(box.shape[:2]) < 0.6
    box[flow] = (40, 40, 220)
    box[flow & (np.arange(box.shape[1]) % 2 == 0)] = (220, 60, 30)
    cv2.drawMarker(bgr, (w // 2, h // 2), (0, 255, 255), cv2.MARKER_CROSS, 12, 1)
    return bgr


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
                                                               np.full((80, 96), 200, np.uint8)])), "ok", ""),
    "cmyk jpeg": ("cmyk.jpg", cmyk_jpeg, "ok", ""),
    "dicom monochrome2": ("scan.dcm", lambda: dicom_bytes(scan_like(), "MONOCHROME2"), "ok", ""),
    "dicom monochrome1": ("inv.dcm", lambda: dicom_bytes(scan_like(), "MONOCHROME1"), "ok", ""),
    "fake dicom": ("fake.dcm", lambda: b"\x00" * 128 + b"DICM" + b"\xff" * 64, "error", "DICOM"),
    "2x2 png": ("tiny.png", lambda: encode(".png", np.zeros((2, 2), np.uint8)), "error", "at least 64 pixels"),
    "63 px high": ("thin.png", lambda: encode(".png", scan_like(63, 200)), "error", "at least 64 pixels"),
    "64 px high": ("just.png", lambda: encode(".png", scan_like(64, 200)), "ok", ""),
    "constant png": ("flat.png", lambda: encode(".png", np.full((300, 300), 90, np.uint8)), "error", "flat colour"),
    "noisy flat jpeg": ("flatjpg.jpg", lambda: encode(".jpg", np.full((300, 300), 90, np.uint8)
                                                      + (scan_like(300, 300) % 3)), "error", "flat colour"),
    "colour photo": ("photo.jpg", lambda: encode(".jpg", colour_photo()), "error", "strongly coloured"),
    "scan with doppler box": ("doppler.png", lambda: encode(".png", with_doppler_box(scan_like())), "error",
                              "colour Doppler overlay: give the B-mode image"),   # issue 20: refused, not classified
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
