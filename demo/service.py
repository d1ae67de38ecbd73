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
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtime import atomic, gradcam
from runtime.classifier import Classifier, Prediction
from runtime.dataset import is_mask
from runtime.images import IMAGE_EXTENSIONS, ImageReadError, decode_image, looks_like_dicom
from runtime.input_checks import REFUSED
from runtime.lesion_box import Box
from runtime.report import report_html, report_name
from runtime.roi import AUTO, roi_request
from runtime.scan_crop import RegionSetting
from runtime.scan_input import DecodedScan, decode_scan
from runtime.scan_region import ScanRegion
from runtime.manifest import MANIFEST_NAME, Parity, VariantEntry, read_manifest
from runtime.model_files import sha256_file
from runtime.site_adapt import adaptation_note
from runtime.site_profile import SiteProfile, read_profile

from demo.config import MAX_EXAMPLES, DemoConfig

log = logging.getLogger("bcd.demo")

DISPLAY_MAX_SIDE = 1024          # images shown on the page are at most this many pixels wide/high
DISPLAY_MIN_SIDE = 320           # ... and smaller ones are enlarged to at least about this
THUMB_SIDE = 160
_TIMING_WINDOW = 50
SUPPORTED = "PNG, JPEG, BMP, TIFF or DICOM"


SEP = " · "                      # between a model's name and a variant's in the picker


@dataclass
class Variant:
    """One row of the variant picker."""

    name: str                            # the variant's name in its manifest, e.g. "onnx-int8"
    status: str                          # "ok" | "failed" | "error"
    format: str
    precision: str
    size_bytes: int | None
    reason: str | None = None
    parity: Parity | None = None
    notes: list[str] = field(default_factory=list)
    has_cam: bool = True
    model: str = ""                      # the name of the model (export) it belongs to
    key: str = ""                        # the picker's value: the name with one model, "MODEL · NAME" with several
    site: SiteProfile | None = None      # the site profile this variant's calls use (None: the export's threshold)

    def __post_init__(self) -> None:
        self.key = self.key or self.name

    @property
    def servable(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_entry(cls, entry: VariantEntry) -> "Variant":
        return cls(entry.name, entry.status, entry.format, entry.precision, entry.size_bytes, entry.reason,
                   entry.parity, list(entry.notes), "cam" in entry.outputs)


@dataclass
class Model:
    """One export served by the page, with the settings its variants share."""

    name: str                            # the export folder's name, e.g. "bus-vgg16-w50-128-slim30"
    path: Path
    threshold: float                     # this model's operating threshold
    positive: str
    negative: str
    threshold_info: dict[str, Any] = field(default_factory=dict)   # manifest "threshold": value, chosen_on, policy
    baseline: dict[str, Any] = field(default_factory=dict)         # the Keras model on the parity data
    cost: dict[str, Any] | None = None   # {"macs", "params"} of the source Keras model, when recorded
    source: Path | None = None           # the manifest other variants are loaded from (None: a lone .onnx)
    default_variant: str = ""            # key of the variant loaded first
    adapted: str = ""                    # runtime.site_adapt.adaptation_note: "" unless `bcd adapt` made it


@dataclass
class Outcome:
    """The result of one request, ready to show."""

    file: str                            # the file's base name (for display only)
    variant: str                         # the picker's value (with several models "MODEL · VARIANT")
    model: str | None = None             # the model (export) the variant belongs to
    error: str | None = None
    label: str | None = None
    probability: float | None = None
    threshold: float | None = None
    positive: str = "malignant"
    negative: str = "benign"
    seconds: float | None = None         # model inference time
    total_seconds: float | None = None   # decode + preprocess + inference + heatmap
    threads: int | None = None
    site: str | None = None              # name of the site profile whose operating point made the call
    engine: str | None = None            # onnxruntime | openvino | litert
    image_rgb: np.ndarray | None = field(default=None, repr=False)    # the input as shown (RGB, display size)
    overlay_rgb: np.ndarray | None = field(default=None, repr=False)  # Grad-CAM overlay (RGB, display size)
    notes: list[str] = field(default_factory=list)                    # e.g. DICOM burned-in annotation warning
    out_of_distribution: bool | None = None  # True: far from the training images (None: the model has no OOD score)
    ood_score: float | None = None
    region: dict[str, Any] | None = None     # the box classified (Prediction.region.to_dict()), drawn on the images
    frames: dict[str, Any] | None = None     # a cine loop's frames and their probabilities (Prediction.frames)
    # The lesion box (issue 21), in the original image's pixels: `roi` the one classified
    # (Prediction.roi_dict(): x, y, width, height, source; None: the whole scan region),
    # `proposed` the box proposed for the image (drawn, unused, when the call is for the
    # whole scan region; its x.. are None when nothing was proposed).
    roi: dict[str, Any] | None = None
    proposed: dict[str, Any] | None = None
    roi_error: bool = False                  # `error` is about the box asked for: the page keeps its last result
    box_dropped: str | None = None           # why the box asked for gave way to the whole scan region (rerun fallback)
    prediction: Prediction | None = field(default=None, repr=False)   # for the report
    picture: np.ndarray | None = field(default=None, repr=False)      # the decoded image (BGR, original pixels)

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
            "model": self.model,
            "label": self.label,
            "probability": self.probability,
            "threshold": self.threshold,
            "decision": None if self.above is None else ("above threshold" if self.above else "below threshold"),
            "inference_ms": None if self.seconds is None else round(self.seconds * 1000, 3),
            "total_ms": None if self.total_seconds is None else round(self.total_seconds * 1000, 3),
            "threads": self.threads,
            "site_profile": self.site,
            "engine": self.engine,
            "out_of_distribution": self.out_of_distribution,
            "ood_score": self.ood_score,
            "error": self.error,
            "notes": list(self.notes),
            "region": self.region,
            "frames": self.frames,
            "roi": self.roi,
            "proposed_roi": self.proposed,
        }


class DemoService:
    """Loads one or several exports once, keeps one Classifier per variant, classifies
    image bytes. Every model keeps its own threshold, labels, baseline and parity figures;
    a variant is named by its picker key (`Variant.key`)."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        paths = _unique_paths(config.models)
        names = _model_names(paths)
        self.multi = len(paths) > 1
        # A site profile belongs to one model file: (model index, variant name) it applies to
        self.site = read_profile(config.site) if config.site is not None else None
        self._site_for = _site_match(paths, self.site) if self.site is not None else None
        if self._site_for is not None and config.variant is None:   # the page opens on the calibrated variant
            target, wanted = self._site_for
        else:
            target, wanted = self._wanted(config.variant, names)
        self.models: list[Model] = []
        self._classifiers: dict[str, Classifier] = {}
        variants: list[Variant] = []
        try:
            for i, (path, name) in enumerate(zip(paths, names)):
                first = Classifier.load(path, variant=wanted if i == target else None, threads=config.threads,
                                        max_pixels=config.max_pixels, backend=config.backend)
                self._use_site(i, first)
                model, found = self._describe(name, path, first)
                for v in found:
                    v.site = self.site if self._site_for == (i, v.name) else None
                self.models.append(model)
                variants += found
                self._classifiers[model.default_variant] = first
        except Exception:
            self.close()
            raise
        # status ok first (models in the order given, variants in manifest order), then those that can't be served
        self.variants: list[Variant] = sorted(variants, key=lambda v: not v.servable)
        self.default_variant = self.models[target].default_variant
        self._load_errors: dict[str, str] = {}
        self._load_lock = threading.Lock()
        self._timings: dict[str, deque[float]] = {v.key: deque(maxlen=_TIMING_WINDOW) for v in self.variants}
        self._timing_lock = threading.Lock()
        self.examples: list[Path] = list_examples(config.examples) if config.examples is not None else []

    def _use_site(self, model_index: int, clf: Classifier) -> None:
        if self._site_for == (model_index, clf.variant):
            clf.use_site(self.site)              # checks the file's sha256 once more

    def _wanted(self, variant: str | None, names: list[str]) -> tuple[int, str | None]:
        """(index of the model, variant name) that config.variant asks to be selected first."""
        if variant is None or not self.multi:
            return 0, variant
        for i, name in enumerate(names):
            if variant.startswith(name + SEP):
                return i, variant[len(name + SEP):].split(SEP)[0]
        return 0, variant

    def _describe(self, name: str, path: Path, first: Classifier) -> tuple[Model, list[Variant]]:
        manifest = first.manifest
        # Other variants are loaded from the manifest next to the served file (when there is one).
        source = first.info.file.parent / MANIFEST_NAME if first.info.source == "manifest" else None
        entries = manifest.variants if (manifest is not None and source is not None) else []
        if entries:
            variants = [Variant.from_entry(e) for e in entries]
        else:  # a lone .onnx file with embedded metadata: one variant, no parity figures
            info = first.info
            size = info.file.stat().st_size if info.file.is_file() else None
            variants = [Variant(info.variant, "ok", info.format, info.precision, size, has_cam=first.has_cam)]
        for v in variants:
            v.model = name
            v.key = f"{name}{SEP}{v.name}" if self.multi else v.name
        cost = getattr(manifest, "model_cost", None) if manifest is not None else None
        # the export's own threshold (a site profile, if any, changes only its own variant's calls)
        threshold = manifest.threshold_value if manifest is not None else first.threshold
        model = Model(name=name, path=path, threshold=threshold, positive=first.positive,
                      negative=first.negative,
                      threshold_info=dict(manifest.threshold) if manifest is not None else {},
                      baseline=dict(manifest.baseline) if manifest is not None else {},
                      cost=dict(cost) if isinstance(cost, dict) else None, source=source,
                      default_variant=f"{name}{SEP}{first.variant}" if self.multi else first.variant,
                      adapted=adaptation_note(manifest.training_data if manifest is not None else None))
        return model, variants

    # ------------------------------------------------------------------ variants

    def variant(self, name: str | None) -> Variant | None:
        """The variant a picker value, a label shown in the picker or (for old API clients)
        a bare variant name of the first model that has it refers to; None if none."""
        if not name:
            return None
        name = str(name).strip()
        for v in self.variants:
            if v.key == name:
                return v
        from demo.views import variant_label   # plain strings, no Gradio

        for v in self.variants:
            if variant_label(v, self.multi) == name:
                return v
        for model in self.models:               # the reference model (listed first) wins
            for v in self.variants:
                if v.model == model.name and v.name == name:
                    return v
        return None

    def model_of(self, name: str | None) -> Model:
        """The model a variant belongs to (the first model for an unknown name)."""
        v = self.variant(name)
        if v is not None:
            for model in self.models:
                if model.name == v.model:
                    return model
        return self.models[0]

    def classifier(self, name: str) -> Classifier:
        """The cached Classifier of a servable variant (loaded on first use). Raises
        ValueError with a user-facing reason when it can't be served."""
        variant = self.variant(name)
        if variant is None:
            where = "among the models served here" if self.multi else "in this export"
            raise ValueError(f"there is no variant {name!r} {where}")
        key, model = variant.key, self.model_of(variant.key)
        if not variant.servable:
            why = f" ({variant.reason})" if variant.reason else ""
            raise ValueError(f"variant {key} did not pass the export's checks against the original model{why}, "
                             "so it is not served. Pick a variant marked ok.")
        cached = self._classifiers.get(key)      # loaded ones never wait for another variant's load
        if cached is not None:
            return cached
        with self._load_lock:
            if key in self._classifiers:
                return self._classifiers[key]
            if key in self._load_errors:
                raise ValueError(self._load_errors[key])
            try:
                if model.source is None:
                    raise ValueError("a lone model file has no other variants")
                clf = Classifier.load(model.source, variant=variant.name, threads=self.config.threads,
                                      max_pixels=self.config.max_pixels, backend=self.config.backend)
                self._use_site(self.models.index(model), clf)
            except Exception as err:  # noqa: BLE001 - shown on the page, the app keeps serving
                log.warning("variant %s could not be loaded: %s", key, err)
                self._load_errors[key] = f"variant {key} could not be loaded: {err}"
                raise ValueError(self._load_errors[key]) from None
            self._classifiers[key] = clf
            return clf

    def default_region(self) -> str:
        """The region setting the page opens with: the default variant's (auto or off, from its manifest)."""
        clf = self._classifiers.get(self.default_variant)
        return str(clf.region) if clf is not None and clf.region.mode in ("auto", "off") else "auto"

    def median_ms(self, name: str) -> tuple[float | None, int]:
        """Median inference time of the recent requests on this machine, and how many."""
        v = self.variant(name)
        with self._timing_lock:
            times = list(self._timings.get(v.key if v is not None else name, ()))
        return (statistics.median(times) * 1000 if times else None), len(times)

    def close(self) -> None:
        lock = getattr(self, "_load_lock", None) or threading.Lock()
        with lock:
            for clf in self._classifiers.values():
                clf.close()
            self._classifiers.clear()

    # ------------------------------------------------------------------ classifying

    def classify_bytes(self, data: bytes, name: str, variant: str | None = None,
                       region: str | None = None, roi: str | Box | None = None) -> Outcome:
        """Decode and classify one uploaded file; never raises for bad input.

        region: "auto", "off" or "x,y,w,h" (runtime.scan_crop); None: the model's own
        setting. Every frame of a cine loop is classified (their mean makes the call).
        roi: the lesion box to classify (runtime.roi), in the original image's pixels:
        None or "" (the whole scan region; the proposed box is still found and drawn),
        "auto" (the proposed box) or a box ("x,y,w,h" or a Box), used for every frame.
        A box that can't be used gives an Outcome with `error` and `roi_error` set."""
        started = time.perf_counter()
        chosen = self.variant(variant or self.default_variant)
        variant = chosen.key if chosen is not None else str(variant)
        model = self.model_of(variant)
        name = Path(str(name or "image")).name or "image"
        outcome = Outcome(file=name, variant=variant, model=model.name if chosen is not None else None,
                          threshold=model.threshold, positive=model.positive, negative=model.negative)
        try:
            clf = self.classifier(variant)
        except ValueError as err:
            outcome.error = _sentence(str(err))
            return outcome
        outcome.threads = clf.threads
        outcome.site = clf.site.name if clf.site is not None else None
        outcome.engine = clf.engine
        try:
            setting = RegionSetting.parse(region) if region not in (None, "") else None
        except ValueError as err:
            outcome.error = _sentence(f"{err}.")
            return outcome
        request, problem = _lesion_request(roi, clf)
        if problem is not None:
            outcome.error, outcome.roi_error = problem, True
            return outcome
        try:
            scan, notes = _decode_scan(data, name, self.config.max_pixels)
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
        image = scan.display
        pred = clf.predict_decoded([scan], [name], with_cam=True, region=setting, roi=request)[0]
        outcome.region = pred.region.to_dict() if pred.region is not None else None
        outcome.frames = pred.frames.to_dict() if pred.frames is not None else None
        if not pred.ok:
            reason = _strip_name(pred.error or "", name)
            if request is not None and reason.startswith("roi "):   # runtime.roi's messages about the box
                outcome.error, outcome.roi_error = f"This box can't be used: {reason[4:]}.", True
            elif reason.startswith(REFUSED):   # runtime.input_checks: not something the model may read
                outcome.error = ("This image was not classified: it does not look like a breast ultrasound scan "
                                 f"({reason[len(REFUSED) + 2:]}). Please upload a grayscale B-mode ultrasound image.")
            else:
                outcome.error = f"The model could not classify this image: {reason}."
            return outcome
        outcome.label, outcome.probability, outcome.seconds = pred.label, pred.probability, pred.seconds
        outcome.threshold = pred.threshold
        outcome.out_of_distribution, outcome.ood_score = pred.out_of_distribution, pred.ood_score
        outcome.prediction, outcome.picture = pred, image
        outcome.roi = pred.roi_dict()
        outcome.proposed = outcome.roi if request is not None and request.auto else \
            self._proposal(clf, scan, name, setting) if request is None else None
        lesion = pred.roi or _box_of(outcome.proposed)       # the proposed box is drawn while unused, too
        display = _display_size(image)
        outcome.image_rgb = cv2.cvtColor(draw_lesion(draw_region(display, pred.region, image.shape), lesion,
                                                     image.shape), cv2.COLOR_BGR2RGB)
        if pred.cam is not None:
            over = gradcam.overlay(display, pred.cam)   # the map is resized to the display image
            over = draw_lesion(draw_region(over, pred.region, image.shape), lesion, image.shape)
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

    def _proposal(self, clf: Classifier, scan: DecodedScan, name: str,
                  setting: RegionSetting | None) -> dict[str, Any] | None:
        """The box proposed for the image (Prediction.roi_dict() of roi "auto"), found
        while the call is for the whole scan region; None when the variant cannot propose."""
        if clf.localiser is None and not clf.has_cam:
            return None
        proposal = clf.predict_decoded([scan], [name], region=setting, roi=AUTO)[0]
        return proposal.roi_dict() if proposal.ok else None

    def rerun(self, state: PageState, variant: str | None, region: str | None, mode: str | None = None,
              box: str | None = None, fallback: bool = False) -> Outcome:
        """The page's upload classified again with a lesion-box choice: mode "whole",
        "proposed" or "mine" (with `box`, "x,y,w,h"); None: the state's. A box that
        can't be used gives an Outcome with `roi_error` and leaves `state` as it was;
        with `fallback` (a new variant or scan region, whose result must replace the
        page's) the whole scan region is classified instead, `box_dropped` saying why."""
        outcome = _rerun(self, state, variant, region, mode, box)
        if fallback and outcome.roi_error and state.data is not None:
            why = outcome.error
            outcome = _rerun(self, state, variant, region, WHOLE)
            outcome.box_dropped = f"{why} The call is for the whole scan region."
        return outcome

    # ------------------------------------------------------------------ reports

    def report(self, outcome: Outcome, created: str | None = None) -> str:
        """The one-page HTML report (runtime.report) of a result as the page shows it:
        the box classified, the heatmap, the threshold or site profile of its variant."""
        if not outcome.ok or outcome.prediction is None:
            raise ValueError("there is no result to report")
        return report_html(outcome.prediction, outcome.picture, self.classifier(outcome.variant),
                           input_name=outcome.file, created=created)

    def write_report(self, outcome: Outcome, folder: str | Path) -> Path:
        """The report written (atomically) to a new folder inside `folder` (the demo's
        private cache), named after the uploaded file: `<stem>_report.html`."""
        target = Path(folder) / f"report-{uuid.uuid4().hex}" / report_name(outcome.file)
        target.parent.mkdir(mode=0o700)
        atomic.write_text(target, self.report(outcome))
        return target

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


# ---------------------------------------------------------------------- the lesion box on the page

WHOLE, PROPOSED, MINE = "whole", "proposed", "mine"      # what the call is for
ROI_MODES = (WHOLE, PROPOSED, MINE)


@dataclass
class PageState:
    """What one browser tab keeps between events (its gr.State): the upload's bytes (a
    variant, region or box change re-runs them), the result on the page and the
    lesion-box choice. DemoService.rerun and `click` change it."""

    data: bytes | None = None
    name: str = "image"
    mode: str = WHOLE
    box: str = ""                            # my box, "x,y,w,h" in the original image's pixels
    corner: tuple[int, int] | None = None    # the first click of a box being drawn (original pixels)
    shown: Outcome | None = None             # the last good result on the page

    @classmethod
    def for_upload(cls, data: bytes, name: str, roi: str | None = None) -> "PageState":
        """A new upload: the whole scan region, unless `roi` ("auto" or "x,y,w,h", from the API) says otherwise."""
        roi = (roi or "").strip()
        mode = WHOLE if not roi else PROPOSED if roi.lower() == AUTO else MINE
        return cls(data=data, name=name, mode=mode, box=roi if mode == MINE else "")


def roi_of(mode: str, box: str) -> str | None:
    """classify_bytes' roi for a lesion-box choice."""
    if mode not in ROI_MODES:
        raise ValueError(f"unknown lesion-box choice {mode!r}")
    return None if mode == WHOLE else AUTO if mode == PROPOSED else box


def _rerun(service: "DemoService", state: PageState, variant: str | None, region: str | None,
           mode: str | None = None, box: str | None = None) -> Outcome:
    """Classify the kept upload again with a lesion-box choice (default: the state's).
    A result, or an error that is not about the box, becomes the page's; a box that can't
    be used (`roi_error`) leaves the state as it was, so the page keeps its result."""
    mode = mode or state.mode
    box = state.box if box is None else str(box).strip()
    state.corner = None
    if state.data is None:
        return Outcome(file="", variant=str(variant), error="There is no image yet: upload one first.",
                       roi_error=True)
    if mode == MINE and not box:
        return Outcome(file=state.name, variant=str(variant), roi_error=True,
                       error="There is no box of yours yet: click two opposite corners of the lesion on the input "
                             "image, or type x,y,w,h.")
    outcome = service.classify_bytes(state.data, state.name, variant, region, roi_of(mode, box))
    if outcome.roi_error:
        return outcome
    state.mode, state.box = mode, box if mode == MINE else state.box
    state.shown = outcome if outcome.ok else None
    return outcome


@dataclass
class Click:
    """What one click on the input image did: marked the first corner, or finished a box."""

    message: str
    corner: tuple[int, int] | None = None    # the first corner (original pixels)
    box: str | None = None                   # the box drawn, "x,y,w,h" (original pixels)
    image_rgb: np.ndarray | None = field(default=None, repr=False)   # the input shown with the first corner marked


def click(state: PageState, x: float, y: float) -> Click:
    """A click at (x, y) in the pixels of the image shown (Gradio's select event gives
    them in the picture's own pixels, however it is scaled on the screen). The first
    click marks one corner, the second the opposite one: their box, in the original
    image's pixels, both corner pixels inside."""
    shown = state.shown
    if shown is None or shown.image_rgb is None or shown.picture is None:
        return Click("There is no image to draw on yet: upload one first.")
    point = to_original(x, y, shown.image_rgb.shape, shown.picture.shape)
    if point is None:
        return Click("That click was outside the image.")
    if state.corner is None:
        state.corner = point
        return Click(f"First corner at x {point[0]}, y {point[1]}: now click the opposite corner.", corner=point,
                     image_rgb=mark_point(shown.image_rgb, int(x), int(y)))
    first, state.corner = state.corner, None
    box = box_from_corners(first, point)
    return Click(f"Your box: x {box.x}, y {box.y}, {box.width}×{box.height} px.",
                 box=f"{box.x},{box.y},{box.width},{box.height}")


def to_original(x: float, y: float, display_shape: tuple[int, ...],
                original_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """A pixel of the display image -> the original image's pixel under it (None: outside)."""
    dh, dw = display_shape[:2]
    oh, ow = original_shape[:2]
    try:
        x, y = float(x), float(y)
    except (TypeError, ValueError):
        return None
    if not (0 <= x < dw and 0 <= y < dh):
        return None
    return min(ow - 1, int(x * ow / dw)), min(oh - 1, int(y * oh / dh))


def box_from_corners(a: tuple[int, int], b: tuple[int, int]) -> Box:
    """The box with corner pixels a and b (in either order), both inside it."""
    x0, x1 = sorted((int(a[0]), int(b[0])))
    y0, y1 = sorted((int(a[1]), int(b[1])))
    return Box(x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def mark_point(image_rgb: np.ndarray, x: int, y: int) -> np.ndarray:
    """The image with a cross at (x, y): the first corner of a box being drawn."""
    out = image_rgb.copy()
    arm = max(6, round(min(out.shape[:2]) / 40))
    rgb = LESION_COLOUR[::-1]
    thickness = max(2, round(min(out.shape[:2]) / 200))
    cv2.line(out, (x - arm, y), (x + arm, y), rgb, thickness)
    cv2.line(out, (x, y - arm), (x, y + arm), rgb, thickness)
    return out


# ---------------------------------------------------------------------- helpers


def _unique_paths(paths: list[Path]) -> list[Path]:
    """The paths in order, each export once (the same folder named twice is served once)."""
    seen: set[Path] = set()
    out = []
    for p in paths:
        real = p.resolve()
        real = real.parent if real.name == MANIFEST_NAME else real
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


def _site_match(paths: list[Path], profile: SiteProfile) -> tuple[int, str]:
    """(index of the model, variant name) whose model file the site profile was made for;
    ValueError when none of the models served has it."""
    want = str(profile.model["sha256"]).lower()
    for i, p in enumerate(paths):
        manifest = p / MANIFEST_NAME if p.is_dir() else p if p.name == MANIFEST_NAME else None
        if manifest is None and (p.parent / MANIFEST_NAME).is_file():
            manifest = p.parent / MANIFEST_NAME
        if manifest is not None and manifest.is_file():
            for entry in read_manifest(manifest).variants:
                if (entry.sha256 or "").lower() == want and entry.file and (manifest.parent / entry.file).is_file():
                    return i, entry.name
        elif p.is_file() and sha256_file(p) == want:
            return i, profile.model.get("variant") or p.stem
    made_for = ", ".join(f"{k} {profile.model[k]}" for k in ("export", "variant") if profile.model.get(k))
    raise ValueError(f"site profile '{profile.name}' ({profile.path}) was made for another model ({made_for}); "
                     "none of the models served here has that model file. Serve that export, or calibrate "
                     "this one with `bcd calibrate`.")


def _model_names(paths: list[Path]) -> list[str]:
    """A short, unique name per model: its export folder's name (a lone .onnx file: its stem)."""
    names = []
    for p in paths:
        if p.is_dir():
            base = p.resolve().name
        elif p.name == MANIFEST_NAME or (p.parent / MANIFEST_NAME).is_file():
            base = p.resolve().parent.name
        else:
            base = p.stem
        base = base.replace(SEP.strip(), "-") or "model"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


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


def _decode_scan(data: bytes, name: str, max_pixels: int) -> tuple[DecodedScan, list[str]]:
    """Every frame of a cine loop, and a DICOM file's region; warnings (burned-in patient
    data, a region that does not fit the pixels) become notes."""
    if not looks_like_dicom(data, name):
        return decode_scan(data, max_pixels, name), []
    with _warn_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = decode_scan(data, max_pixels, name, frames="all")
    return scan, [_strip_name(str(w.message), name) for w in caught]


REGION_COLOUR = (0, 215, 255)    # BGR amber: visible on gray scans and on the heatmap


def draw_region(display: np.ndarray, region: ScanRegion | None, original_shape: tuple[int, ...]) -> np.ndarray:
    """The display image with the classified box drawn on it (scaled from the original
    image's pixels); unchanged when the whole image was classified."""
    height, width = original_shape[:2]
    if region is None or (region.x, region.y, region.width, region.height) == (0, 0, width, height):
        return display
    sy, sx = display.shape[0] / height, display.shape[1] / width
    out = display.copy()
    top_left = (int(round(region.x * sx)), int(round(region.y * sy)))
    bottom_right = (int(round((region.x + region.width) * sx)) - 1, int(round((region.y + region.height) * sy)) - 1)
    cv2.rectangle(out, top_left, bottom_right, REGION_COLOUR, max(1, round(min(out.shape[:2]) / 250)))
    return out


LESION_COLOUR = (255, 0, 255)    # BGR magenta: unlike the scan region's amber, the gray scan and the JET heatmap


def draw_lesion(display: np.ndarray, box: Box | None, original_shape: tuple[int, ...]) -> np.ndarray:
    """The display image with the lesion box outlined (scaled from the original image's
    pixels), a little thicker than the scan region's outline; unchanged without a box."""
    if box is None:
        return display
    (x0, y0), (x1, y1) = _scaled_corners(box, display.shape, original_shape)
    out = display.copy()
    cv2.rectangle(out, (x0, y0), (x1, y1), LESION_COLOUR, max(2, round(min(out.shape[:2]) / 200)))
    return out


def _scaled_corners(box: Box, display_shape, original_shape) -> tuple[tuple[int, int], tuple[int, int]]:
    sy, sx = display_shape[0] / original_shape[0], display_shape[1] / original_shape[1]
    return ((int(round(box.x * sx)), int(round(box.y * sy))),
            (int(round(box.right * sx)) - 1, int(round(box.bottom * sy)) - 1))


def _box_of(roi: dict[str, Any] | None) -> Box | None:
    """The Box of an Outcome's `roi` / `proposed` dict (None: none, or nothing proposed)."""
    if not roi or roi.get("x") is None:
        return None
    return Box(int(roi["x"]), int(roi["y"]), int(roi["width"]), int(roi["height"]))


def _lesion_request(roi: str | Box | None, clf: Classifier):
    """(runtime.roi request or None, None), or (None, a sentence) for a box or a choice
    this variant can't use: the page says why and keeps its result."""
    if roi is None or (isinstance(roi, str) and not roi.strip()):
        return None, None
    try:
        request = roi_request(roi)
    except TypeError as err:
        return None, _sentence(f"{err}.")
    if request.error is not None:
        return None, f"This box can't be used: {request.error[4:]}."
    if request.auto and clf.localiser is None and not clf.has_cam:
        return None, (f"Variant {clf.variant} cannot propose a lesion box (it has no Grad-CAM output and no "
                      "lesion localiser): draw your own box, or pick another variant.")
    return request, None


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
