"""Fuzz image decoding and prediction: many generated files through `predict_paths`,
each of which must end as a prediction or a clear error row, in bounded time and memory.

    python -m benchmarks.reliability.fuzz --inputs 10000 [--model EXPORT] [--out fuzz.json]

Inputs (drawn by hypothesis, seeded, so a run is repeatable):
- random bytes, with and without a real format's magic number in front;
- real PNG (8/16-bit, gray, colour, RGBA, palette, 1-bit), JPEG (baseline, progressive),
  BMP, TIFF (8/16-bit, float) and DICOM (MONOCHROME1/2) files -- generated scan-like
  images, plus real BUSI scans when ../shared/data/busi exists -- cut short, bit-flipped,
  overwritten (biased to the header, where sizes and lengths live) or with a block repeated;
- extreme shapes: 1x1, 1xN, Nx1, one pixel under and over the size check;
- headers that claim huge sizes (PNG IHDR with a valid CRC, JPEG SOF, BMP, TIFF, DICOM).

Every file gets a random extension (or the wrong one). Each input has a time bound
(--timeout, default 20 s): past it, faulthandler prints where the process is stuck and
kills it, so a hang fails the run. The peak resident memory is recorded; the run fails
past --max-rss-mb (default 3000). An exception escaping predict_paths or an error row
written by its catch-all handler ("cannot read (SomeError: ...)", i.e. a decoder bug
that was contained, not a clear error) is counted as a crash. Exit status 0 only if
there were none.

tests/benchmarks/test_fuzz.py runs a few hundred of the same inputs in CI.
"""
from __future__ import annotations

import argparse
import faulthandler
import io
import re
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from runtime.host import peak_rss_mib, reset_peak_rss  # noqa: F401 - reset_peak_rss is part of the harness API

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "busi"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".bin", "", ".PNG")
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00", b"\x00" * 128 + b"DICM")

# Error kinds, in the order they are tried; the first pattern found names the kind.
KINDS = (
    ("crash: unexpected exception", r"cannot (read|prepare it) \(\w+(Error|Exception)?:"),
    ("inference failed", r"inference failed|non-finite probability"),
    ("refused: too small", r"refused, not a usable ultrasound scan: the image is only"),
    ("refused: flat", r"refused, not a usable ultrasound scan: the image is \(nearly\)"),
    ("refused: coloured", r"refused, not a usable ultrasound scan: .* strongly coloured"),
    ("refused: colour overlay", r"overlay: give the B-mode image"),
    ("too many pixels", r"over the limit"),
    ("empty file", r"empty file"),
    ("DICOM", r"DICOM"),
    ("not a readable image", r"not a readable image|unsupported|NaN or infinite|empty image"),
    ("not enough memory", r"not enough memory"),
)


def error_kind(message: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, message):
            return kind
    return "other: " + message.split(": ", 1)[-1][:60]


# ----------------------------------------------------------------------- base files


def encode(ext: str, image: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise ValueError(f"cv2 cannot encode {ext}")
    return buf.tobytes()


def scan_like(height: int = 80, width: int = 96, seed: int = 0) -> np.ndarray:
    """A gray image that passes the input checks: speckle with a bright blob."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width), dtype=np.uint8)
    image[height // 4:height // 2, width // 4:width // 2] += 150
    return image


def dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs) -> bytes | None:
    """A small uncompressed ultrasound DICOM file with extra attributes (None without
    pydicom). The tests build their DICOM files here too."""
    try:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid
    except ImportError:
        return None
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.set_pixel_data(pixels, photometric, 8 if pixels.dtype == np.uint8 else 16)
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _pil(image: np.ndarray, mode: str, fmt: str = "PNG") -> bytes | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, fmt)
    return buf.getvalue()


def base_files() -> list[bytes]:
    """Valid files of every supported format and depth; the mutations start from these."""
    gray = scan_like()
    colour = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    rgba = np.dstack([colour, np.full(gray.shape, 200, np.uint8)])
    bases = [
        encode(".png", gray), encode(".png", colour), encode(".png", rgba), encode(".png", gray.astype(np.uint16) * 257),
        encode(".jpg", colour), encode(".jpg", gray, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        encode(".bmp", colour), encode(".tiff", colour), encode(".tiff", gray.astype(np.uint16) * 200),
        encode(".tiff", gray.astype(np.float32) / 255.0),
        _pil(gray, "P"), _pil(gray, "1"), _pil(gray, "L", "TIFF"),
        dicom(gray, "MONOCHROME2"), dicom(gray.astype(np.uint16) * 100, "MONOCHROME1"),
    ]
    real = sorted(DATA.glob("*/*).png"))[:3] if DATA.is_dir() else []
    for path in real:                                  # a few real scans, re-encoded smaller
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is not None:
            small = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)
            bases += [encode(".png", small), encode(".jpg", small), dicom(small, "MONOCHROME2")]
    return [b for b in bases if b]


# ----------------------------------------------------------------------- hostile headers


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(".jpg", scan_like()))
    i = data.find(b"\xff\xc0")
    if i > 0:
        struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(".bmp", cv2.cvtColor(scan_like(), cv2.COLOR_GRAY2BGR)))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(".tiff", scan_like()))
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    count = struct.unpack_from(order + "H", data, ifd)[0]
    for k in range(count):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):
            struct.pack_into(order + "HHII", data, entry, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def dicom_claiming(rows: int, columns: int) -> bytes | None:
    data = dicom(scan_like(), "MONOCHROME2")
    if data is None:
        return None
    out = bytearray(data)
    for tag, value in ((b"\x28\x00\x10\x00", rows), (b"\x28\x00\x11\x00", columns)):   # (0028,0010/0011) US
        i = out.find(tag + b"US")
        if i > 0:
            struct.pack_into("<H", out, i + 8, value)
    return bytes(out)


CLAIMS = (png_claiming, jpeg_claiming, bmp_claiming, tiff_claiming, dicom_claiming)
_FIELD_MAX = {jpeg_claiming: 65535, dicom_claiming: 65535, bmp_claiming: 2**31 - 1}   # what the header field holds


def claiming(make, width: int, height: int) -> bytes | None:
    top = _FIELD_MAX.get(make, 2**32 - 1)
    return make(min(width, top), min(height, top))


def extreme_shape(height: int, width: int, fmt: str) -> bytes:
    rng = np.random.default_rng(height * 7919 + width)
    image = rng.integers(0, 256, (height, width), dtype=np.uint8)
    return encode(fmt, image)


# ----------------------------------------------------------------------- the strategy


def inputs_strategy():
    """A hypothesis strategy of (file bytes, extension, how it was made)."""
    from hypothesis import strategies as st

    bases = base_files()

    @st.composite
    def damaged(draw):
        data = bytearray(draw(st.sampled_from(bases)))
        how = []
        for _ in range(draw(st.integers(0, 3))):        # bit flips anywhere
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
            how.append("bitflip")
        for _ in range(draw(st.integers(0, 3))):        # overwrites, biased towards the header
            limit = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 300)
            pos = draw(st.integers(0, limit))
            data[pos:pos + 4] = draw(st.binary(min_size=1, max_size=4))
            how.append("overwrite")
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data)))]
            how.append("truncated")
        if draw(st.integers(0, 5)) == 0 and len(data) > 20:
            start = draw(st.integers(0, len(data) - 10))
            data = data[:start] + data[start:start + 10] * draw(st.integers(2, 50)) + data[start:]
            how.append("repeated block")
        return bytes(data), "damaged " + ("+".join(sorted(set(how))) or "none (valid)")

    random_bytes = st.one_of(
        st.binary(min_size=0, max_size=2000).map(lambda b: (b, "random bytes")),
        st.tuples(st.sampled_from(MAGIC), st.binary(max_size=2000)).map(lambda t: (t[0] + t[1], "magic + random")),
    )
    side = st.sampled_from([1, 2, 63, 64, 65, 300, 5000, 20000, 70000, 2**31 - 1, 2**32 - 1])
    claims = st.tuples(st.sampled_from(CLAIMS), side, side).map(
        lambda t: (claiming(*t), "header claims a size"))
    shapes = st.tuples(st.sampled_from([1, 2, 63, 64, 65]), st.sampled_from([1, 64, 3000]),
                       st.sampled_from([".png", ".bmp", ".tiff", ".jpg"])).map(
        lambda t: (extreme_shape(*t), "extreme shape"))
    valid = st.sampled_from(bases).map(lambda b: (b, "valid file"))
    entries = st.one_of(damaged(), damaged(), damaged(), valid, random_bytes, claims, shapes)
    return st.tuples(entries, st.sampled_from(EXTENSIONS)).map(lambda t: (t[0][0] or b"", t[1], t[0][1]))


# ----------------------------------------------------------------------- running


@dataclass
class FuzzReport:
    inputs: int = 0
    predictions: int = 0
    errors: Counter = field(default_factory=Counter)
    made_by: Counter = field(default_factory=Counter)
    crashes: list = field(default_factory=list)
    slowest_seconds: float = 0.0
    slowest_input: str = ""
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    start_rss_mb: float = 0.0

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "predictions": self.predictions, "errors_by_kind": dict(self.errors.most_common()),
                "inputs_by_generator": dict(self.made_by.most_common()), "crashes": len(self.crashes),
                "crash_examples": self.crashes[:20], "slowest_input_seconds": round(self.slowest_seconds, 3),
                "slowest_input": self.slowest_input, "total_seconds": round(self.seconds, 1),
                "peak_rss_mb": round(self.peak_rss_mb, 1), "rss_before_first_input_mb": round(self.start_rss_mb, 1)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset_peak_rss()."""
    return peak_rss_mib() or 0.0


def run(classifier, n: int, folder: Path, timeout: float = 20.0, seed: int = 0) -> FuzzReport:
    """Feed `n` generated files through predict_paths; see the module text."""
    from hypothesis import HealthCheck, given, seed as hseed, settings

    from runtime.predict_files import predict_paths

    reset_peak_rss()
    report = FuzzReport(start_rss_mb=peak_rss_mb())
    started = time.perf_counter()

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=("generate",),
              suppress_health_check=list(HealthCheck))
    @given(inputs_strategy())
    def one(case):
        data, ext, how = case
        path = folder / f"in{report.inputs:05d}{ext}"
        path.write_bytes(data)
        report.inputs += 1
        report.made_by[how.split(" ")[0] if how.startswith("damaged") else how] += 1
        faulthandler.dump_traceback_later(timeout, exit=True)   # a hang kills the run, with a traceback
        t0 = time.perf_counter()
        try:
            rows = predict_paths(classifier, [path])
        except BaseException as err:  # noqa: BLE001 - counted, the run goes on
            report.crashes.append(f"{how} {ext}: {err.__class__.__name__}: {err}"[:300])
            rows = []
        finally:
            faulthandler.cancel_dump_traceback_later()
        elapsed = time.perf_counter() - t0
        if elapsed > report.slowest_seconds:
            report.slowest_seconds, report.slowest_input = elapsed, f"{how}, {len(data):,} bytes, '{ext}'"
        for row in rows:
            if row.ok:
                report.predictions += 1
                continue
            kind = error_kind(row.error or "")
            report.errors[kind] += 1
            if kind.startswith("crash") or not (row.error or "").startswith(f"{path}: "):
                report.crashes.append(f"{how} {ext}: {row.error}"[:300])
        if len(rows) != 1:
            report.crashes.append(f"{how} {ext}: {len(rows)} rows instead of 1")
        path.unlink()

    one()
    report.seconds = time.perf_counter() - started
    report.peak_rss_mb = peak_rss_mb()
    return report


def markdown(report: FuzzReport, command: str) -> str:
    d = report.to_dict()
    lines = [f"`{command}`", "", f"- inputs tried: {d['inputs']:,} ({d['total_seconds']} s)",
             f"- predictions: {d['predictions']:,}; error rows: {sum(report.errors.values()):,}",
             f"- crashes: {d['crashes']}", f"- slowest input: {d['slowest_input_seconds']} s ({d['slowest_input']})",
             f"- peak memory (max RSS of the process): {d['peak_rss_mb']} MB "
             f"({d['rss_before_first_input_mb']} MB with the model loaded, before the first input)", "",
             "| error kind | rows |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in report.errors.most_common()]
    lines += ["", "| generator | inputs |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in report.made_by.most_common()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--model", type=Path, help="export directory (default: the shipped reference model)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds allowed per input (default 20)")
    parser.add_argument("--max-rss-mb", type=float, default=3000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)

    from runtime.classifier import Classifier
    from runtime.shipped import default_model_path

    faulthandler.enable()
    model = args.model or default_model_path()
    if model is None:
        parser.error("no model: pass --model EXPORT_DIR")
    classifier = Classifier.load(model, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="bcd-fuzz-") as tmp:
        report = run(classifier, args.inputs, Path(tmp), args.timeout, args.seed)
    command = "python -m benchmarks.reliability.fuzz " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(report, command.strip()))
    if args.out is not None:
        from runtime import atomic
        atomic.write_json(args.out, {"command": command.strip(), "model": str(model), **report.to_dict()})
    over = report.peak_rss_mb > args.max_rss_mb
    if over:
        print(f"FAIL: peak memory {report.peak_rss_mb:.0f} MB over --max-rss-mb {args.max_rss_mb:.0f}")
    if report.crashes:
        print("FAIL: crashes:\n" + "\n".join(report.crashes[:20]))
    return 1 if report.crashes or over else 0


if __name__ == "__main__":
    raise SystemExit(main())
