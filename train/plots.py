"""Evaluation and training plots (PNG), written atomically.

Every function draws one figure, saves it through runtime.atomic.atomic_path (so a
reader never sees a half-written PNG), and closes the figure. The non-interactive "Agg"
backend is selected before pyplot is imported, so this works on headless machines.
No TensorFlow here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from runtime.atomic import atomic_path  # noqa: E402
from train.metrics import _validate, _validate_threshold, binary_metrics, reliability_curve  # noqa: E402

_DPI = 120
_POS_COLOR = "#c0392b"
_MAIN_COLOR = "#1f77b4"


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _class_counts(y: np.ndarray) -> tuple[int, int]:
    n_pos = int(y.sum())
    return n_pos, int(y.size) - n_pos


def _n_text(y: np.ndarray) -> str:
    n_pos, n_neg = _class_counts(y)
    return f"n = {y.size}: {n_pos} malignant, {n_neg} benign"


def _undefined(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes,
            fontsize=11, color="0.3", wrap=True)


# ----------------------------------------------------------------------------- ROC


def plot_roc(
    y_true: Any,
    y_prob: Any,
    path: str | os.PathLike,
    threshold: float | None = None,
    title: str = "ROC curve",
) -> Path:
    """ROC curve with AUC and n in the legend; marks the operating point if given."""
    y, p = _validate(y_true, y_prob)
    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="Chance (AUC = 0.5)")
    m = binary_metrics(y, p, 0.5 if threshold is None else threshold)
    if m["roc_auc"] is None:
        _undefined(ax, "ROC undefined: only one class present\n" + _n_text(y))
    else:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, color=_MAIN_COLOR,
                label=f"Model (AUC = {m['roc_auc']:.3f}; {_n_text(y)})")
        if threshold is not None:
            sens, spec = m["sensitivity"], m["specificity"]
            ax.plot(1 - spec, sens, "o", ms=9, color=_POS_COLOR, mec="k", zorder=5,
                    label=f"Operating point t = {threshold:.3f}\n"
                          f"(sensitivity {sens:.3f}, specificity {spec:.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("Sensitivity (true positive rate)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8.5)
    return _save(fig, path)


def plot_roc_per_source(y_true: Any, y_prob: Any, sources: Sequence[str], path: str | os.PathLike,
                        threshold: float, title: str = "ROC per source") -> Path:
    """One ROC curve per source (hospital) with its operating point at the shared
    threshold: a threshold that travels badly shows as points far apart."""
    y, p = _validate(y_true, y_prob)
    sources = np.asarray(sources)
    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="Chance")
    for k, name in enumerate(sorted(set(sources.tolist()))):
        sel = sources == name
        m = binary_metrics(y[sel], p[sel], threshold)
        if m["roc_auc"] is None:
            continue
        fpr, tpr, _ = roc_curve(y[sel], p[sel])
        color = plt.cm.tab10(k % 10)
        ax.plot(fpr, tpr, lw=2, color=color, label=f"{name} (AUC {m['roc_auc']:.3f}; {_n_text(y[sel])})")
        ax.plot(1 - m["specificity"], m["sensitivity"], "o", ms=8, color=color, mec="k", zorder=5)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("Sensitivity (true positive rate)")
    ax.set_title(f"{title} (dots: threshold {threshold:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------ PR


def plot_pr(
    y_true: Any,
    y_prob: Any,
    path: str | os.PathLike,
    threshold: float | None = None,
    title: str = "Precision-recall curve",
) -> Path:
    """Precision-recall curve with average precision, prevalence baseline and operating point."""
    y, p = _validate(y_true, y_prob)
    n_pos, _ = _class_counts(y)
    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    m = binary_metrics(y, p, 0.5 if threshold is None else threshold)
    if m["pr_auc"] is None:
        _undefined(ax, "PR curve undefined: only one class present\n" + _n_text(y))
    else:
        prevalence = n_pos / y.size
        precision, recall, _ = precision_recall_curve(y, p)
        ax.step(recall, precision, where="post", lw=2, color=_MAIN_COLOR,
                label=f"Model (AP = {m['pr_auc']:.3f}; {_n_text(y)})")
        ax.axhline(prevalence, ls="--", lw=1, color="0.6",
                   label=f"No-skill baseline (prevalence = {prevalence:.3f})")
        if threshold is not None and m["precision"] is not None:
            ax.plot(m["recall"], m["precision"], "o", ms=9, color=_POS_COLOR, mec="k", zorder=5,
                    label=f"Operating point t = {threshold:.3f}\n"
                          f"(recall {m['recall']:.3f}, precision {m['precision']:.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (positive predictive value)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8.5)
    return _save(fig, path)


# ----------------------------------------------------------------------- confusion


def plot_confusion(
    cm: dict,
    path: str | os.PathLike,
    title: str = "Confusion matrix (operating threshold)",
    labels: Sequence[str] = ("benign", "malignant"),
) -> Path:
    """2x2 confusion matrix (rows: true class, columns: predicted), counts and row %."""
    missing = [k for k in ("tn", "fp", "fn", "tp") if k not in cm]
    if missing:
        raise ValueError(f"confusion matrix dict is missing keys {missing}")
    if len(labels) != 2:
        raise ValueError(f"labels must be (negative, positive), got {labels!r}")
    counts = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=np.int64)
    if (counts < 0).any():
        raise ValueError(f"confusion matrix counts must be non-negative, got {cm}")
    row_tot = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, row_tot, out=np.zeros(counts.shape), where=row_tot > 0)

    fig, ax = plt.subplots(figsize=(5.0, 4.4))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            pct = f"{100 * frac[i, j]:.1f}% of row" if row_tot[i, 0] else "—"
            ax.text(j, i, f"{names[i][j]}\n{counts[i, j]}\n({pct})", ha="center", va="center",
                    fontsize=12, color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks([0, 1], [f"pred. {labels[0]}", f"pred. {labels[1]}"])
    ax.set_yticks([0, 1], [f"true {labels[0]}\n(n = {row_tot[0, 0]})",
                           f"true {labels[1]}\n(n = {row_tot[1, 0]})"])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"{title}\nn = {int(counts.sum())}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Fraction of true class")
    return _save(fig, path)


# --------------------------------------------------------------------- reliability


def plot_reliability(
    y_true: Any,
    y_prob: Any,
    path: str | os.PathLike,
    n_bins: int = 10,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagram (fraction malignant vs mean predicted per bin) + bin counts."""
    y, p = _validate(y_true, y_prob)
    rc = reliability_curve(y, p, n_bins)
    edges = np.asarray(rc["bin_edges"])
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    filled = [i for i, c in enumerate(rc["count"]) if c > 0]
    frac = np.array([rc["fraction_positive"][i] for i in filled])
    meanp = np.array([rc["mean_predicted"][i] for i in filled])

    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.6, 6.4), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.5", label="Perfect calibration")
    ax.bar(centers[filled], frac, width=width * 0.9, color=_MAIN_COLOR, alpha=0.35,
           edgecolor=_MAIN_COLOR, label="Fraction malignant per bin")
    ax.plot(meanp, frac, "o-", color=_POS_COLOR, mec="k", ms=6,
            label=f"Mean predicted vs observed ({_n_text(y)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Observed fraction malignant")
    ax.set_title(f"{title}\nECE = {rc['ece']:.3f} ({rc['n_bins']} equal-width bins)")
    ax.grid(alpha=0.3)
    # Legend under the figure: bars can reach 1.0 anywhere, so no corner is reliably free
    # (savefig's bbox_inches="tight" grows the canvas to include it).
    handles, legend_labels = ax.get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="upper center", bbox_to_anchor=(0.5, 0.03),
               fontsize=8.5, frameon=False)

    axh.bar(centers, rc["count"], width=width * 0.9, color="0.55")
    axh.set_xlabel("Predicted probability of malignancy")
    axh.set_ylabel("Cases")
    axh.grid(alpha=0.3, axis="y")
    return _save(fig, path)


# ------------------------------------------------------------------------- history


def _series(values: Any) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def plot_history(
    history: dict[str, list[float]],
    path: str | os.PathLike,
    title: str = "Training curves",
) -> Path:
    """Loss (left) and AUC (right) per epoch; any subset of loss/val_loss/auc/val_auc.

    Keys containing "loss" go to the left panel, keys containing "auc" (any case) to the
    right. An optional "phase_boundaries" list of ints (the 0-based index of the first
    epoch of each new phase, e.g. when fine-tuning starts) is drawn as vertical lines.
    """
    if not isinstance(history, dict):
        raise ValueError(f"history must be a dict of metric name -> list, got {type(history).__name__}")
    boundaries = history.get("phase_boundaries") or []
    series = {k: _series(v) for k, v in history.items()
              if k != "phase_boundaries" and isinstance(v, (list, tuple, np.ndarray))}
    loss_keys = sorted((k for k in series if "loss" in k.lower()), key=lambda k: (k.startswith("val"), k))
    auc_keys = sorted((k for k in series if "auc" in k.lower()), key=lambda k: (k.startswith("val"), k))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, keys, ylabel, name in ((axes[0], loss_keys, "Loss", "loss"),
                                   (axes[1], auc_keys, "ROC AUC", "AUC")):
        for k in keys:
            v = series[k]
            epochs = np.arange(1, v.size + 1)
            style = "--" if k.lower().startswith("val") else "-"
            label = ("validation " if k.lower().startswith("val") else "training ") + name
            if k.lower() not in (name.lower(), f"val_{name.lower()}"):
                label += f" ({k})"
            ax.plot(epochs, v, style, marker="o" if v.size <= 30 else None, ms=3, label=label)
        if not keys:
            _undefined(ax, f"no {name} recorded")
        for i, b in enumerate(boundaries):
            ax.axvline(float(b) + 0.5, color="0.4", ls=":", lw=1.5,
                       label="phase change" if i == 0 else None)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel)
        ax.grid(alpha=0.3)
        if keys or boundaries:
            ax.legend(fontsize=8.5)
        if keys:
            ax.xaxis.get_major_locator().set_params(integer=True)
        if name == "loss" and _spans_decades([series[k] for k in keys]):
            # A from-scratch run starts with a saturated sigmoid (loss ~15); on a linear
            # axis that first point flattens every later epoch.
            ax.set_yscale("log")
            ax.set_ylabel("Loss (log scale)")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _spans_decades(curves: list[np.ndarray]) -> bool:
    values = np.concatenate([c[np.isfinite(c) & (c > 0)] for c in curves]) if curves else np.array([])
    return values.size > 1 and values.max() / values.min() > 10


# ---------------------------------------------------------------------- all at once


def _confusion_from_block(metrics_block: dict | None) -> dict | None:
    if not isinstance(metrics_block, dict):
        return None
    for block in (metrics_block.get("at_operating_threshold"), metrics_block):
        if isinstance(block, dict) and isinstance(block.get("confusion_matrix"), dict):
            return block["confusion_matrix"]
    return None


def write_evaluation_plots(
    y_true: Any,
    y_prob: Any,
    threshold: float,
    metrics_block: dict,
    out_dir: str | os.PathLike,
) -> list[Path]:
    """Write roc.png, pr.png, confusion.png and reliability.png into out_dir.

    `metrics_block` may be the output of metrics.evaluate_predictions or a
    binary_metrics dict; its confusion matrix is used if present, otherwise it is
    recomputed at `threshold`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y, p = _validate(y_true, y_prob)
    t = _validate_threshold(threshold)
    cm = _confusion_from_block(metrics_block) or binary_metrics(y, p, t)["confusion_matrix"]
    return [
        plot_roc(y, p, out / "roc.png", threshold=t, title=f"ROC curve (operating threshold {t:.3f})"),
        plot_pr(y, p, out / "pr.png", threshold=t,
                title=f"Precision-recall curve (operating threshold {t:.3f})"),
        plot_confusion(cm, out / "confusion.png",
                       title=f"Confusion matrix (operating threshold {t:.3f})"),
        plot_reliability(y, p, out / "reliability.png"),
    ]
