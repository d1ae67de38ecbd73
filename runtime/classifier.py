"""Load an exported model and classify images: the runtime's main entry point.

    from runtime.classifier import Classifier
    clf = Classifier.load("exports/busi-224")            # default variant: onnx-int8, else onnx-fp32
    p = clf.predict("scan.png", with_cam=True)
    p.label, p.probability, p.threshold, p.cam            # cam: 0..1, the image's own size
    p.out_of_distribution, p.ood_score                    # True: far from the training images
    p.region                                              # the box classified (runtime.scan_crop)
    Classifier.load(path, region="off", frames="all")     # whole image; every frame of a cine loop

Everything a model needs besides its weights (preprocessing, labels, operating
threshold) comes from the export's manifest.json, or from the metadata embedded in a
lone .onnx file, never from defaults in code, so a model is fed exactly as it was
trained and its decision uses the threshold chosen on validation data.

Safety on load: only .onnx/.tflite are run; the file's sha256 must match the manifest;
ONNX external data must stay in the model's folder; variants that failed the export's
parity checks are refused unless forced. See runtime/model_files.py.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime import gradcam
from runtime.backends import (
    Backend,
    OnnxBackend,
    OpenVinoBackend,
    TfliteBackend,
    choose_backend,
    read_backend_record,
)
from runtime.images import DEFAULT_MAX_PIXELS, ImageReadError
from runtime.input_checks import DEFAULT_CHECKS, InputChecks
from runtime.lesion_box import Box
from runtime.manifest import MANIFEST_NAME, ONNX_METADATA_KEY, Manifest, VariantEntry, read_manifest, variant_ood
from runtime.model_files import (
    ONNX_SUFFIX,
    TFLITE_SUFFIX,
    ModelLoadError,
    check_onnx_external_data,
    inside,
    onnx_metadata,
    refuse_unsafe_file,
    sha256_bytes,
)
from runtime.overlay_marks import apply_marks
from runtime.preprocessing import PreprocessSpec, prepare
from runtime.roi import (GIVEN, GRADCAM, GRADCAM_THRESHOLD, LOCALISER, PROPOSAL_MARGIN, ROI_MIN_SIDE, Localiser,
                         RoiError, RoiRequest, fit_roi, none_proposed_source, propose, proposed_source, roi_request, roi_requests)
from runtime.scan_crop import (RegionError, RegionSetting, apply_region, choose_region, colour_refusal,
                                region_config_from_dict)
from runtime.scan_input import DecodedScan, FrameChoice, decode_scan, read_scan, still
from runtime.scan_region import RegionConfig, ScanRegion
from runtime.session import resolve_threads

DEFAULT_VARIANT_ORDER = ("onnx-int8", "onnx-fp32")
DEFAULT_BATCH_SIZE = 8


@dataclass
class FrameResults:
    """The frames of a cine loop that were classified. With several, the prediction's
    probability is their mean (a clip sweeps the same tissue, and one odd frame moves a
    mean least); the highest one is given beside it, since a lesion seen in only a few
    frames shows there."""

    count: int                           # frames in the file
    numbers: list[int]                   # the frames classified, counted from 1
    probabilities: list[float]           # of each of those frames
    summary: str = "mean"                # how the prediction's probability was made: mean | single frame

    @property
    def max_probability(self) -> float:
        return max(self.probabilities)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "used": list(self.numbers), "probabilities": list(self.probabilities),
                "summary": self.summary, "max_probability": self.max_probability}


@dataclass
class Prediction:
    """The result for one image. `error` is None on success; otherwise label and
    probability are None and `error` says why (e.g. "x.png: not a readable image ...")."""

    path: str | None
    label: str | None
    probability: float | None            # probability of malignancy, 0..1
    threshold: float                     # label is the positive class iff probability >= threshold
    seconds: float | None = None         # model inference time for this image (a batch's time is shared evenly)
    error: str | None = None
    cam: np.ndarray | None = field(default=None, repr=False, compare=False)  # HxW float32 0..1, the image's size
    # The out-of-distribution flag (export/ood.py): True when the image's pooled features
    # lie far from the training images' (score at or above the variant's threshold), so
    # the prediction is not to be trusted; None when the model has no OOD score.
    out_of_distribution: bool | None = None
    ood_score: float | None = None
    # The box of the original image that was classified (None: the image was not read);
    # source "dicom" (the file's own tissue region, with mm per pixel), "found" (the
    # scan-region finder), "given" (a box from the caller) or "whole".
    region: ScanRegion | None = None
    frames: FrameResults | None = None   # the frames of a cine loop (None: a still image)
    # The lesion box classified inside the region (runtime.roi), in the original image's
    # pixels (None: no ROI asked for, or none proposed); roi_source: "given",
    # "proposed:localiser", "proposed:gradcam", or "none proposed:<proposer>" (roi "auto"
    # found nothing: the whole region was classified). None without an ROI.
    roi: Box | None = None
    roi_source: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def roi_dict(self) -> dict[str, Any] | None:
        """{"x", "y", "width", "height", "source"} (the box's fields None when none was
        proposed); None when no ROI was asked for."""
        if self.roi_source is None:
            return None
        box = self.roi.to_dict() if self.roi is not None else dict.fromkeys(("x", "y", "width", "height"))
        return {**box, "source": self.roi_source}

    def to_dict(self) -> dict[str, Any]:
        """The fields reports carry (no cam, no timing)."""
        return {"path": self.path, "label": self.label, "probability": self.probability,
                "threshold": self.threshold, "out_of_distribution": self.out_of_distribution,
                "ood_score": self.ood_score, "error": self.error,
                "region": self.region.to_dict() if self.region is not None else None,
                "frames": self.frames.to_dict() if self.frames is not None else None,
                "roi": self.roi_dict()}


@dataclass
class Placed:
    """One input made ready for the model by Classifier.place: its Prediction so far
    (region set, or error set when refused), its decoded scan, and its frames
    preprocessed for the model (None when refused)."""

    pred: Prediction
    scan: DecodedScan | None
    arrays: list[np.ndarray] | None
    roi: RoiRequest | None = None        # roi "auto", its box still to be proposed (by infer)
    # the frames cut to the scan region with coloured marks erased, as training saw them:
    # what a proposed box is cut from (roi "auto" only)
    regions: list[np.ndarray] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """Which model file is being served and where its settings came from."""

    variant: str
    format: str
    precision: str
    file: Path
    outputs: tuple[str, ...]
    source: str                          # "manifest" or "embedded metadata"
    status: str = "ok"
    sha256_verified: bool = False
    backend: str = "onnxruntime"         # the engine serving it: onnxruntime | openvino | litert
    backend_reason: str = ""             # why that engine (see runtime.backends.choose_backend)


class Classifier:
    """An exported model plus everything needed to use it. One instance reuses its
    session and buffers across calls; calls are serialised by a lock, so an instance may
    be shared between threads (for parallel throughput use one instance per thread with
    threads=1 each)."""

    def __init__(self, backend: Backend, spec: PreprocessSpec, labels: dict[str, Any], threshold: float,
                 info: ModelInfo, manifest: Manifest | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 ood_threshold: float | None = None) -> None:
        names = list(labels["names"])
        self.positive = str(labels["positive"])
        negatives = [n for n in names if n != self.positive]
        if len(negatives) != 1:
            raise ModelLoadError(f"expected two labels (one positive), got {names}")
        self.negative = negatives[0]
        self.backend = backend
        self.spec = spec
        self.threshold = float(threshold)
        # A lesion box's own operating point (manifest threshold.roi); None: boxes are read
        # at `threshold`, as with a site profile (calibrated on whole scans only)
        self.roi_threshold: float | None = manifest.roi_threshold_value if manifest is not None else None
        self.info = info
        self.manifest = manifest
        self.max_pixels = max_pixels
        self.site = None                 # a runtime.site_profile.SiteProfile, set by use_site()
        # Images that cannot be a scan (too small, flat, strongly coloured) are refused
        # before inference; None turns the checks off (only for tests of the model itself).
        self.input_checks: InputChecks | None = DEFAULT_CHECKS
        # None: this model raises no out-of-distribution flag (no score in the graph, or
        # an export from before the flag existed)
        self.ood_threshold = float(ood_threshold) if ood_threshold is not None and backend.has_ood else None
        # The scan-region finder's settings come from the manifest (an export from before
        # it was recorded: the default finder, auto); `region` and `frames` are the
        # defaults of every predict call (runtime.scan_crop, runtime.scan_input).
        recorded = manifest.scan_region if manifest is not None else None
        # no record: the default finder, with the legacy defaults of a record that lacks a
        # field (coloured marks kept: such a model was trained before they were erased)
        self.region_finder: RegionConfig = region_config_from_dict(recorded if recorded is not None else {})
        self.region = RegionSetting(self.region_finder.mode)
        self.frames = FrameChoice()
        # roi="auto" asks this lesion localiser for the box (runtime.roi.Localiser); None:
        # the model's own Grad-CAM map proposes it
        self.localiser: Localiser | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike, variant: str | None = None, threads: int | None = None,
             verify: bool = True, force: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
             backend: str | None = None, region: "RegionSetting | str | Sequence | None" = None,
             frames: "FrameChoice | str | int | None" = None) -> "Classifier":
        """Load an export directory, its manifest.json, a .onnx/.tflite file listed in a
        manifest next to it, or a lone .onnx file carrying the embedded metadata.

        variant: manifest variant name (default: onnx-int8 if it passed the export checks,
            else onnx-fp32, else the first usable ONNX variant, else the first usable one).
        threads: intra-op threads (default: this machine's physical cores).
        backend: "auto" (default), "onnxruntime", "openvino" or "litert": the engine that
            runs the file (runtime.backends.choose_backend). Without a variant, "litert"
            picks the first usable .tflite variant and the others an .onnx one.
        verify: check the file's sha256 against the manifest.
        force: also serve a variant whose status is "failed" (it did not pass the
            parity checks against the original model) or "error", if its file exists.
            Use only to investigate.
        region: "auto", "off" or a box "x,y,w,h" (runtime.scan_crop.RegionSetting);
            default: the manifest's finder setting (auto for exports that record none).
        frames: "middle" (default), "all" or a frame number from 1: the frames of a cine
            loop to classify (runtime.scan_input.FrameChoice).
        """
        chosen_region = RegionSetting.parse(region) if region is not None else None   # bad values fail before I/O
        chosen_frames = FrameChoice.parse(frames)
        clf = cls._load(path, variant, threads, verify, force, max_pixels, backend)
        if chosen_region is not None:
            clf.region = chosen_region
        clf.frames = chosen_frames
        return clf

    @classmethod
    def _load(cls, path: str | os.PathLike, variant: str | None, threads: int | None, verify: bool, force: bool,
              max_pixels: int, backend: str | None) -> "Classifier":
        path = Path(path)
        threads = resolve_threads(threads)
        choose_backend(backend, "onnx" if backend != "litert" else "tflite")   # bad names fail before any I/O
        if not path.exists():
            raise FileNotFoundError(f"model not found: {path}")
        if path.is_dir():
            if (path / MANIFEST_NAME).is_file():
                return cls._from_manifest(path / MANIFEST_NAME, variant, threads, verify, force, max_pixels,
                                          backend)
            raise ModelLoadError(_not_an_export(path))
        refuse_unsafe_file(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return cls._from_manifest(path, variant, threads, verify, force, max_pixels, backend)
        if suffix not in (ONNX_SUFFIX, TFLITE_SUFFIX):
            raise ModelLoadError(f"{path}: not a model this runtime runs (expected an export directory, "
                                 "manifest.json, .onnx or .tflite)")
        sibling = path.parent / MANIFEST_NAME
        if sibling.is_file():
            manifest = read_manifest(sibling)
            listed = [v for v in manifest.variants if v.file == path.name]
            if listed:
                if variant is not None and variant != listed[0].name:
                    raise ModelLoadError(f"{path} is variant {listed[0].name!r}, not {variant!r}")
                return cls._from_manifest(sibling, listed[0].name, threads, verify, force, max_pixels, backend)
        if suffix == TFLITE_SUFFIX:
            raise ModelLoadError(f"{path}: a .tflite file carries no preprocessing settings; keep it next to "
                                 f"the {MANIFEST_NAME} of its export and load that directory")
        return cls._from_lone_onnx(path, variant, threads, max_pixels, backend)

    @classmethod
    def _from_manifest(cls, manifest_file: Path, variant: str | None, threads: int, verify: bool,
                       force: bool, max_pixels: int, backend: str | None = None) -> "Classifier":
        manifest = read_manifest(manifest_file)
        export_dir = manifest_file.parent
        entry = choose_variant(manifest, variant, "tflite" if backend == "litert" else
                               "onnx" if backend in ("onnxruntime", "openvino") else None)
        if entry.status != "ok" and not force:
            why = f": {entry.reason}" if entry.reason else ""
            hint = ("it did not pass the export's checks against the original model" if entry.status == "failed"
                    else "the export could not produce or check it")
            hint += "; force=True (bcd predict --force) loads it anyway, for investigation only"
            raise ModelLoadError(f"variant {entry.name!r} has status {entry.status!r}{why} ({hint})")
        if entry.file is None:
            raise ModelLoadError(f"variant {entry.name!r} has no file (status {entry.status!r})")
        try:
            file = inside(export_dir, entry.file)
        except ModelLoadError as err:
            raise ModelLoadError(f"{manifest_file}: variant {entry.name!r}: {err}") from None
        refuse_unsafe_file(file)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: model file listed in {manifest_file} is missing")
        data = file.read_bytes()
        if verify:
            _verify_sha256(data, entry, file)
        spec = PreprocessSpec.from_dict(manifest.preprocessing)
        engine, why = choose_backend(backend, entry.format, entry.name, read_backend_record(export_dir),
                                     sha256=entry.sha256 or "", int8_weights=entry.int8_weights)
        served = _backend(engine, data, file, spec.image_size, threads)
        info = ModelInfo(entry.name, entry.format, entry.precision, file, tuple(entry.outputs), "manifest",
                         entry.status, verify, engine, why)
        clf = cls(served, spec, manifest.labels, manifest.threshold_value, info, manifest, max_pixels,
                  manifest.ood_threshold(entry.name))
        if manifest.localiser is not None:   # loaded with the model: a bad file fails here, once, clearly
            from runtime.localiser import Localiser as ExportLocaliser
            clf.localiser = ExportLocaliser.load(manifest_file, threads=threads, verify=verify)
        return clf

    @classmethod
    def _from_lone_onnx(cls, path: Path, variant: str | None, threads: int, max_pixels: int,
                        backend: str | None = None) -> "Classifier":
        data = path.read_bytes()
        raw = onnx_metadata(data).get(ONNX_METADATA_KEY)
        if raw is None:
            raise ModelLoadError(f"{path}: no '{ONNX_METADATA_KEY}' metadata in this ONNX file, so its "
                                 "preprocessing and threshold are unknown; load the export directory instead")
        try:
            doc = json.loads(raw)
            own = doc.pop("variant", None) or {}
            manifest = Manifest.from_dict({**doc, "variants": []})
            ood = variant_ood(own.get("ood"), "variant.ood") if manifest.ood is not None else None
        except (json.JSONDecodeError, ValueError, TypeError, AttributeError) as err:
            raise ModelLoadError(f"{path}: damaged '{ONNX_METADATA_KEY}' metadata ({err})") from None
        name = str(own.get("name", path.stem))
        if variant is not None and variant != name:
            raise ModelLoadError(f"{path} is variant {name!r}, not {variant!r}")
        spec = PreprocessSpec.from_dict(manifest.preprocessing)
        engine, why = choose_backend(backend, "onnx", name)   # no backends.json: auto stays on ONNX Runtime
        served = _backend(engine, data, path, spec.image_size, threads)
        outputs = own.get("outputs") or (["malignancy", "cam"] if served.has_cam else ["malignancy"])
        info = ModelInfo(name, "onnx", str(own.get("precision", "unknown")), path, tuple(outputs),
                         "embedded metadata", backend=engine, backend_reason=why)
        return cls(served, spec, manifest.labels, manifest.threshold_value, info, manifest, max_pixels,
                   ood["threshold"] if ood is not None else None)

    # ------------------------------------------------------------------ properties

    @property
    def variant(self) -> str:
        return self.info.variant

    @property
    def threads(self) -> int:
        return self.backend.threads

    @property
    def engine(self) -> str:
        """The engine serving the model: onnxruntime, openvino or litert."""
        return self.backend.engine

    @property
    def has_cam(self) -> bool:
        return self.backend.has_cam

    @property
    def has_ood(self) -> bool:
        """Whether predictions carry the out-of-distribution flag."""
        return self.ood_threshold is not None

    @property
    def labels(self) -> tuple[str, str]:
        return self.negative, self.positive

    def use_site(self, profile) -> None:
        """Use a clinic's operating point (runtime/site_profile.py): its recalibration maps
        every probability and its threshold makes the call. Refuses (SiteProfileError) a
        profile made for another model file."""
        profile.check_model(self.info.file, self.variant)
        self.site = profile
        self.threshold = float(profile.threshold)
        self.roi_threshold = None        # the profile maps whole-scan probabilities; boxes follow it

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Classifier(variant={self.variant!r}, file={str(self.info.file)!r}, "
                f"threshold={self.threshold:.4f}, threads={self.threads}, backend={self.engine!r})")

    # ------------------------------------------------------------------ predicting

    def predict(self, inputs, with_cam: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                region: "RegionSetting | str | Sequence | None" = None,
                frames: "FrameChoice | str | int | None" = None, roi=None):
        """Classify one input or a list of inputs.

        An input is a file path, encoded image bytes, or a decoded image array (HxW or
        HxWxC, any dtype runtime.images.to_bgr_uint8 accepts; 3 channels are taken as
        BGR). A 4-D array is a batch of images. One input gives one Prediction; a list
        (or 4-D array) gives a list. An unusable input gives a Prediction with `error`
        set; the others are still classified.

        region, frames: this call's region setting and cine frame choice (default: the
        classifier's `region` and `frames`).
        roi: the lesion to classify inside the region (runtime.roi), in the original
            image's pixels: a box (x, y, w, h), a runtime.lesion_box.Box, "x,y,w,h", or
            "auto" (a proposed box), for every input; or a list with one of those (or
            None) per input. A bad box fails only its input; a malformed argument raises
            ValueError/TypeError before any work.
        """
        setting = RegionSetting.parse(region) if region is not None else self.region
        choice = FrameChoice.parse(frames) if frames is not None else self.frames
        single = not isinstance(inputs, (list, tuple)) and not (isinstance(inputs, np.ndarray) and inputs.ndim == 4)
        items = [inputs] if single else list(inputs)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        requests = self.roi_requests(roi, len(items))
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            decoded = [self.decode_or_error(item, choice) for item in chunk]
            results.extend(self._run(decoded, with_cam, setting, requests[start:start + batch_size]))
        return results[0] if single else results

    def roi_requests(self, roi, count: int) -> list[RoiRequest | None]:
        """`roi` as predict takes it, one request per input (runtime.roi.roi_requests);
        ValueError when "auto" is asked of a model that cannot propose a box."""
        requests = roi_requests(roi, count)
        if any(r is not None and r.auto for r in requests):
            self.check_can_propose()
        return requests

    def check_can_propose(self) -> None:
        """ValueError unless roi="auto" can work: a localiser, or a Grad-CAM output."""
        if self.localiser is None and not self.has_cam:
            raise ValueError(f"roi 'auto' needs a lesion localiser or a model with a Grad-CAM output; variant "
                             f"{self.variant!r} has neither (give the box, or choose a variant with a cam output)")

    def predict_decoded(self, images: Sequence[np.ndarray | DecodedScan], paths: Sequence[str | None] | None = None,
                        with_cam: bool = False,
                        region: "RegionSetting | str | Sequence | None" = None, roi=None) -> list[Prediction]:
        """Classify already-decoded HxWx3 uint8 BGR images (or runtime.scan_input
        DecodedScans, which carry a cine loop's frames and a DICOM file's region) as one
        batch (callers that keep the pixels, e.g. to draw overlays, decode once and use this).
        roi: as in predict."""
        paths = list(paths) if paths is not None else [None] * len(images)
        if len(paths) != len(images):
            raise ValueError("paths and images differ in length")
        setting = RegionSetting.parse(region) if region is not None else self.region
        requests = self.roi_requests(roi, len(images))
        entries = [(p, img if isinstance(img, DecodedScan) else DecodedScan([img], [1]), None)
                   for p, img in zip(paths, images)]
        return self._run(entries, with_cam, setting, requests)

    def decode(self, item, frames: "FrameChoice | str | int | None" = None) -> DecodedScan:
        """A path, image bytes or array as the classifier reads it (the frames chosen,
        the DICOM region); ImageReadError when it can't be used."""
        choice = FrameChoice.parse(frames) if frames is not None else self.frames
        if isinstance(item, (str, os.PathLike)):
            return read_scan(item, self.max_pixels, choice)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return decode_scan(bytes(item), self.max_pixels, "image", choice)
        if isinstance(item, np.ndarray):
            return still(item)
        raise TypeError(f"cannot classify a {type(item).__name__}: pass a path, image bytes or an image array")

    def decode_or_error(self, item, frames: "FrameChoice | str | int | None" = None
                        ) -> tuple[str | None, DecodedScan | None, str | None]:
        """(name, decoded scan, None), or (name, None, the reason) for an input that cannot
        be used: one bad file never stops a batch. TypeError for an input of another kind."""
        if not isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)):
            raise TypeError(f"cannot classify a {type(item).__name__}: pass a path, image bytes or an image array")
        name = _item_name(item)
        try:
            return name, self.decode(item, frames), None
        except ImageReadError as err:
            return name, None, str(err)
        except MemoryError:
            return name, None, f"{name or 'image'}: not enough memory to decode it"
        except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not stop a batch
            return name, None, f"{name or 'image'}: cannot read ({err.__class__.__name__}: {err})"

    def _place(self, pred: Prediction, scan: DecodedScan, setting: RegionSetting,
               request: RoiRequest | None = None) -> list[np.ndarray] | None:
        """The frames of `scan` cut to its region (or to a given ROI inside it), ready
        for the model; None (with pred.error set) when the input is refused. Sets
        pred.region (and pred.roi)."""
        name = pred.path or "image"
        for image in scan.frames:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                pred.error = f"{name}: expected an HxWx3 uint8 BGR image, got {image.dtype} {image.shape}"
                return None
        display = scan.display
        try:
            # one box for all frames of a cine loop: the scanner's screen layout does not move
            pred.region = choose_region(display, setting, self.region_finder, scan.dicom)
        except RegionError as err:
            pred.error = f"{name}: {err}"
            return None
        crops = []
        for number, image in zip(scan.frame_numbers, scan.frames):
            if image.shape != display.shape:
                pred.error = f"{name}: frame {number} is {image.shape[1]}x{image.shape[0]}, unlike the others"
                return None
            crop = apply_region(image, region=pred.region).image
            problem = self.input_checks.problem(crop) if self.input_checks is not None else None
            if problem is not None:
                where = f" (frame {number})" if scan.is_cine and len(scan.frames) > 1 else ""
                pred.error = f"{name}: {problem}{where}"
                return None
            crops.append(crop)
        # after the input checks: a photograph is "not a scan" (strongly coloured), while a
        # B-mode scan with a Doppler or elastography box gets that reason
        colour = colour_refusal(display, pred.region, scan.dicom)
        if colour is not None:
            pred.error = f"{name}: {colour}"
            return None
        # after the checks (a colour photo is refused, not repainted): marks erased from the
        # scan region as training erased them, before any lesion box is cut from it
        finder = self.region_finder
        crops = [apply_marks(crop, finder.colour_marks, finder.white_calipers) for crop in crops]
        if request is not None and request.box is not None:
            # the scan region passed the checks above; the model sees the lesion's box in it
            try:
                pred.roi = fit_roi(request.box, pred.region, self._roi_min_side, request.text)
            except RoiError as err:
                pred.error = f"{name}: {err}"
                return None
            pred.roi_source = GIVEN
            return [_cut(crop, pred.roi, pred.region) for crop in crops]
        return crops

    def place(self, path: str | None, scan: DecodedScan | None, error: str | None = None,
              region: "RegionSetting | str | Sequence | None" = None, roi=None) -> "Placed":
        """Everything done to one decoded input before inference: its scan region, the
        colour and input checks, the crop (to a given ROI: `roi`, one input's value as in
        predict) and the model's preprocessing. Touches no shared state, so folder
        prediction runs it in its read-ahead threads (runtime.read_ahead), beside
        inference; `infer` classifies the results (and proposes the box of roi "auto")."""
        pred = Prediction(path, None, None, self.threshold, error=error)
        request = roi_request(roi)
        if request is not None and request.error is not None and error is None:
            pred.error = f"{path or 'image'}: {request.error}"
        if pred.error is not None or scan is None:
            return Placed(pred, scan, None)
        setting = RegionSetting.parse(region) if region is not None else self.region
        try:
            crops = self._place(pred, scan, setting, request)
            arrays = None if crops is None else [prepare(crop, self.spec) for crop in crops]
        except Exception as err:  # noqa: BLE001 - one odd image must not stop a batch or a folder
            pred.error = f"{path or 'image'}: cannot prepare it ({err.__class__.__name__}: {err})"
            arrays = None
        auto = arrays is not None and request is not None and request.auto
        return Placed(pred, scan, arrays, request if auto else None, crops if auto else None)

    def infer(self, placed: Sequence["Placed"], with_cam: bool = False) -> list[Prediction]:
        """Classify inputs made ready by `place`, as one batch (a cine loop's frames each
        count as an image); one Prediction per input, in order."""
        pending = [item for item in placed if item.roi is not None and item.arrays is not None]
        if pending:
            self._propose_rois(pending)
        ready = [item for item in placed if item.arrays is not None]
        if ready:
            self._infer(ready, with_cam and self.has_cam)
        return [item.pred for item in placed]

    def _run(self, entries: list[tuple[str | None, DecodedScan | None, str | None]],
             with_cam: bool, setting: RegionSetting, requests: Sequence[RoiRequest | None] | None = None
             ) -> list[Prediction]:
        requests = requests if requests is not None else [None] * len(entries)
        return self.infer([self.place(path, scan, err, setting, request)
                           for (path, scan, err), request in zip(entries, requests)], with_cam)

    # ------------------------------------------------------------------ proposed boxes (roi "auto")

    @property
    def _roi_min_side(self) -> int:
        return ROI_MIN_SIDE

    def _propose_rois(self, items: list["Placed"]) -> None:
        """roi "auto": each input's lesion map over its scan region (its arrays, cut to
        the region by place), the box from the map, then its frames cut to that box and
        prepared again; the ROI pass is the inference that follows. No box proposed: the
        scan region is classified, and roi_source says so."""
        localiser = self.localiser               # read once: one proposer for the whole call
        proposer = LOCALISER if localiser is not None else GRADCAM
        if localiser is None and not self.has_cam:
            for item in items:
                item.pred.error = f"{item.pred.path or 'image'}: roi 'auto': {self.variant} cannot propose a box"
                item.arrays = None
            return
        threshold = float(localiser.threshold) if localiser is not None else GRADCAM_THRESHOLD
        margin = float(getattr(localiser, "margin", PROPOSAL_MARGIN)) if localiser is not None else PROPOSAL_MARGIN
        maps = self._localiser_maps(items, localiser) if localiser is not None else self._gradcam_maps(items)
        for item, lesion_map in zip(items, maps):
            item.roi = None
            if lesion_map is None:               # its error is set
                item.arrays = None
                continue
            try:
                box = propose(lesion_map, threshold, item.pred.region, self._roi_min_side, margin)
                if box is None:
                    item.pred.roi_source = none_proposed_source(proposer)
                    continue
                item.arrays = [prepare(_cut(region, box, item.pred.region), self.spec) for region in item.regions]
                item.pred.roi, item.pred.roi_source = box, proposed_source(proposer)
            except Exception as err:  # noqa: BLE001 - one odd image must not stop a batch or a folder
                item.pred.error = f"{item.pred.path or 'image'}: cannot propose a lesion box ({err})"
                item.arrays = None

    def _gradcam_maps(self, items: list["Placed"]) -> list[np.ndarray | None]:
        """The model's Grad-CAM over each input's scan region (its shown frame), 0..1 at the region's size."""
        with self._lock:
            batch = self.backend.input_buffer(len(items))
            for k, item in enumerate(items):
                batch[k] = item.arrays[len(item.arrays) // 2]
            try:
                _, cams, _ = self.backend.run_all(batch, True, False)
            except Exception as err:  # noqa: BLE001 - reported per image, never a crash
                reason = f"inference failed ({err.__class__.__name__}: {' '.join(str(err).split())[:300]})"
                for item in items:
                    item.pred.error = f"{item.pred.path or 'image'}: proposing a lesion box: {reason}"
                return [None] * len(items)
            return [gradcam.cam_to_image(cams[k], item.pred.region.height, item.pred.region.width)
                    for k, item in enumerate(items)]

    def _localiser_maps(self, items: list["Placed"], localiser: Localiser) -> list[np.ndarray | None]:
        """The localiser's lesion map over each input's scan region (its shown frame, marks erased)."""
        maps: list[np.ndarray | None] = []
        for item in items:
            region = item.regions[len(item.regions) // 2]
            try:
                lesion_map = np.asarray(localiser.lesion_map(region), dtype=np.float32)
                if lesion_map.shape != region.shape[:2]:
                    raise ValueError(f"its map is {lesion_map.shape}, not the region's {region.shape[:2]}")
            except Exception as err:  # noqa: BLE001 - one odd image must not stop a batch or a folder
                item.pred.error = f"{item.pred.path or 'image'}: the lesion localiser failed ({err})"
                lesion_map = None
            maps.append(lesion_map)
        return maps

    def _infer(self, ready: list["Placed"], want_cam: bool) -> None:
        n_frames = sum(len(item.arrays) for item in ready)
        with self._lock:
            batch = self.backend.input_buffer(n_frames)
            k = 0
            for item in ready:
                for array in item.arrays:
                    batch[k] = array
                    k += 1
            started = time.perf_counter()
            try:
                probs, cams, scores = self.backend.run_all(batch, want_cam, self.has_ood)
            except Exception as err:  # noqa: BLE001 - reported per image, never a crash
                reason = f"inference failed ({err.__class__.__name__}: {' '.join(str(err).split())[:300]})"
                for item in ready:
                    item.pred.error = f"{item.pred.path or 'image'}: {reason}"
                return
            per_frame = (time.perf_counter() - started) / n_frames
        if self.site is not None:
            probs = self.site.recalibrate(np.asarray(probs, dtype=np.float64).reshape(-1))
        k = 0
        for item in ready:
            rows = slice(k, k + len(item.arrays))
            k += len(item.arrays)
            self._fill(item.pred, item.scan, probs[rows], None if cams is None else cams[rows],
                       None if scores is None else scores[rows])
            item.pred.seconds = per_frame * len(item.arrays)

    def _fill(self, pred: Prediction, scan: DecodedScan, probs, cams, scores) -> None:
        """One input's result from the model's outputs for its frames."""
        values = [float(p) for p in probs]
        if not all(math.isfinite(p) for p in values):
            pred.error = f"{pred.path or 'image'}: the model returned a non-finite probability"
            return
        p = values[0] if len(values) == 1 else float(np.mean(values))
        pred.probability = p
        if pred.roi is not None and self.roi_threshold is not None:
            pred.threshold = self.roi_threshold     # a box is read at its own operating point
        pred.label = self.positive if p >= pred.threshold else self.negative
        if scan.is_cine:
            pred.frames = FrameResults(scan.frame_count, list(scan.frame_numbers), values,
                                       "mean" if len(values) > 1 else "single frame")
        if cams is not None:
            # an ROI's map goes back where the ROI lies (0 elsewhere), so overlays line up
            pred.cam = _cam_on_image(cams[len(values) // 2], pred.roi or pred.region, scan.display.shape[:2])
        if scores is not None:
            finite = [float(s) for s in scores if math.isfinite(float(s))]
            # a non-finite distance is as far from the training data as it gets
            pred.ood_score = max(finite) if len(finite) == len(scores) else None
            pred.out_of_distribution = pred.ood_score is None or pred.ood_score >= self.ood_threshold


# ---------------------------------------------------------------------- helpers


def choose_variant(manifest: Manifest, name: str | None, fmt: str | None = None) -> VariantEntry:
    """The named variant, or the default one; `fmt` ("onnx"/"tflite", from an explicit
    --backend) limits the default to variants that engine can run."""
    if name is not None:
        try:
            return manifest.variant(name)
        except KeyError as err:
            raise ModelLoadError(str(err.args[0])) from None
    by_name = {v.name: v for v in manifest.variants if fmt is None or v.format == fmt}
    for preferred in DEFAULT_VARIANT_ORDER:
        if preferred in by_name and by_name[preferred].usable:
            return by_name[preferred]
    usable = [v for v in manifest.usable_variants() if fmt is None or v.format == fmt]
    if fmt is not None and not usable:
        raise ModelLoadError(f"the export has no usable .{fmt} variant for this backend (variants: "
                             + (", ".join(f"{v.name} ({v.format}, {v.status})" for v in manifest.variants) or "none")
                             + ")")
    onnx = [v for v in usable if v.format == "onnx"]
    if onnx or usable:
        return (onnx or usable)[0]
    listing = ", ".join(f"{v.name} ({v.status})" for v in manifest.variants) or "none"
    raise ModelLoadError(f"the export has no usable variant (variants: {listing})")


def _verify_sha256(data: bytes, entry: VariantEntry, file: Path) -> None:
    if not entry.sha256:
        raise ModelLoadError(f"{file}: the manifest records no sha256 for variant {entry.name!r}, so the file "
                             "can't be verified (verify=False skips the check)")
    actual = sha256_bytes(data)
    if actual.lower() != entry.sha256.lower():
        raise ModelLoadError(
            f"{file}: sha256 mismatch: the manifest says {entry.sha256}, the file has {actual}. The file was "
            "changed or damaged after export (or belongs to another export); refusing to run it."
        )


def _backend(engine: str, data: bytes, file: Path, image_size: int, threads: int) -> Backend:
    if engine == "openvino":
        external = check_onnx_external_data(data, file.parent, str(file))
        try:
            return OpenVinoBackend(data, file, image_size, threads, name=str(file), external_data=bool(external))
        except ModelLoadError:
            raise
        except Exception as err:  # OpenVINO raises its own exception types
            raise ModelLoadError(f"{file}: OpenVINO cannot load it ({' '.join(str(err).split())[:300]})") from None
    if engine == "onnxruntime":
        check_onnx_external_data(data, file.parent, str(file))
        try:
            return OnnxBackend(data, file.parent, image_size, threads, name=str(file))
        except ModelLoadError:
            raise
        except Exception as err:  # ONNX Runtime raises its own exception types
            raise ModelLoadError(f"{file}: ONNX Runtime cannot load it ({' '.join(str(err).split())})") from None
    if engine == "litert":
        return TfliteBackend(data, image_size, threads, name=str(file))
    raise ModelLoadError(f"{file}: unknown engine {engine!r}")


def _not_an_export(path: Path) -> str:
    if (path / "model.keras").exists() or (path / "run.json").exists():
        return (f"{path} is a training run directory, not an export: the runtime does not load Keras models. "
                f"Run `bcd export {path} --out EXPORT_DIR` and load EXPORT_DIR.")
    if (path / "saved_model.pb").exists():
        return f"{path} is a TensorFlow SavedModel: refusing to load it (export to ONNX/TFLite with `bcd export`)"
    return f"{path}: no {MANIFEST_NAME} in this folder; expected an export directory from `bcd export`"


def _item_name(item) -> str | None:
    return str(item) if isinstance(item, (str, os.PathLike)) else None


def _cut(region_image: np.ndarray, box: Box, region: ScanRegion) -> np.ndarray:
    """The part of a frame's scan-region picture under `box` (original-image pixels)."""
    return np.ascontiguousarray(box.shifted(-region.x, -region.y).crop(region_image))


def _cam_on_image(cam: np.ndarray, region: "ScanRegion | Box", shape: tuple[int, int]) -> np.ndarray:
    """The map of the region (or ROI), placed where it lies in the image (0 outside), so
    it overlays the original image as before."""
    inside = gradcam.cam_to_image(cam, region.height, region.width)
    if (region.x, region.y, region.width, region.height) == (0, 0, shape[1], shape[0]):
        return inside
    full = np.zeros(shape, np.float32)
    full[region.y:region.y + region.height, region.x:region.x + region.width] = inside
    return full
