"""`bcd evaluate`: score a trained Keras model with clinical metrics.

The operating threshold is chosen once, on the validation split, when training ends,
and applied unchanged to the test split and to any external folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.dataset import LabelMap
from runtime.preprocessing import PreprocessSpec
from train.data import LoadedDataset, load_files, load_folder, to_model_input
from train.metrics import ThresholdPolicy, binary_metrics, choose_threshold, evaluate_predictions
from train.plots import write_evaluation_plots
from train.run_dir import RunDir

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
        f"(chosen on the validation split: {doc['threshold']['policy']}).",
        f"n = {m['n']} ({m['n_positive']} malignant, {m['n_negative']} benign).",
        "",
        "| metric | value | 95% CI (bootstrap) |",
        "|---|---|---|",
    ]
    for key in HEADLINE + ("brier", "ece"):
        ci = m.get("ci95", {}).get(key)
        ci_text = f"{_fmt(ci['low'])} – {_fmt(ci['high'])}" if ci else ""
        lines.append(f"| {key} | {_fmt(m.get(key))} | {ci_text} |")
    lines += [
        "",
        f"Confusion matrix: TP {cm['tp']}, FN {cm['fn']}, FP {cm['fp']}, TN {cm['tn']}.",
        "",
        "Research and education only: not a diagnosis.",
    ]
    return "\n".join(lines) + "\n"


def score(y: np.ndarray, p: np.ndarray, threshold: dict, out_dir: Path, evaluated_on: str,
          model_name: str, n_resamples: int, paths: list[str]) -> dict:
    """Compute the metrics, write metrics.json + metrics.md + plots into out_dir."""
    doc = evaluate_predictions(y, p, threshold["value"], n_resamples=n_resamples)
    doc.update(evaluated_on=evaluated_on, model=model_name, threshold=threshold)
    doc["n_per_class"] = {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())}
    write_evaluation_plots(y, p, threshold["value"], doc["at_operating_threshold"], out_dir / "plots")
    atomic.write_json(out_dir / "metrics.json", doc)
    atomic.write_text(out_dir / "metrics.md", metrics_markdown(doc))
    atomic.write_json(out_dir / "predictions.json", [
        {"path": path, "label": int(label), "probability": float(prob)}
        for path, label, prob in zip(paths, y, p)
    ])
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
    p_test = predict_probabilities(model, data.images[test], spec)
    paths = [data.relative_paths[i] for i in test]
    doc = score(data.labels[test], p_test, threshold, run.root, "test split", "model.keras", n_resamples, paths)
    log_headline(doc)
    return doc


def log_headline(doc: dict) -> None:
    m = doc["at_operating_threshold"]
    log.info("%s: AUC %s, sensitivity %s, specificity %s at threshold %.4f (n=%d)",
             doc["evaluated_on"], _fmt(m["roc_auc"]), _fmt(m["sensitivity"]),
             _fmt(m["specificity"]), doc["threshold"]["value"], m["n"])


def _open_run(model_path: Path) -> tuple[RunDir, dict]:
    root = model_path if model_path.is_dir() else model_path.parent
    run = RunDir(root)
    info = run.read_json(run.run_info)
    if info.get("status") != "complete" or "threshold" not in info:
        raise ValueError(f"{root} is not a finished run (no operating threshold yet)")
    return run, info


def _load_keras(path: Path):
    from train.tf_setup import keras
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return keras.models.load_model(path, compile=False)


def evaluate_run(run_path: Path, split_root: Path | None = None, n_resamples: int = 1000) -> dict:
    """Re-score a run's saved test split (rewrites the run's metrics files)."""
    run, info = _open_run(Path(run_path))
    split = run.read_json(run.split)
    root = Path(split_root or split["data_root"])
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    files = split["files"]["test"]
    images = load_files(root, [f["path"] for f in files], spec)
    y = np.array([f["label"] for f in files])
    p = predict_probabilities(_load_keras(run.model), images, spec)
    doc = score(y, p, info["threshold"], run.root, "test split", run.model.name, n_resamples,
                [f["path"] for f in files])
    log_headline(doc)
    return doc


def evaluate_folder(model_path: Path, data: Path, out: Path | None = None, n_resamples: int = 1000) -> dict:
    """Score every labelled image in an external folder at the run's frozen threshold."""
    run, info = _open_run(Path(model_path))
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    loaded = load_folder(data, spec, LabelMap(info["labels"]["class_labels"]))
    model_file = Path(model_path) if Path(model_path).is_file() else run.model
    p = predict_probabilities(_load_keras(model_file), loaded.images, spec)
    out = Path(out or run.root / f"eval-{Path(data).resolve().name}")
    doc = score(loaded.labels, p, info["threshold"], out, f"external folder {data}",
                model_file.name, n_resamples, loaded.relative_paths)
    log_headline(doc)
    return doc
