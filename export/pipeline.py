"""`bcd export`: a finished run -> ONNX / TFLite variants, each checked against the Keras
model, plus manifest.json (runtime/manifest.py) describing all of them.

Order of work: load the run and the parity images; Keras reference predictions (and the
baseline AUC); then each variant in turn: convert -> write the file atomically (ONNX
files carry the manifest essentials in their metadata) -> load the written file in its
real runtime -> parity. A variant that cannot be produced is recorded as "error" and the
others go on. The manifest is written last, so a directory with a manifest is complete.

Interruptions (Ctrl-C, SIGKILL, power loss): all files are first written into a hidden
staging folder next to --out (`.<name>.partial-<pid>-<random>`, never holding a
manifest). Only when everything is done are the files moved into --out (renames on the
same file system, milliseconds), the old manifest removed first and the new one moved
in last. So an export killed while it works leaves a previous export in --out intact
and loadable; one killed during the final moves leaves --out without a manifest, which
the runtime refuses ("no manifest.json"): a partial export is never taken for a valid one.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export import onnx_convert, tflite_convert
from export.adapt_reference import write_for_export
from export.int8_calibration import ImageCalibrationReader, representative_dataset
from export.config import ExportConfig, VariantSpec
from export.datasets import (ImageSet, RunInfo, calibration_images, lesion_crop_images, open_run, parity_images,
                             split_images)
from export.gradcam import with_cam_output
from export.ood import OOD_OUTPUT, OodStats, onnx_node_names
from export.parity import CAM, PROB, Tolerance, auc_or_none, compare, run_file
from runtime import atomic
from runtime.engines import engine_label
from runtime.host import tool_record, utc_now
from runtime.manifest import MANIFEST_NAME, ONNX_METADATA_KEY, Manifest, Parity, VariantEntry, write_manifest
from runtime.model_files import compressed_size, sha256_file
from runtime.preprocessing import prepare_batch

log = logging.getLogger(__name__)

_REASON_LIMIT = 600


@dataclass
class ExportResult:
    manifest: Manifest
    export_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)   # per variant, build + checks
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(v.status == "ok" for v in self.manifest.variants)

    @property
    def manifest_path(self) -> Path:
        return self.export_dir / MANIFEST_NAME


class _Lazy:
    """Compute shared inputs (the FP32 ONNX graph, calibration images, the QAT model) once,
    on first use; a failure is remembered and re-raised for every variant that needs it."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._values:
            try:
                self._values[key] = (True, make())
            except Exception as err:  # noqa: BLE001 - stored, re-raised below
                self._values[key] = (False, err)
        ok, value = self._values[key]
        if not ok:
            raise value
        return value

    def has(self, key: str) -> bool:
        return key in self._values and self._values[key][0]

    def peek(self, key: str) -> Any:
        return self._values[key][1] if self.has(key) else None


class _Exporter:
    def __init__(self, config: ExportConfig, run: RunInfo, model, out: Path):
        self.config, self.run, self.model, self.out = config, run, model, out
        self.spec = run.spec
        self.lazy = _Lazy()
        # The OOD score's statistics, fitted on the training split's features (None: no
        # OOD output, e.g. --no-ood or the training images are not available).
        self.ood_stats: OodStats | None = self._fit_ood(model, "the model") if config.ood else None
        self.cam_model = self._graph_model(model, self.ood_stats)

    # ---- the OOD score (export/ood.py)

    def _fit_ood(self, model, what: str) -> OodStats | None:
        from export.ood import features_of, fit_stats
        try:
            train = self.train_images()
            images, labels = list(train.images), train.labels
            crops = lesion_crop_images(self.run, "train")
            if crops is not None:   # a model that also reads lesion boxes: its boxes are in distribution too
                images, labels = images + list(crops.images), np.concatenate([labels, crops.labels])
            x = prepare_batch(images, self.spec)
            stats = fit_stats(features_of(model, x, self.config.ood_layers, self.config.batch_size), labels)
        except Exception as err:  # noqa: BLE001 - the export goes on without the flag
            log.warning("no out-of-distribution score for %s: %s", what, err)
            return None
        log.info("  OOD score for %s: Mahalanobis on %d pooled features (%s) of %d training images "
                 "(Ledoit-Wolf shrinkage %.3f)", what, stats.dim, ", ".join(self.config.ood_layers), stats.n_train,
                 stats.shrinkage)
        return stats

    def _graph_model(self, model, stats: OodStats | None):
        """What every non-QAT variant is converted from: probability, Grad-CAM and, with
        statistics, the OOD score."""
        from export.ood import with_ood_output
        cam_model = with_cam_output(model)
        return with_ood_output(cam_model, stats, self.config.ood_layers) if stats is not None else cam_model

    def sparse_ood_stats(self) -> OodStats | None:
        # the pruned model's features differ from the original's: its own statistics
        return self.lazy.get("sparse_ood", lambda: self._fit_ood(self.sparse().model, "the sparse model")
                             if self.config.ood else None)

    def outputs_of(self, variant: VariantSpec) -> tuple[str, ...]:
        if variant.qat:
            return variant.outputs
        stats = self.sparse_ood_stats() if variant.sparse else self.ood_stats
        return variant.outputs + ((OOD_OUTPUT,) if stats is not None else ())

    def validation_inputs(self) -> np.ndarray:
        """The validation split, preprocessed: where OOD thresholds are chosen (used only
        when the parity checks run on another folder)."""
        return self.lazy.get("val_inputs", lambda: prepare_batch(list(split_images(self.run, "val").images),
                                                                 self.spec))

    # ---- shared inputs

    def onnx_fp32(self):
        def make():
            log.info("  converting Keras -> ONNX (tf2onnx, opset %d)", self.config.onnx_opset)
            return onnx_convert.keras_to_onnx(self.cam_model, self.spec.image_size, self.config.onnx_opset)
        return self.lazy.get("onnx_fp32", make)

    def calibration(self) -> ImageSet:
        def make():
            c = self.config
            images = calibration_images(self.run, c.calib_data, c.calib_size, c.seed)
            log.info("  calibration images: %s", images.description)
            return images
        return self.lazy.get("calibration", make)

    def train_images(self):
        """The training split, read once for QAT and magnitude pruning alike."""
        return self.lazy.get("train_images", lambda: split_images(self.run, "train"))

    def qat(self):
        def make():
            from export.qat import quantization_aware_finetune
            c = self.config
            train = self.train_images()
            log.info("  quantization-aware fine-tuning: %d epoch(s) on %s, learning rate %g",
                     c.qat_epochs, train.description, c.qat_learning_rate)
            return quantization_aware_finetune(self.model, train.images, train.labels, self.spec, c.qat_epochs,
                                               c.qat_learning_rate, c.qat_batch_size, c.seed)
        return self.lazy.get("qat", make)

    def sparse(self):
        def make():
            from export.sparsity import magnitude_prune
            c = self.config
            train = self.train_images()
            log.info("  magnitude pruning to %.0f%% sparsity: %d fine-tuning epoch(s) on %s, learning rate %g",
                     100 * c.sparsity, c.sparsity_epochs, train.description, c.sparsity_learning_rate)
            return magnitude_prune(self.model, train.images, train.labels, self.spec, c.sparsity,
                                   c.sparsity_epochs, c.sparsity_learning_rate, c.qat_batch_size, c.seed)
        return self.lazy.get("sparse", make)

    def onnx_sparse(self):
        def make():
            log.info("  converting the sparse Keras model -> ONNX (tf2onnx, opset %d)", self.config.onnx_opset)
            return onnx_convert.keras_to_onnx(self._graph_model(self.sparse().model, self.sparse_ood_stats()),
                                              self.spec.image_size, self.config.onnx_opset)
        return self.lazy.get("onnx_sparse", make)

    def _calibration_note(self) -> str:
        calib = self.calibration()
        return f"calibrated on {len(calib.images)} images: {calib.description}"

    # ---- builders: each returns (onnx.ModelProto | tflite bytes, notes)

    def build(self, variant: VariantSpec, int8_weights: str = "7bit"):
        """int8_weights: how an ONNX Runtime INT8 file stores its weights (see retries_with_uint8)."""
        name = variant.name
        if variant.sparse:
            import onnx
            sparse = self.sparse()
            notes = [f"{100 * sparse.achieved:.1f}% of the Conv2D/Dense kernel weights are zero (target "
                     f"{100 * sparse.target:.0f}%; schedule {sparse.schedule}; fine-tuned {sparse.epochs} epoch(s) "
                     f"on {sparse.n_train} training images)"]
            if variant.precision == "fp32":
                proto = onnx.ModelProto()
                proto.CopyFrom(self.onnx_sparse())
                return proto, notes
            calib = self.calibration()
            reader = ImageCalibrationReader(calib.images, self.spec, self.config.calib_batch_size)
            proto, qnotes = onnx_convert.quantize_int8(self.onnx_sparse(), reader, self.config.calib_method,
                                                       int8_weights, onnx_node_names)
            return proto, notes + qnotes + [self._calibration_note()]
        if name == "onnx-fp32":
            import onnx
            proto = onnx.ModelProto()
            proto.CopyFrom(self.onnx_fp32())
            return proto, []
        if name == "onnx-int8":
            calib = self.calibration()
            reader = ImageCalibrationReader(calib.images, self.spec, self.config.calib_batch_size)
            log.info("  quantizing (ONNX Runtime quantize_static, %s calibration)", self.config.calib_method)
            proto, notes = onnx_convert.quantize_int8(self.onnx_fp32(), reader, self.config.calib_method,
                                                      int8_weights, onnx_node_names)
            return proto, notes + [self._calibration_note()]
        if name == "onnx-fp16":
            return onnx_convert.to_fp16(self.onnx_fp32(), onnx_node_names), []
        if name == "onnx-int8-qat":
            qat = self.qat()
            log.info("  converting the QAT model -> ONNX")
            proto = onnx_convert.keras_to_onnx(qat.model, self.spec.image_size, self.config.onnx_opset)
            return onnx_convert.fold_quantized_weights(proto), []
        if variant.format == "tflite":
            source = self.qat().model if variant.qat else self.cam_model
            representative, notes = None, []
            if variant.precision == "int8":
                representative = representative_dataset(self.calibration().images, self.spec)
                notes.append(self._calibration_note())
            log.info("  converting -> TFLite (%s)", variant.precision)
            return tflite_convert.convert(source, variant.precision, representative), notes
        raise ValueError(f"no builder for variant {name!r}")

    # ---- one variant end to end

    def export_variant(self, variant: VariantSpec, essentials: dict, reference: dict, labels: np.ndarray,
                       x_parity: np.ndarray) -> VariantEntry:
        entry = VariantEntry(name=variant.name, format=variant.format, precision=variant.precision,
                             file=None, sha256=None, size_bytes=None, outputs=list(variant.outputs),
                             status="error", notes=list(variant.notes))
        try:
            expected = self.outputs_of(variant)
            entry.outputs = list(expected)
            target = self.out / variant.file_name
            first = "uint8" if self.config.int8_weights == "uint8" else "7bit"
            tried = self._checked_build(variant, first, expected, reference, labels, x_parity, target)
            if tried.problems and self.retries_with_uint8(variant):
                log.info("  %s failed the parity checks with 7-bit weights (%s): quantizing again with uint8 "
                         "weights", variant.name, "; ".join(tried.problems))
                again = self._checked_build(variant, "uint8", expected, reference, labels, x_parity, target)
                tried = _kept_of(tried, again)
            entry.notes.extend(tried.notes)
            if self.uses_ort_quantizer(variant):
                entry.int8_weights = tried.int8_weights
            artifact, model, outputs = tried.artifact, tried.model, tried.outputs
            if OOD_OUTPUT in outputs:
                entry.ood = self._ood_threshold(variant, model, outputs[OOD_OUTPUT])
                log.info("  OOD threshold %.4g: %.1f%% of %d validation images flagged", entry.ood["threshold"],
                         100 * entry.ood["false_alarm_rate"], entry.ood["n"])
            if variant.format == "onnx":
                self._write_onnx(artifact, variant, target, essentials, entry)
            self._record_file(variant, target, entry)
            entry.parity = tried.parity
            entry.status = "failed" if tried.problems else "ok"
            entry.reason = "; ".join(tried.problems) or None
        except Exception as err:  # noqa: BLE001 - one broken format must not stop the others
            message = " ".join(f"{err.__class__.__name__}: {err}".split())
            entry.status, entry.reason = "error", message[:_REASON_LIMIT]
            log.error("  %s: %s", variant.name, entry.reason)
            log.debug("traceback", exc_info=True)
        return entry

    def retries_with_uint8(self, variant: VariantSpec) -> bool:
        """Whether a failed 7-bit INT8 file is quantized again with uint8 weights: the ONNX
        Runtime post-training variants under --int8-weights auto. A model whose 7-bit weights
        change its calls (measured: docs/results.md, "INT8 weights") keeps an INT8 file at
        8-bit precision instead of none, at the U8U8 kernels' speed."""
        return self.config.int8_weights == "auto" and self.uses_ort_quantizer(variant)

    @staticmethod
    def uses_ort_quantizer(variant: VariantSpec) -> bool:
        """Whether ONNX Runtime's post-training quantizer writes the variant's INT8 weights."""
        return variant.format == "onnx" and variant.precision == "int8" and not variant.qat

    def _checked_build(self, variant: VariantSpec, int8_weights: str, expected, reference: dict,
                       labels: np.ndarray, x_parity: np.ndarray, target: Path) -> "_Checked":
        """Build one variant and run it on the parity images against the Keras model."""
        artifact, notes = self.build(variant, int8_weights)
        # An ONNX model runs from its bytes, so that the file is written once, with the
        # OOD threshold that its own scores choose in its metadata; a TFLite model from
        # its file.
        model = artifact.SerializeToString() if variant.format == "onnx" else self._write_tflite(artifact, target)
        log.info("  checking %s in %s against the Keras model (%d images)", target.name,
                 engine_label("onnxruntime" if variant.format == "onnx" else "litert"), len(x_parity))
        outputs = run_file(variant.format, model, x_parity, self.config.batch_size)
        if sorted(outputs) != sorted(expected):
            raise RuntimeError(f"the model's outputs are {sorted(outputs)}, expected {list(expected)}")
        parity = compare(outputs[PROB], reference[PROB], labels, self.run.threshold,
                         outputs.get(CAM), reference[CAM] if CAM in outputs else None)
        problems = Tolerance(self.config.max_auc_drop, self.config.max_flip_rate).violations(parity)
        return _Checked(int8_weights, artifact, model, outputs, parity, problems, list(notes))

    @staticmethod
    def _write_tflite(artifact: bytes, target: Path) -> Path:
        atomic.write_bytes(target, artifact)
        return target

    @staticmethod
    def _write_onnx(artifact, variant: VariantSpec, target: Path, essentials: dict, entry: VariantEntry) -> None:
        """Write the file atomically, with the manifest essentials and this variant's own
        fields (its OOD threshold too) in its metadata: a lone .onnx file runs as exported."""
        own = {"name": variant.name, "format": variant.format, "precision": variant.precision,
               "outputs": list(entry.outputs)}
        if entry.ood is not None:
            own["ood"] = dict(entry.ood)
        onnx_convert.set_metadata(artifact, ONNX_METADATA_KEY, dict(essentials, variant=own))
        onnx_convert.save(artifact, target)

    def _record_file(self, variant: VariantSpec, target: Path, entry: VariantEntry) -> None:
        """The written file's name, size, checksum and compressed size, once."""
        entry.file, entry.size_bytes, entry.sha256 = target.name, target.stat().st_size, sha256_file(target)
        entry.compressed_bytes = compressed_size(target)
        if variant.sparse:
            entry.sparsity = round(self.sparse().achieved, 6)

    def _ood_threshold(self, variant: VariantSpec, model: Path | bytes, parity_scores: np.ndarray) -> dict:
        """This variant's own flag threshold, chosen on its scores of the validation split
        (the parity images, unless --data named another folder)."""
        from export.ood import choose_threshold
        scores = parity_scores
        if self.config.parity_data:
            scores = run_file(variant.format, model, self.validation_inputs(), self.config.batch_size)[OOD_OUTPUT]
        record = choose_threshold(scores, self.config.ood_quantile)
        record["chosen_on"] = "validation split"
        return record


@dataclass
class _Checked:
    """One build of a variant and its parity against the Keras model."""
    int8_weights: str
    artifact: Any
    model: Any                  # ONNX bytes or the TFLite file
    outputs: dict
    parity: Parity
    problems: list[str]
    notes: list[str]


def _kept_of(first: _Checked, second: _Checked) -> _Checked:
    """Of a failed 7-bit build and its uint8 rebuild, the one that fails fewer checks
    (then: changes fewer calls), with notes saying what happened to both."""
    def brief(c: _Checked) -> str:
        return (f"{c.parity.flip_rate:.1%} of calls changed, largest probability change {c.parity.max_abs_diff:.3f}"
                + (f" ({'; '.join(c.problems)})" if c.problems else ""))
    key = (lambda c: (len(c.problems), c.parity.flip_rate, c.parity.max_abs_diff))
    kept = second if key(second) < key(first) else first
    kept.notes.append(f"7-bit weights failed the parity checks: {brief(first)}; quantized again with uint8 "
                      f"weights: {brief(second)}; kept the {kept.int8_weights} file")
    return kept


def _roi_threshold(staging: Path, run: RunInfo) -> None:
    """A run trained with lesion crops gets a lesion-box threshold (export/roi_threshold.py)."""
    from export.roi_threshold import fit_roi_threshold
    try:
        fit_roi_threshold(staging, run.run.root)
    except Exception as err:  # noqa: BLE001 - the export stands without it (boxes use the model's threshold)
        log.warning("no lesion-box threshold: %s", err)


def _keras_reference(graph_model, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """The source model's outputs: probability, Grad-CAM and (when present) the OOD score."""
    names = [PROB, CAM, OOD_OUTPUT]
    parts: dict[str, list] = {}
    for i in range(0, len(x), batch_size):
        for name, value in zip(names, graph_model(x[i:i + batch_size], training=False)):
            parts.setdefault(name, []).append(np.asarray(value).reshape(-1) if name == PROB else np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _ood_section(stats: OodStats | None, config: ExportConfig) -> dict | None:
    """The manifest's description of the OOD score; each variant records its own threshold."""
    from export.ood import METHOD
    if stats is None:
        return None
    quantile = config.ood_quantile
    return {
        "output": OOD_OUTPUT, "method": METHOD, "feature_layers": list(config.ood_layers), "dim": stats.dim,
        "n_train": stats.n_train, "classes": list(stats.classes), "shrinkage": round(stats.shrinkage, 6),
        "quantile": quantile,
        "rule": (f"flag an image when its score is at or above the variant's threshold: the {100 * quantile:g}th "
                 "percentile of that variant's scores on the validation split"),
        "chosen_on": "validation split",
    }


def _model_cost(model) -> dict | None:
    from train.cost import model_cost  # the one MAC counter (training, slim, export, benchmarks)
    try:
        return dict(model_cost(model),
                    note="multiply-accumulates per image (Conv2D + Dense) and parameters of the source Keras model; "
                         "the same for every variant (INT8 and sparse kernels still do the dense arithmetic)")
    except Exception as err:  # noqa: BLE001 - a cost the counter cannot read must not stop the export
        log.warning("could not count the model's MACs: %s", err)
        return None


def _qat_summary(exporter: _Exporter, entries: list[VariantEntry]) -> dict | None:
    qat = exporter.lazy.peek("qat")
    if qat is None:
        return None
    by_name = {e.name: e for e in entries}
    comparisons = {}
    for fmt in ("onnx", "tflite"):
        q, p = by_name.get(f"{fmt}-int8-qat"), by_name.get(f"{fmt}-int8")
        if q is None:
            continue
        row: dict[str, Any] = {
            "qat": _brief(q), "post_training": _brief(p) if p else None,
        }
        row["verdict"], row["qat_better"] = _verdict(q, p)
        comparisons[fmt] = row
    verdicts = [row["qat_better"] for row in comparisons.values() if row["qat_better"] is not None]
    return {
        "epochs": qat.epochs, "learning_rate": qat.learning_rate, "n_train": qat.n_train,
        "seconds": round(qat.seconds, 1), "history": qat.history,
        "comparison": comparisons,
        "qat_beats_post_training_int8": (all(verdicts) if verdicts else None),
        "note": "QAT fine-tunes on the training split, so its parity also reflects the extra training, "
                "not only quantization.",
    }


def _brief(entry: VariantEntry) -> dict:
    p = entry.parity
    return {"status": entry.status, "auc": p.auc if p else None, "auc_drop": p.auc_drop if p else None,
            "flip_rate": p.flip_rate if p else None, "max_abs_diff": p.max_abs_diff if p else None}


def _verdict(qat: VariantEntry, ptq: VariantEntry | None) -> tuple[str, bool | None]:
    """QAT is better when it is no worse on both AUC and flip rate and better on one."""
    if ptq is None or qat.parity is None or ptq.parity is None:
        return "not comparable (a variant is missing or has no parity)", None
    qa, pa = qat.parity.auc, ptq.parity.auc
    auc_cmp = 0 if qa is None or pa is None or abs(qa - pa) < 1e-9 else (1 if qa > pa else -1)
    qf, pf = qat.parity.flip_rate, ptq.parity.flip_rate
    flip_cmp = 0 if abs(qf - pf) < 1e-9 else (1 if qf < pf else -1)
    if auc_cmp >= 0 and flip_cmp >= 0 and (auc_cmp or flip_cmp):
        return "QAT better", True
    if auc_cmp <= 0 and flip_cmp <= 0 and (auc_cmp or flip_cmp):
        return "post-training INT8 better", False
    if not auc_cmp and not flip_cmp:
        return "tie", None
    return "mixed (one metric better, the other worse)", None


def export_run(config: ExportConfig) -> ExportResult:
    """Export every requested variant of a finished run; see the module docstring."""
    started = time.monotonic()
    run = open_run(config.run_dir)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out)}{os.getpid()}-", dir=out.parent))
    try:
        return _export_into(config, run, out, staging, started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _remove_dead_staging(out: Path) -> None:
    """Staging folders left by killed exports of the same --out (their process is gone)."""
    for leftover in out.parent.glob(f"{_staging_prefix(out)}*"):
        pid = leftover.name[len(_staging_prefix(out)):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and leftover.is_dir():
            log.info("removing %s, left by an interrupted export", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    if os.name == "nt":   # os.kill(pid, 0) would TERMINATE the process on Windows: keep the leftovers
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # exists, owned by someone else
    return True


def _publish(staging: Path, out: Path) -> None:
    """Move the finished export from staging into out; the manifest goes last."""
    old = out / MANIFEST_NAME
    if old.exists():
        # From here until the new manifest lands, no reader can pair a new file with an
        # old checksum: without a manifest the folder is not an export.
        log.warning("replacing the export in %s", out)
        old.unlink()
    for item in sorted(staging.iterdir()):
        if item.name == MANIFEST_NAME:
            continue
        target = out / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)
    os.replace(staging / MANIFEST_NAME, out / MANIFEST_NAME)


def _export_into(config: ExportConfig, run, out: Path, staging: Path, started: float) -> ExportResult:
    from train.tf_setup import keras

    created = utc_now()
    log.info("loading %s", run.run.model)
    model = keras.models.load_model(run.run.model, compile=False)
    exporter = _Exporter(config, run, model, staging)

    parity = parity_images(run, config.parity_data)
    x_parity = prepare_batch(list(parity.images), run.spec)
    log.info("Keras reference predictions on %s", parity.description)
    reference = _keras_reference(exporter.cam_model, x_parity, config.batch_size)
    size = run.spec.image_size
    manifest = Manifest(
        tool=tool_record(),
        created=created,
        source_model={"path": f"{run.run.root.name}/{run.run.model.name}", "sha256": sha256_file(run.run.model)},
        preprocessing=run.spec.to_dict(),
        scan_region=run.scan_region.to_dict(),     # the runtime cuts images as training did
        labels={"names": list(run.info["labels"]["names"]), "positive": run.info["labels"]["positive"]},
        threshold={k: run.info["threshold"][k] for k in ("value", "chosen_on", "policy")},
        input={"name": "image", "shape": [None, size, size, 3], "dtype": "float32", "layout": "NHWC"},
        training_data=dict(run.info.get("data", {})),
        baseline={"auc": auc_or_none(parity.labels, reference[PROB]), "n": int(len(parity.labels)),
                  "n_malignant": int((parity.labels == 1).sum()), "n_benign": int((parity.labels == 0).sum()),
                  "data": parity.description, "model": "Keras (original)"},
        export_settings={
            "formats": list(config.formats), "onnx_opset": config.onnx_opset,
            "tolerance": {"max_auc_drop": config.max_auc_drop, "max_flip_rate": config.max_flip_rate},
            "calibration": {"source": getattr(config.calib_data, "name", config.calib_data) or "training split", "max_images": config.calib_size,
                            "method": config.calib_method, "int8_weights": config.int8_weights},
            "qat_epochs": config.qat_epochs,
            "ood": {"enabled": config.ood, "quantile": config.ood_quantile, "layers": list(config.ood_layers)},
            **({"sparsity": {"target": config.sparsity, "epochs": config.sparsity_epochs,
                             "learning_rate": config.sparsity_learning_rate}} if config.sparsity > 0 else {}),
        },
        model_cost=_model_cost(model),
        ood=_ood_section(exporter.ood_stats, config),
    )
    essentials = manifest.essentials()
    essentials.pop("qat_summary", None)   # not known yet when the files are written

    result = ExportResult(manifest, out)
    variants = config.variants
    for i, variant in enumerate(variants, 1):
        t0 = time.monotonic()
        log.info("[%d/%d] %s (%s %s) ...", i, len(variants), variant.name, variant.format, variant.precision)
        entry = exporter.export_variant(variant, essentials, reference, parity.labels, x_parity)
        manifest.variants.append(entry)
        result.seconds[variant.name] = time.monotonic() - t0
        log.info("[%d/%d] %s: %s in %.0fs (total %.0fs)", i, len(variants), variant.name, entry.status,
                 result.seconds[variant.name], time.monotonic() - started)

    # the training images' conv statistics, for `bcd adapt` at a site (runtime/site_adapt.py)
    if any(v.usable and v.format == "onnx" for v in manifest.variants):
        calib = exporter.calibration()
        write_for_export(staging, manifest.variants, prepare_batch(list(calib.images), run.spec).astype(np.float32),
                         calib.description)
    if exporter.lazy.has("calibration"):
        manifest.export_settings["calibration"]["images_used"] = int(len(exporter.calibration().images))
    manifest.qat_summary = _qat_summary(exporter, manifest.variants)
    # The split travels with the export, so `bcd evaluate EXPORT_DIR` can re-score the
    # exact test images even where the run directory (model.keras) is not shipped.
    if run.run.split.is_file():
        atomic.write_bytes(staging / run.run.split.name, run.run.split.read_bytes())
    from export.localiser import run_localiser   # RUN/localiser/ when trained (issue 21), else None
    manifest.localiser = run_localiser(run.run.root, staging, config.onnx_opset)
    write_manifest(staging, manifest)   # validated; complete only once moved into out, last
    _roi_threshold(staging, run)
    _publish(staging, out)
    result.total_seconds = time.monotonic() - started
    log.info("manifest written: %s (%.0fs in total)", out / MANIFEST_NAME, result.total_seconds)
    return result
