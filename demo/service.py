"""What the demo page does, without Gradio: load variants, classify uploaded bytes, list
example images. demo/app.py only wires this to the page, so everything here is usable
(and testable) from plain Python.

Nothing in here raises for a bad image or a variant that can't be served: every
request ends as an `Outcome`, with `error` set to a sentence a user can act on.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtime import heatmap
from runtime.classifier import Classifier
from runtime.dataset import is_mask
from runtime.images import IMAGE_EXTENSIONS, ImageReadError, decode_image
from runtime.manifest import MANIFEST_NAME, Parity, VariantEntry

from demo.config import MAX_EXAMPLES, DemoConfig

log = logging.getLogger("bcd.demo")

DISPLAY_MAX_SIDE = 1024          # images shown on the page are at most this many pixels wide/high
DISPLAY_MIN_SIDE = 320           # ... and smaller ones are enlarged to at least about this
THUMB_SIDE = 160
_TIMING_WINDOW = 50
SUPPORTED = "PNG, JPEG, BMP, TIFF or DICOM"


@dataclass
class Variant:
    """One row of the variant picker."""

    name: str
    status: str                          # "ok" | "failed" | "error"
    format: str
    precision: str
    size_bytes: int | None
    reason: str | None = None
    parity: Parity | None = None
    notes: list[str] = field(default_factory=list)
    has_cam: bool = True

    @property
    def servable(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_entry(cls, entry: VariantEntry) -> "Variant":
        return cls(entry.name, entry.status, entry.format, entry.precision, entry.size_bytes, entry.reason,
                   entry.parity, list(entry.notes), "cam" in entry.outputs)


@dataclass
class Outcome:
    """The result of one request, ready to show."""

    file: str                            # the file's base name (for display only)
    variant: str
    error: str | None = None
    label: str | None = None
    probability: float | None = None
    threshold: float | None = None
    positive: str = "malignant"
    negative: str = "benign"
    seconds: float | None = None         # model inference time
    total_seconds: float | None = None   # decode + preprocess + inference + heatmap
    threads: int | None = None
    image_rgb: np.ndarray | None = field(default=None, repr=False)    # the input as shown (RGB, display size)
    overlay_rgb: np.ndarray | None = field(default=None, repr=False)  # Grad-CAM overlay (RGB, display size)
    notes: list[str] = field(default_factory=list)                    # e.g. DICOM burned-in annotation warning

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def above(self) -> bool | None:
        if self.probability is None or self.threshold is None:
            return None
        return self.probability >= self.threshold

    def to_json(self) -> dict[str, Any]:
        """The machine-readable part (what API clients read)."""
        return {
            "file": self.file,
            "variant": self.variant,
            "label": self.label,
            "probability": self.probability,
            "threshold": self.threshold,
            "decision": None if self.above is None else ("above threshold" if self.above else "below threshold"),
            "inference_ms": None if self.seconds is None else round(self.seconds * 1000, 3),
            "total_ms": None if self.total_seconds is None else round(self.total_seconds * 1000, 3),
            "threads": self.threads,
            "error": self.error,
            "notes": list(self.notes),
        }


class DemoService:
    """Loads the export once, keeps one Classifier per variant, classifies image bytes."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        first = Classifier.load(config.model, variant=config.variant, threads=config.threads,
                                max_pixels=config.max_pixels)
        self.default_variant = first.variant
        self.threshold = first.threshold
        self.positive, self.negative = first.positive, first.negative
        manifest = first.manifest
        # Other variants are loaded from the manifest next to the served file (when there is one).
        self._source: Path | None = (first.info.file.parent / MANIFEST_NAME
                                     if first.info.source == "manifest" else None)
        entries = manifest.variants if (manifest is not None and self._source is not None) else []
        if entries:
            variants = [Variant.from_entry(e) for e in entries]
        else:  # a lone .onnx file with embedded metadata: one variant, no parity figures
            info = first.info
            size = info.file.stat().st_size if info.file.is_file() else None
            variants = [Variant(info.variant, "ok", info.format, info.precision, size, has_cam=first.has_cam)]
        # status ok first (in manifest order), then the ones that can't be served
        self.variants: list[Variant] = sorted(variants, key=lambda v: not v.servable)
        self.baseline: dict[str, Any] = dict(manifest.baseline) if manifest is not None else {}
        self.threshold_info: dict[str, Any] = dict(manifest.threshold) if manifest is not None else {}
        self._classifiers: dict[str, Classifier] = {first.variant: first}
        self._load_errors: dict[str, str] = {}
        self._load_lock = threading.Lock()
        self._timings: dict[str, deque[float]] = {v.name: deque(maxlen=_TIMING_WINDOW) for v in self.variants}
        self._timing_lock = threading.Lock()
        self.examples: list[Path] = list_examples(config.examples) if config.examples is not None else []

    # ------------------------------------------------------------------ variants

    def variant(self, name: str | None) -> Variant | None:
        for v in self.variants:
            if v.name == name:
                return v
        return None

    def classifier(self, name: str) -> Classifier:
        """The cached Classifier of a servable variant (loaded on first use). Raises
        ValueError with a user-facing reason when it can't be served."""
        variant = self.variant(name)
        if variant is None:
            raise ValueError(f"there is no variant {name!r} in this export")
        if not variant.servable:
            why = f" ({variant.reason})" if variant.reason else ""
            raise ValueError(f"variant {name} did not pass the export's checks against the original model{why}, "
                             "so it is not served. Pick a variant marked ok.")
        cached = self._classifiers.get(name)     # loaded ones never wait for another variant's load
        if cached is not None:
            return cached
        with self._load_lock:
            if name in self._classifiers:
                return self._classifiers[name]
            if name in self._load_errors:
                raise ValueError(self._load_errors[name])
            try:
                clf = Classifier.load(self._source, variant=name, threads=self.config.threads,
                                      max_pixels=self.config.max_pixels)
            except Exception as err:  # noqa: BLE001 - shown on the page, the app keeps serving
                log.warning("variant %s could not be loaded: %s", name, err)
                self._load_errors[name] = f"variant {name} could not be loaded: {err}"
                raise ValueError(self._load_errors[name]) from None
            self._classifiers[name] = clf
            return clf

    def median_ms(self, name: str) -> tuple[float | None, int]:
        """Median inference time of the recent requests on this machine, and how many."""
        with self._timing_lock:
            times = list(self._timings.get(name, ()))
        return (statistics.median(times) * 1000 if times else None), len(times)

    def close(self) -> None:
        with self._load_lock:
            for clf in self._classifiers.values():
                clf.close()
            self._classifiers.clear()

    # ------------------------------------------------------------------ classifying

    def classify_bytes(self, data: bytes, name: str, variant: str | None = None) -> Outcome:
        """Decode and classify one uploaded file; never raises for bad input."""
        started = time.perf_counter()
        variant = variant or self.default_variant
        name = Path(str(name or "image")).name or "image"
        outcome = Outcome(file=name, variant=variant, threshold=self.threshold, positive=self.positive,
                          negative=self.negative)
        try:
            clf = self.classifier(variant)
        except ValueError as err:
            outcome.error = _sentence(str(err))
            return outcome
        outcome.threads = clf.threads
        try:
            image, notes = _decode(data, name, self.config.max_pixels)
        except ImageReadError as err:
            reason = _strip_name(str(err), name)
            outcome.error = f"This file could not be used: {reason}."
            if "supported:" not in reason:
                outcome.error += f" Please upload a {SUPPORTED} image."
            return outcome
        except MemoryError:
            outcome.error = "This image is too large to open on this computer."
            return outcome
        outcome.notes = notes
        pred = clf.predict_decoded([image], [name], with_cam=True)[0]
        if not pred.ok:
            outcome.error = f"The model could not classify this image: {_strip_name(pred.error or '', name)}."
            return outcome
        outcome.label, outcome.probability, outcome.seconds = pred.label, pred.probability, pred.seconds
        outcome.threshold = pred.threshold
        display = _display_size(image)
        outcome.image_rgb = cv2.cvtColor(display, cv2.COLOR_BGR2RGB)
        if pred.cam is not None:
            over = heatmap.overlay(display, pred.cam)   # the map is resized to the display image
            outcome.overlay_rgb = cv2.cvtColor(over, cv2.COLOR_BGR2RGB)
            if float(np.max(pred.cam)) <= 0.0:
                outcome.notes.append("The Grad-CAM map is empty for this image: no region pushed the score "
                                     "towards malignant, so the overlay is uniformly blue.")
        else:
            outcome.notes.append(f"Variant {variant} has no Grad-CAM output, so no heatmap is shown.")
        if pred.seconds is not None:
            with self._timing_lock:
                self._timings.setdefault(variant, deque(maxlen=_TIMING_WINDOW)).append(pred.seconds)
        outcome.total_seconds = time.perf_counter() - started
        return outcome

    # ------------------------------------------------------------------ examples

    def example_thumbnails(self) -> list[tuple[np.ndarray, str]]:
        """(RGB thumbnail, caption) per example; files that don't decode are left out of
        the list shown, but keep their index (a placeholder is shown)."""
        thumbs = []
        for path in self.examples:
            try:
                image = decode_image(path.read_bytes(), self.config.max_pixels, name=path.name)
                thumb = _fit(image, THUMB_SIDE)
            except (ImageReadError, OSError, MemoryError):
                thumb = np.full((THUMB_SIDE, THUMB_SIDE, 3), 40, np.uint8)
            thumbs.append((cv2.cvtColor(thumb, cv2.COLOR_BGR2RGB), path.name))
        return thumbs

    def read_example(self, index: int) -> tuple[bytes, str]:
        """The bytes of example `index`, re-checked to lie inside the examples folder."""
        if not 0 <= index < len(self.examples):
            raise ValueError("no such example")
        root = Path(self.config.examples).resolve()
        path = self.examples[index].resolve()
        if not _inside(path, root) or not path.is_file():
            raise ValueError("that example is no longer available")
        return path.read_bytes(), path.name


# ---------------------------------------------------------------------- helpers


def list_examples(folder: str | Path, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Image files inside `folder` (searched recursively, sorted, lesion masks skipped).
    Symlinks that lead outside the folder are ignored."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"examples folder not found: {root}")
    root = root.resolve()
    found: list[Path] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or is_mask(path):
            continue
        real = path.resolve()
        if not _inside(real, root) or not real.is_file():
            continue
        found.append(path)
        if len(found) >= limit:
            break
    return found


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# DICOM decoding can warn that the pixels carry burned-in patient data. Warnings are
# caught with a process-wide context manager, so DICOM decodes are serialised.
_warn_lock = threading.Lock()


def _decode(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    maybe_dicom = data[128:132] == b"DICM" or name.lower().endswith(".dcm")
    if not maybe_dicom:
        return decode_image(data, max_pixels, name=name), []
    with _warn_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = decode_image(data, max_pixels, name=name)
    return image, [_strip_name(str(w.message), name) for w in caught]


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _display_size(image: np.ndarray) -> np.ndarray:
    """Large images are shrunk for the page; small ones are enlarged (nearest neighbour,
    so the pixels stay honest) to be visible beside the heatmap."""
    h, w = image.shape[:2]
    if max(h, w) < DISPLAY_MIN_SIDE:
        factor = DISPLAY_MIN_SIDE // max(h, w) + 1
        return cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST)
    return _fit(image, DISPLAY_MAX_SIDE)


def _strip_name(message: str, name: str) -> str:
    """runtime messages start with '<name>: '; the page already shows the file name."""
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if text else text
