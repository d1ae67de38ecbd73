"""The export manifest: THE contract between `bcd export` and the runtime.

`bcd export` writes one `manifest.json` next to the model files; the runtime reads it to
learn how to preprocess an image (the PreprocessSpec dict), which output is which, the
operating threshold and labels, and which variants passed the parity checks. Only
variants with status "ok" may be served.

Stdlib only (the runtime install has no TensorFlow, no pydantic): plain dataclasses with
explicit `to_dict` / `from_dict`, and `from_dict` checks every field so a damaged or
foreign manifest fails with one clear ValueError instead of a KeyError deep inside the
runtime.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime import atomic

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "dynamic-int8")
STATUSES = ("ok", "failed", "error")
INT8_WEIGHT_KINDS = ("7bit", "uint8")   # how an ONNX Runtime INT8 file stores its weights (export.onnx_convert.INT8_WEIGHTS)
OUTPUT_NAMES = ("malignancy", "cam", "ood")
# Key under which each ONNX file carries the manifest essentials in its metadata_props.
ONNX_METADATA_KEY = "bcd_manifest"


# --------------------------------------------------------------------------- checking

def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"invalid manifest: {where}: {message}")


def _get(d: Any, key: str, where: str, types: type | tuple[type, ...], optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise _fail(where, f"expected an object, got {type(d).__name__}")
    if key not in d or (d[key] is None and optional):
        if optional:
            return None
        raise _fail(f"{where}.{key}" if where else key, "missing")
    value = d[key]
    # bool is an int in Python; a number field holding true/false is still wrong
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(f"{where}.{key}" if where else key, f"expected {_names(types)}, got a boolean")
    if not isinstance(value, types):
        raise _fail(f"{where}.{key}" if where else key, f"expected {_names(types)}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(f"{where}.{key}" if where else key, "must be a finite number")
    return value


def _refuse_unknown(d: dict[str, Any], cls: type, where: str) -> None:
    # A key this code does not know is a manifest from another tool or a newer schema,
    # or a hand edit: refused rather than silently ignored, since the runtime would
    # run the model without the setting it carries. The known keys are the dataclass's
    # fields, which is exactly what to_dict() writes.
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(map(repr, unknown))}: not written by this version of "
                    "`bcd export` (export again with a matching bcd, or update the runtime)")


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _choice(value: str, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise _fail(where, f"{value!r} is not one of {', '.join(allowed)}")
    return value


_NUM = (int, float)


# --------------------------------------------------------------------------- parts

@dataclass
class Parity:
    """A variant's agreement with the original Keras model on the parity data."""

    max_abs_diff: float                  # max |p_variant - p_keras| over the images
    flip_rate: float                     # share of images whose decision (p >= threshold) changed
    auc: float | None                    # AUC of the variant (None: only one class in the data)
    auc_original: float | None           # AUC of the Keras model on the same images
    auc_drop: float | None               # auc_original - auc
    n: int                               # images compared
    cam_correlation: float | None = None  # mean per-image Pearson r of the CAM vs Keras' (None: no CAM)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "parity") -> "Parity":
        return cls(
            max_abs_diff=float(_get(d, "max_abs_diff", where, _NUM)),
            flip_rate=float(_get(d, "flip_rate", where, _NUM)),
            auc=_opt_float(_get(d, "auc", where, _NUM, optional=True)),
            auc_original=_opt_float(_get(d, "auc_original", where, _NUM, optional=True)),
            auc_drop=_opt_float(_get(d, "auc_drop", where, _NUM, optional=True)),
            n=_get(d, "n", where, int),
            cam_correlation=_opt_float(_get(d, "cam_correlation", where, _NUM, optional=True)),
        )


def _opt_float(value) -> float | None:
    return None if value is None else float(value)


@dataclass
class VariantEntry:
    """One exported model file."""

    name: str                            # e.g. "onnx-int8"
    format: str                          # "onnx" | "tflite"
    precision: str                       # "fp32" | "fp16" | "int8" | "dynamic-int8"
    file: str | None                     # file name inside the export directory (None: not written)
    sha256: str | None
    size_bytes: int | None
    outputs: list[str]                   # ["malignancy", "cam"] or ["malignancy"]
    status: str                          # "ok" | "failed" (parity beyond tolerance) | "error" (not produced)
    reason: str | None = None            # why failed / error
    parity: Parity | None = None
    notes: list[str] = field(default_factory=list)
    # Optional (older manifests lack them): the file's gzip-compressed size (what a
    # download costs), and for magnitude-pruned variants the share of zero weights in
    # the Conv2D/Dense kernels.
    compressed_bytes: int | None = None
    sparsity: float | None = None
    # Optional (older manifests lack it): this variant's out-of-distribution flag
    # threshold, chosen on its own validation-split scores; see the manifest's "ood".
    # {"threshold", "false_alarm_rate" (share of validation images flagged), "n", "chosen_on"}
    ood: dict[str, Any] | None = None
    # Optional (older manifests and other variants lack it): how an ONNX Runtime
    # post-training INT8 file stores its weights, "7bit" (int8 in 7 bits) or "uint8"
    # (`bcd export --int8-weights`); engines run the two at different speeds.
    int8_weights: str | None = None

    @property
    def usable(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parity"] = self.parity.to_dict() if self.parity else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "variant") -> "VariantEntry":
        name = _get(d, "name", where, str)
        where = f"variants[{name}]"
        _refuse_unknown(d, cls, where)
        status = _choice(_get(d, "status", where, str), STATUSES, f"{where}.status")
        file = _get(d, "file", where, str, optional=True)
        if status != "error" and file is None:
            raise _fail(f"{where}.file", f"missing (status {status!r} needs a file)")
        outputs = _get(d, "outputs", where, list)
        for out in outputs:
            _choice(out, OUTPUT_NAMES, f"{where}.outputs")
        if "malignancy" not in outputs:
            raise _fail(f"{where}.outputs", "must include 'malignancy'")
        parity = _get(d, "parity", where, dict, optional=True)
        notes = _get(d, "notes", where, list, optional=True) or []
        compressed = _get(d, "compressed_bytes", where, int, optional=True)
        if compressed is not None and compressed < 0:
            raise _fail(f"{where}.compressed_bytes", "must not be negative")
        sparsity = _opt_float(_get(d, "sparsity", where, _NUM, optional=True))
        if sparsity is not None and not 0.0 <= sparsity <= 1.0:
            raise _fail(f"{where}.sparsity", f"{sparsity} is not a fraction in 0..1")
        ood = variant_ood(_get(d, "ood", where, dict, optional=True), f"{where}.ood")
        int8_weights = _get(d, "int8_weights", where, str, optional=True)
        if int8_weights is not None:
            _choice(int8_weights, INT8_WEIGHT_KINDS, f"{where}.int8_weights")
        if ood is not None and "ood" not in outputs:
            raise _fail(f"{where}.ood", "a threshold for a variant without an 'ood' output")
        return cls(
            name=name,
            format=_choice(_get(d, "format", where, str), FORMATS, f"{where}.format"),
            precision=_choice(_get(d, "precision", where, str), PRECISIONS, f"{where}.precision"),
            file=file,
            sha256=_get(d, "sha256", where, str, optional=True),
            size_bytes=_get(d, "size_bytes", where, int, optional=True),
            outputs=list(outputs),
            status=status,
            reason=_get(d, "reason", where, str, optional=True),
            parity=Parity.from_dict(parity, f"{where}.parity") if parity is not None else None,
            notes=[str(n) for n in notes],
            compressed_bytes=compressed,
            sparsity=sparsity,
            ood=ood,
            int8_weights=int8_weights,
        )


def variant_ood(ood: dict[str, Any] | None, where: str) -> dict[str, Any] | None:
    """Check a variant's OOD record (the manifest's, or the one embedded in an ONNX file)."""
    if ood is None:
        return None
    threshold = float(_get(ood, "threshold", where, _NUM))
    rate = _get(ood, "false_alarm_rate", where, _NUM, optional=True)
    if rate is not None and not 0.0 <= rate <= 1.0:
        raise _fail(f"{where}.false_alarm_rate", f"{rate} is not a fraction in 0..1")
    n = _get(ood, "n", where, int, optional=True)
    if n is not None and n < 0:
        raise _fail(f"{where}.n", "must not be negative")
    _get(ood, "chosen_on", where, str, optional=True)
    return dict(ood, threshold=threshold)


LOCALISER_FILE = "localiser.onnx"


@dataclass
class LocaliserEntry:
    """The lesion localiser (issue 21): a small segmentation network of its own, shipped
    beside the classifier, whose lesion map proposes a box when none is drawn
    (runtime/localiser.py). Its input is the classifier's: the image cut to its scan
    region, prepared by runtime.preprocessing with `preprocessing` (its image_size is
    the input size); its output, `output` in the graph, a (batch, h, w, 1) map of lesion
    probabilities, h x w = `output_size`. The proposed box is
    runtime.lesion_box.box_from_map(map at the image's size, threshold, margin)."""

    file: str                            # file name inside the export directory
    sha256: str
    size_bytes: int
    preprocessing: dict[str, Any]        # runtime.preprocessing.PreprocessSpec.to_dict()
    output_size: list[int]               # [height, width] of the lesion map
    threshold: float                     # map threshold of the proposed box
    margin: float                        # share of the box's side added on each side
    threshold_chosen_on: str = "validation split"
    input: str = "image"                 # the graph's input name (NHWC float32)
    output: str = "lesion"               # the graph's output name
    format: str = "onnx"
    precision: str = "fp32"
    source_run: str | None = None        # the run whose training split it learnt from
    split_sha256: str | None = None      # sha256 of that run's split.json (its test images are held out)
    params: int | None = None
    # {"val"|"test": {"all"|<source>: {"lesion_images", "mean_iou", "iou_at_least_half", ...}}}:
    # how well the proposed box matches the lesion mask's box (runtime.lesion_scores)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def input_size(self) -> int:
        return int(self.preprocessing["image_size"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "localiser") -> "LocaliserEntry":
        _refuse_unknown(d, cls, where)
        preprocessing = _get(d, "preprocessing", where, dict)
        size = _get(preprocessing, "image_size", f"{where}.preprocessing", int)
        if size < 1:
            raise _fail(f"{where}.preprocessing.image_size", "must be positive")
        output_size = _get(d, "output_size", where, list)
        if len(output_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                            for v in output_size):
            raise _fail(f"{where}.output_size", f"expected [height, width], got {output_size}")
        threshold = float(_get(d, "threshold", where, _NUM))
        if not 0.0 <= threshold <= 1.0:
            raise _fail(f"{where}.threshold", f"{threshold} is not a probability")
        margin = float(_get(d, "margin", where, _NUM))
        if not 0.0 <= margin <= 1.0:
            raise _fail(f"{where}.margin", f"{margin} is not a share in 0..1")
        size_bytes = _get(d, "size_bytes", where, int)
        if size_bytes < 0:
            raise _fail(f"{where}.size_bytes", "must not be negative")
        params = _get(d, "params", where, int, optional=True)
        return cls(
            file=_get(d, "file", where, str),
            sha256=_get(d, "sha256", where, str),
            size_bytes=size_bytes,
            preprocessing=dict(preprocessing),
            output_size=list(output_size),
            threshold=threshold,
            margin=margin,
            threshold_chosen_on=_get(d, "threshold_chosen_on", where, str, optional=True) or "validation split",
            input=_get(d, "input", where, str, optional=True) or "image",
            output=_get(d, "output", where, str, optional=True) or "lesion",
            format=_choice(_get(d, "format", where, str, optional=True) or "onnx", ("onnx",), f"{where}.format"),
            precision=_choice(_get(d, "precision", where, str, optional=True) or "fp32", PRECISIONS,
                              f"{where}.precision"),
            source_run=_get(d, "source_run", where, str, optional=True),
            split_sha256=_get(d, "split_sha256", where, str, optional=True),
            params=params,
            figures=dict(_get(d, "figures", where, dict, optional=True) or {}),
            notes=[str(n) for n in (_get(d, "notes", where, list, optional=True) or [])],
        )


# --------------------------------------------------------------------------- manifest

@dataclass
class Manifest:
    tool: dict[str, str]                 # {"name", "version"}
    created: str                         # UTC, ISO 8601
    source_model: dict[str, str]         # {"path": "<run>/model.keras", "sha256"}
    preprocessing: dict[str, Any]        # runtime.preprocessing.PreprocessSpec.to_dict()
    labels: dict[str, Any]               # {"names": [...], "positive": "malignant"}
    threshold: dict[str, Any]            # {"value", "chosen_on", "policy"[, "roi": {...}]}
    input: dict[str, Any]                # {"name": "image", "shape": [null, s, s, 3], "dtype": "float32", "layout": "NHWC"}
    training_data: dict[str, Any]        # run.json "data" summary
    baseline: dict[str, Any]             # {"auc", "n", "data"}: the Keras model on the parity data
    variants: list[VariantEntry] = field(default_factory=list)
    qat_summary: dict[str, Any] | None = None
    export_settings: dict[str, Any] = field(default_factory=dict)  # calibration, tolerances, opset
    # Optional (older manifests lack it): arithmetic of the source Keras model,
    # {"macs": multiply-accumulates per image (Conv2D + Dense), "params": parameter count}.
    # Quantization and unstructured sparsity do not change it (dense kernels still multiply zeros).
    model_cost: dict[str, Any] | None = None
    # Optional (older manifests lack it; then no image is ever flagged): how the
    # out-of-distribution score is computed (export/ood.py): {"output": "ood", "method",
    # "feature_layer", "dim", "n_train", "classes", "shrinkage", "quantile", "rule", "chosen_on"}.
    # The thresholds are per variant (VariantEntry.ood).
    ood: dict[str, Any] | None = None
    # Optional (older manifests lack it; then the runtime uses the default finder, auto):
    # the scan-region finder's settings, runtime.scan_region.RegionConfig.to_dict(), so the
    # runtime crops images the way the model's training images were cropped.
    scan_region: dict[str, Any] | None = None
    # Optional (older manifests lack it; then the model's Grad-CAM proposes boxes): the lesion localiser
    # shipped beside the classifier (LocaliserEntry, runtime/localiser.py).
    localiser: LocaliserEntry | None = None
    schema_version: int = SCHEMA_VERSION

    # ---- access

    def variant(self, name: str) -> VariantEntry:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r} in the manifest (have: {', '.join(v.name for v in self.variants)})")

    def usable_variants(self) -> list[VariantEntry]:
        return [v for v in self.variants if v.usable]

    @property
    def threshold_value(self) -> float:
        return float(self.threshold["value"])

    @property
    def roi_threshold_value(self) -> float | None:
        """The operating threshold for a lesion box (`roi`), chosen on the validation
        split's lesion crops by the same policy; None: a model that has none (a box is
        then read at the whole-image threshold). A lesion fills a box, so a box's
        probabilities run higher than a whole scan's (benchmarks/studies/roi.py)."""
        roi = self.threshold.get("roi")
        return float(roi["value"]) if roi is not None else None

    def ood_threshold(self, variant: str) -> float | None:
        """The OOD flag threshold of a variant; None: this variant raises no flag (an
        older export, --no-ood, or a variant without the score)."""
        if self.ood is None:
            return None
        try:
            entry = self.variant(variant)
        except KeyError:
            return None
        return float(entry.ood["threshold"]) if entry.ood is not None and "ood" in entry.outputs else None

    # ---- serialisation

    def essentials(self) -> dict[str, Any]:
        """Everything except the variants list: what a lone model file must carry."""
        d = self.to_dict()
        d.pop("variants")
        return d

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool": dict(self.tool),
            "created": self.created,
            "source_model": dict(self.source_model),
            "preprocessing": dict(self.preprocessing),
            **({"scan_region": dict(self.scan_region)} if self.scan_region is not None else {}),
            "labels": dict(self.labels),
            "threshold": dict(self.threshold),
            "input": dict(self.input),
            "training_data": dict(self.training_data),
            "baseline": dict(self.baseline),
            "export_settings": dict(self.export_settings),
            "qat_summary": self.qat_summary,
            **({"model_cost": dict(self.model_cost)} if self.model_cost is not None else {}),
            **({"ood": dict(self.ood)} if self.ood is not None else {}),
            **({"localiser": self.localiser.to_dict()} if self.localiser is not None else {}),
            "variants": [v.to_dict() for v in self.variants],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        if not isinstance(d, dict):
            raise _fail("top level", f"expected an object, got {type(d).__name__}")
        version = _get(d, "schema_version", "", int)
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"unknown manifest schema version {version}: this code reads version {SCHEMA_VERSION} "
                "(export again with a matching bcd, or update the runtime)"
            )
        _refuse_unknown(d, cls, "top level")
        tool = _get(d, "tool", "", dict)
        for key in ("name", "version"):
            _get(tool, key, "tool", str)
        source = _get(d, "source_model", "", dict)
        for key in ("path", "sha256"):
            _get(source, key, "source_model", str)
        preprocessing = _get(d, "preprocessing", "", dict)
        _get(preprocessing, "image_size", "preprocessing", int)
        for key in ("mean", "std"):
            values = _get(preprocessing, key, "preprocessing", list)
            if len(values) != 3 or not all(isinstance(v, _NUM) and not isinstance(v, bool) for v in values):
                raise _fail(f"preprocessing.{key}", "expected three numbers")
        labels = _get(d, "labels", "", dict)
        names = _get(labels, "names", "labels", list)
        positive = _get(labels, "positive", "labels", str)
        if positive not in names:
            raise _fail("labels.positive", f"{positive!r} is not one of labels.names {names}")
        threshold = _get(d, "threshold", "", dict)
        value = _get(threshold, "value", "threshold", _NUM)
        if not 0.0 <= value <= 1.0:
            raise _fail("threshold.value", f"{value} is not a probability")
        roi = _get(threshold, "roi", "threshold", dict, optional=True)
        if roi is not None:
            roi_value = _get(roi, "value", "threshold.roi", _NUM)
            if isinstance(roi_value, bool) or not 0.0 <= roi_value <= 1.0:
                raise _fail("threshold.roi.value", f"{roi_value} is not a probability")
        inp = _get(d, "input", "", dict)
        _get(inp, "name", "input", str)
        shape = _get(inp, "shape", "input", list)
        if len(shape) != 4 or not all(s is None or (isinstance(s, int) and s > 0) for s in shape):
            raise _fail("input.shape", f"expected [batch, height, width, channels], got {shape}")
        _get(inp, "dtype", "input", str)
        _get(inp, "layout", "input", str)
        variants = _get(d, "variants", "", list)
        entries = [VariantEntry.from_dict(v, f"variants[{i}]") for i, v in enumerate(variants)]
        names_seen = [v.name for v in entries]
        if len(set(names_seen)) != len(names_seen):
            raise _fail("variants", "variant names must be unique")
        return cls(
            schema_version=version,
            tool=dict(tool),
            created=_get(d, "created", "", str),
            source_model=dict(source),
            preprocessing=dict(preprocessing),
            labels=dict(labels),
            threshold=dict(threshold),
            input=dict(inp),
            training_data=dict(_get(d, "training_data", "", dict)),
            baseline=dict(_get(d, "baseline", "", dict)),
            variants=entries,
            qat_summary=_get(d, "qat_summary", "", dict, optional=True),
            export_settings=dict(_get(d, "export_settings", "", dict, optional=True) or {}),
            model_cost=_model_cost(d),
            ood=_ood(d),
            scan_region=_scan_region(d),
            localiser=_localiser(d),
        )


def _model_cost(d: dict[str, Any]) -> dict[str, Any] | None:
    cost = _get(d, "model_cost", "", dict, optional=True)
    if cost is None:
        return None
    for key in ("macs", "params"):
        value = _get(cost, key, "model_cost", int)
        if value < 0:
            raise _fail(f"model_cost.{key}", "must not be negative")
    return dict(cost)


def _ood(d: dict[str, Any]) -> dict[str, Any] | None:
    ood = _get(d, "ood", "", dict, optional=True)
    if ood is None:
        return None
    if _get(ood, "output", "ood", str) != "ood":
        raise _fail("ood.output", f"{ood['output']!r} is not the 'ood' output")
    _get(ood, "method", "ood", str)
    quantile = _get(ood, "quantile", "ood", _NUM, optional=True)
    if quantile is not None and not 0.0 < quantile < 1.0:
        raise _fail("ood.quantile", f"{quantile} is not in 0..1")
    return dict(ood)


def _localiser(d: dict[str, Any]) -> LocaliserEntry | None:
    section = _get(d, "localiser", "", dict, optional=True)
    return None if section is None else LocaliserEntry.from_dict(section)


def _scan_region(d: dict[str, Any]) -> dict[str, Any] | None:
    region = _get(d, "scan_region", "", dict, optional=True)
    if region is None:
        return None
    from runtime.scan_crop import region_config_from_dict   # numpy and OpenCV: loaded only for this check
    try:
        return region_config_from_dict(region).to_dict()
    except ValueError as err:
        raise ValueError(f"invalid manifest: {err}") from None


def manifest_path(path_or_dir: str | os.PathLike) -> Path:
    path = Path(path_or_dir)
    return path / MANIFEST_NAME if path.is_dir() else path


def write_manifest(export_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Validate and write `export_dir/manifest.json` atomically; returns its path."""
    doc = manifest.to_dict()
    Manifest.from_dict(json.loads(json.dumps(doc)))   # never write a manifest we could not read back
    target = Path(export_dir) / MANIFEST_NAME
    atomic.write_json(target, doc)
    return target


def write_localiser(export_dir: str | os.PathLike, entry: LocaliserEntry | None) -> Path:
    """Set (or, with None, remove) the localiser section of an existing export's
    manifest, everything else unchanged; written atomically like every manifest. The
    localiser's file must already be in the export directory."""
    manifest = read_manifest(export_dir)
    manifest.localiser = entry
    return write_manifest(export_dir, manifest)


def write_roi_threshold(export_dir: str | os.PathLike, record: dict[str, Any] | None) -> Path:
    """Set (or, with None, remove) the lesion-box threshold of an existing export's
    manifest (threshold.roi: {"value", "chosen_on", "policy", "n", "malignant"}),
    everything else unchanged."""
    manifest = read_manifest(export_dir)
    threshold = {k: v for k, v in manifest.threshold.items() if k != "roi"}
    manifest.threshold = {**threshold, **({"roi": dict(record)} if record is not None else {})}
    return write_manifest(export_dir, manifest)


def read_manifest(path_or_dir: str | os.PathLike) -> Manifest:
    """Read a manifest from an export directory or a manifest.json path."""
    doc = atomic.read_json(manifest_path(path_or_dir),
                           missing=f"no {MANIFEST_NAME} at {{path}}: is this an export directory from `bcd export`?",
                           invalid="invalid manifest: {path} is not valid JSON ({reason})")
    return Manifest.from_dict(doc)


SPLIT_NAME = "split.json"


def split_file(export_dir: str | os.PathLike) -> Path:
    """The saved split: shipped beside the manifest, else in the source run directory."""
    export_dir = Path(export_dir)
    own = export_dir / SPLIT_NAME
    if own.is_file():
        return own
    source = read_manifest(export_dir / MANIFEST_NAME).source_model.get("path", "")
    for candidate in (export_dir.parent / source, Path(source)):
        if candidate.name == "model.keras" and (candidate.parent / SPLIT_NAME).is_file():
            return candidate.parent / SPLIT_NAME
    raise FileNotFoundError(f"{export_dir}: no {SPLIT_NAME} beside the manifest or in the source run; "
                            "score a labelled folder instead with --data")
