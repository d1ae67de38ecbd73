"""`bcd evaluate`: score a trained Keras model with clinical metrics.

The operating threshold is chosen once, on the validation split, when training ends,
and applied unchanged to the test split and to any external folder.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.dataset import DataSource, LabelMap
from runtime.engines import AUTO, BACKENDS
from runtime.localisation import localisation_summary
from runtime.preprocessing import PreprocessSpec
from train.config import run_scan_region
from train.data import LoadedDataset, load_saved_split, load_sources, to_model_input
from train.metrics import ThresholdPolicy, binary_metrics, choose_threshold, evaluate_predictions
from train.plots import plot_roc_per_source, write_evaluation_plots
from train.run_dir import RunDir, unfinished
from runtime.host import DISCLAIMER

log = logging.getLogger(__name__)

HEADLINE = ("sensitivity", "specificity", "accuracy", "precision", "f1", "roc_auc", "pr_auc")


def predict_probabilities(model, images_uint8: np.ndarray, spec: PreprocessSpec, batch_size: int = 32) -> np.ndarray:
    """Probability of malignancy for resized uint8 images, in batches."""
    probs = [
        np.asarray(model(to_model_input(images_uint8[i:i + batch_size], spec), training=False)).reshape(-1)
        for i in range(0, len(images_uint8), batch_size)
    ]
    return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def metrics_markdown(doc: dict) -> str:
    m = doc["at_operating_threshold"]
    cm = m["confusion_matrix"]
    lines = [
        f"# Evaluation: {doc['evaluated_on']}",
        "",
        f"Model: `{doc['model']}`. Operating threshold {doc['threshold']['value']:.4f} "
        f"(chosen on the {doc['threshold'].get('chosen_on', 'validation split')}: {doc['threshold']['policy']}).",
    ]
    site = doc["threshold"].get("site_profile")
    if site:
        recal = "" if site.get("recalibration", "none") == "none" else (
            f"; probabilities recalibrated ({site['recalibration']}) before the threshold")
        lines.append(f"Site profile in use: **{site['name']}** (`{site.get('path')}`){recal}.")
    lines += [
        f"n = {m['n']} ({m['n_positive']} malignant, {m['n_negative']} benign).",
        "",
        "| metric | value | 95% CI (bootstrap) |",
        "|---|---|---|",
    ]
    for key in HEADLINE + ("brier", "ece"):
        ci = m.get("ci95", {}).get(key)
        ci_text = f"{_fmt(ci['low'])} – {_fmt(ci['high'])}" if ci else ""
        lines.append(f"| {key} | {_fmt(m.get(key))} | {ci_text} |")
    lines += ["", f"Confusion matrix: TP {cm['tp']}, FN {cm['fn']}, FP {cm['fp']}, TN {cm['tn']}."]
    lines += _per_source_markdown(doc.get("per_source"))
    lines += _localisation_markdown(doc.get("localisation"))
    ood = doc.get("out_of_distribution")
    if ood:
        lines += ["", f"Out-of-distribution flag: {ood['flagged']} of {ood['n']} images flagged "
                  f"({_fmt(ood['rate'])}; score >= {ood['threshold']:.4g}); they are counted in the metrics above."]
    lines += ["", DISCLAIMER]
    return "\n".join(lines) + "\n"


def _with_ci(m: dict, key: str) -> str:
    ci = m.get("ci95", {}).get(key)
    return f"{_fmt(m.get(key))} [{_fmt(ci['low'])}–{_fmt(ci['high'])}]" if ci else _fmt(m.get(key))


def _per_source_markdown(per_source: dict | None) -> list[str]:
    if not per_source:
        return []
    lines = ["", "Per source, at the same threshold (95% bootstrap CI):", "",
             "| source | n (malignant) | AUC | sensitivity | specificity | PR-AUC |", "|---|---|---|---|---|---|"]
    for name, block in per_source.items():
        m = block["at_operating_threshold"]
        lines.append(f"| {name} | {m['n']} ({m['n_positive']}) | {_with_ci(m, 'roc_auc')} | "
                     f"{_with_ci(m, 'sensitivity')} | {_with_ci(m, 'specificity')} | {_fmt(m.get('pr_auc'))} |")
    return lines


def _localisation_markdown(loc: dict | None) -> list[str]:
    if not loc:
        return []
    lines = ["", "Where the model looks (Grad-CAM vs lesion masks, images with a mask):", "",
             "| images of | n | Grad-CAM maximum inside the lesion | mean share of Grad-CAM mass inside |",
             "|---|---|---|---|"]
    for part, per_source in loc.items():          # {"val"|"test"|"external": {"all"|source: figures}}
        for name, f in per_source.items():
            label = f"{part} split, {'all sources' if name == 'all' else name}" if part in ("val", "test") else \
                f"{'all' if name == 'all' else name}"
            lines.append(f"| {label} | {f['n']} | {f['pointing_game']:.3f} | {f['mass_inside']:.3f} |")
    return lines


def per_source_metrics(y: np.ndarray, p: np.ndarray, sources, threshold: float, n_resamples: int) -> dict | None:
    """metrics per source (hospital) at the shared threshold, when there is more than one."""
    sources = np.asarray(sources)
    names = sorted(set(sources.tolist()))
    if len(names) < 2:
        return None
    return {name: evaluate_predictions(y[sources == name], p[sources == name], threshold,
                                       n_resamples=n_resamples) for name in names}


def score(y: np.ndarray, p: np.ndarray, threshold: dict, out_dir: Path, evaluated_on: str,
          model_name: str, n_resamples: int, paths: list[str], sources=None,
          localisation: dict | None = None, extra_columns: dict | None = None, ood: dict | None = None) -> dict:
    """Compute the metrics (pooled, and per source when there are several), write
    metrics.json + metrics.md + plots + predictions.json into out_dir.

    ood: the out-of-distribution flags of an exported model, {"threshold", "scores",
    "flags"} (per image); counted in the documents, never removed from the metrics."""
    doc = evaluate_predictions(y, p, threshold["value"], n_resamples=n_resamples)
    doc.update(evaluated_on=evaluated_on, model=model_name, threshold=threshold)
    doc["n_per_class"] = {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())}
    per_source = per_source_metrics(y, p, sources, threshold["value"], n_resamples) if sources is not None else None
    if per_source:
        doc["per_source"] = per_source
        plot_roc_per_source(y, p, sources, out_dir / "plots" / "roc_per_source.png", threshold["value"])
    if localisation:
        doc["localisation"] = localisation
    extra_columns = dict(extra_columns or {})
    if ood is not None:
        flags = np.asarray(ood["flags"], dtype=bool)
        doc["out_of_distribution"] = {
            "threshold": float(ood["threshold"]), "flagged": int(flags.sum()), "n": int(len(flags)),
            "rate": float(flags.mean()) if len(flags) else 0.0,
            "flagged_paths": [path for path, flag in zip(paths, flags) if flag],
        }
        extra_columns.update(ood_score=list(ood["scores"]), out_of_distribution=[bool(f) for f in flags])
    write_evaluation_plots(y, p, threshold["value"], doc["at_operating_threshold"], out_dir / "plots")
    atomic.write_json(out_dir / "metrics.json", doc)
    atomic.write_text(out_dir / "metrics.md", metrics_markdown(doc))
    rows = [{"path": path, "label": int(label), "probability": float(prob)} for path, label, prob in zip(paths, y, p)]
    for i, row in enumerate(rows):
        if sources is not None:
            row["source"] = str(sources[i])
        for key, values in extra_columns.items():
            row[key] = values[i]
    atomic.write_json(out_dir / "predictions.json", rows)
    return doc


def evaluate_split_after_training(model, data: LoadedDataset, split: dict, spec: PreprocessSpec,
                                  policy: ThresholdPolicy, run: RunDir, n_resamples: int) -> dict:
    """Choose the threshold on validation, then score the test split into the run dir."""
    val, test = split["val"], split["test"]
    p_val = predict_probabilities(model, data.images[val], spec)
    t = choose_threshold(data.labels[val], p_val, policy)
    threshold = {
        "value": float(t), "chosen_on": "validation split",
        "policy": (f"best specificity at sensitivity >= {policy.min_sensitivity:.2f}"
                   if policy.method == "sensitivity" else "Youden's J"),
        "validation": binary_metrics(data.labels[val], p_val, t),
    }
    if len(data.sources) > 1:
        threshold["validation_per_source"] = {
            name: binary_metrics(data.labels[val][data.source_names[val] == name],
                                 p_val[data.source_names[val] == name], t)
            for name in sorted(set(data.source_names[val].tolist()))}
    p_test = predict_probabilities(model, data.images[test], spec)
    paths = [data.relative_paths[i] for i in test]
    localisation = {split: keras_localisation(model, data, idx, spec) for split, idx in (("val", val), ("test", test))}
    localisation = {k: v for k, v in localisation.items() if v}
    doc = score(data.labels[test], p_test, threshold, run.root, "test split", "model.keras", n_resamples, paths,
                sources=data.source_names[test], localisation=localisation or None)
    log_headline(doc)
    return doc


def keras_localisation(model, data: LoadedDataset, idx: np.ndarray, spec: PreprocessSpec) -> dict:
    """Pointing game and Grad-CAM mass inside the lesion, per source, for the images of
    `idx` that have a lesion mask ({} when none has)."""
    idx = np.asarray(idx, dtype=int)
    idx = idx[data.has_mask[idx] & (data.masks[idx].reshape(len(idx), -1).max(axis=1) > 0)] if len(idx) else idx
    if len(idx) == 0:
        return {}
    from train.localisation import keras_cams
    cams = keras_cams(model, data.images[idx], spec)
    return localisation_summary(cams, data.masks[idx], data.source_names[idx])


def log_headline(doc: dict) -> None:
    m = doc["at_operating_threshold"]
    log.info("%s: AUC %s, sensitivity %s, specificity %s at threshold %.4f (n=%d)",
             doc["evaluated_on"], _fmt(m["roc_auc"]), _fmt(m["sensitivity"]),
             _fmt(m["specificity"]), doc["threshold"]["value"], m["n"])


def _open_run(model_path: Path) -> tuple[RunDir, dict]:
    root = model_path if model_path.is_dir() else model_path.parent
    run = RunDir(root)
    info = run.read_json(run.run_info)
    reason = unfinished(root, info)
    if reason:
        raise ValueError(reason)
    return run, info


def _load_keras(path: Path):
    from train.tf_setup import keras
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return keras.models.load_model(path, compile=False)


def evaluate_run(run_path: Path, split_root: Path | None = None, n_resamples: int = 1000, split: str = "test",
                 flip_tta: bool = False, out: Path | None = None) -> dict:
    """Re-score a run's saved test split (rewrites the run's metrics files), or another
    split and/or with flip averaging (written to RUN/eval-<split>[-flip]/ instead)."""
    run, info = _open_run(Path(run_path))
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    data, parts = load_saved_split(run.read_json(run.split), spec, str(split_root) if split_root else None,
                                   info["labels"]["class_labels"], region=run_scan_region(info))
    model = _load_keras(run.model)
    idx = parts[split]
    p = predict_probabilities(model, data.images[idx], spec)
    if flip_tta:   # the mean with the left-right mirror image (a plausible second view of the scan)
        p = (p + predict_probabilities(model, data.images[idx][:, :, ::-1], spec)) / 2
    own = split == "test" and not flip_tta
    out = Path(out) if out else run.root if own else run.root / f"eval-{split}{'-flip' if flip_tta else ''}"
    localisation = {k: v for k, v in ((split, keras_localisation(model, data, idx, spec)),) if v}
    doc = score(data.labels[idx], p, info["threshold"], out, f"{split} split" + (" (flip-averaged)" if flip_tta else ""),
                run.model.name, n_resamples, [data.relative_paths[i] for i in idx],
                sources=data.source_names[idx], localisation=localisation or None)
    log_headline(doc)
    return doc


def evaluate_folder(model_path: Path, sources: list[DataSource], out: Path | None = None,
                    n_resamples: int = 1000) -> dict:
    """Score every labelled image of external datasets (folders or CSV indexes) at the
    run's frozen threshold, per source, with localisation figures where masks exist."""
    run, info = _open_run(Path(model_path))
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    labels = LabelMap(info["labels"]["class_labels"])
    data = load_sources([replace(s, labels=labels) for s in sources], spec, region=run_scan_region(info))
    model_file = Path(model_path) if Path(model_path).is_file() else run.model
    model = _load_keras(model_file)
    p = predict_probabilities(model, data.images, spec)
    everything = np.arange(len(data.labels))
    localisation = keras_localisation(model, data, everything, spec)
    names = "+".join(s.name for s in data.sources)
    out = Path(out or run.root / f"eval-{names}")
    doc = score(data.labels, p, info["threshold"], out, f"external data {names}", model_file.name, n_resamples,
                data.relative_paths, sources=data.source_names,
                localisation={"external": localisation} if localisation else None)
    log_headline(doc)
    return doc


# ---------------------------------------------------------------------- one entry point

SPLITS = ("val", "test")


@dataclass(frozen=True)
class EvaluateConfig:
    """What `bcd evaluate` can set (the library's defaults; the CLI passes what is given)."""

    model: str | os.PathLike | None = None   # run dir (or its model.keras) or export dir; None: the shipped model
    data: tuple = ()                         # DataSource objects: score all their labelled images instead of a split
    split: str = "test"                      # which part of the saved split (val | test)
    flip_tta: bool = False                   # run only: average with the left-right mirrored image
    variant: str | None = None               # export only: the variant to score
    backend: str = AUTO                      # export only: the inference engine
    split_root: str | os.PathLike | None = None   # where the run's dataset lives now, if it moved
    out: str | os.PathLike | None = None     # output folder (default: beside the model, see evaluate_run/_export_*)
    bootstrap: int = 1000                    # resamples for the 95 % CIs
    site: str | os.PathLike | None = None    # export only: a site profile from `bcd calibrate` (else $BCD_SITE)
    no_site: bool = False                    # ignore $BCD_SITE: the export's own threshold

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.bootstrap < 0:
            raise ValueError("bootstrap resamples must not be negative")


def evaluate(config: EvaluateConfig) -> dict:
    """Score a run (Keras, TensorFlow) or an export (through the runtime, as a clinic
    runs it) on its saved split or on the given datasets; returns metrics.json's content."""
    from runtime.shipped import default_model_path
    from runtime.site_profile import site_path
    from train.evaluate_export import evaluate_export_data, evaluate_export_split, is_export_dir

    model = Path(config.model) if config.model is not None else default_model_path()
    if model is None:
        raise ValueError("give a run or export directory to evaluate (no reference model is shipped)")
    if not model.exists():
        raise FileNotFoundError(f"{model}: no such run or export directory")
    split_root = Path(config.split_root) if config.split_root else None
    out = Path(config.out) if config.out else None
    if is_export_dir(model):
        site = site_path(config.site, config.no_site)
        if config.flip_tta:
            raise ValueError("flip averaging (--flip-tta) applies to a run directory (the Keras model)")
        if config.data:
            return evaluate_export_data(model, list(config.data), config.variant, out, config.bootstrap,
                                        site=site, backend=config.backend)
        return evaluate_export_split(model, config.variant, split_root, out, config.split, config.bootstrap,
                                     site=site, backend=config.backend)
    if config.variant or config.backend != AUTO:
        raise ValueError("--variant and --backend apply to export directories; a run has one Keras model, "
                         "run by TensorFlow")
    if config.site:
        raise ValueError("--site applies to export directories (a site profile belongs to an exported model "
                         "file); a run is scored at its own threshold")
    if config.data:
        return evaluate_folder(model, list(config.data), out, config.bootstrap)
    return evaluate_run(model, split_root, config.bootstrap, config.split, config.flip_tta, out)
