"""Accuracy of one model at the export's frozen operating threshold, with stratified
percentile-bootstrap 95% CIs (train.metrics), and its agreement with the original's
decisions (flip rate). Decision rule everywhere: malignant iff probability >= threshold."""
from __future__ import annotations

import numpy as np

from train.metrics import binary_metrics, bootstrap_ci

# results.json name -> train.metrics name
METRICS = {"auc": "roc_auc", "sensitivity": "sensitivity", "specificity": "specificity", "accuracy": "accuracy"}


def accuracy_block(labels: np.ndarray, probs: np.ndarray, threshold: float, reference: np.ndarray | None,
                   n_bootstrap: int, seed: int = 0, reference_threshold: float | None = None) -> dict:
    """{auc, sensitivity, specificity, accuracy, ci95: {metric: {low, high}}, flip_rate,
    flips, max_abs_diff, n, n_malignant, n_benign, threshold}. `reference`: the original's
    probabilities on the same images (None for the original itself: flip rate 0), whose
    decisions are taken at `reference_threshold` (default: `threshold`; differs for a model
    of another run, e.g. a slim one, whose own threshold was chosen on its validation split)."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if probs.shape != labels.shape:
        raise ValueError(f"{len(probs)} probabilities for {len(labels)} images")
    if not np.all(np.isfinite(probs)):
        raise ValueError("the model produced non-finite probabilities")
    point = binary_metrics(labels, probs, threshold)
    out = {name: point[key] for name, key in METRICS.items()}
    if n_bootstrap > 0:
        ci = bootstrap_ci(labels, probs, threshold, n_resamples=n_bootstrap, seed=seed, metrics=tuple(METRICS.values()))
        out["ci95"] = {name: ci[key] for name, key in METRICS.items()}
    else:
        out["ci95"] = {name: {"low": None, "high": None} for name in METRICS}
    if reference is None:
        flips, max_diff = 0, 0.0
    else:
        reference = np.asarray(reference, dtype=np.float64).reshape(-1)
        ref_threshold = threshold if reference_threshold is None else reference_threshold
        flips = int(np.sum((probs >= threshold) != (reference >= ref_threshold)))
        max_diff = float(np.max(np.abs(probs - reference))) if len(probs) else 0.0
    n = int(len(labels))
    out.update(flip_rate=flips / n if n else 0.0, flips=flips, max_abs_diff=max_diff, n=n,
               n_malignant=int((labels == 1).sum()), n_benign=int((labels == 0).sum()),
               threshold=float(threshold))
    return out
