"""Clinical evaluation of a binary classifier (malignant = positive class 1).

Reporting follows the usual clinical-ML conventions:

* the operating threshold is chosen on the VALIDATION split (`choose_threshold`) and then
  applied unchanged to the test split; metrics at 0.5 are kept only as a reference;
* decision rule everywhere: predict malignant iff ``prob >= threshold``;
* every headline metric comes with a 95% percentile-bootstrap confidence interval,
  resampling cases with replacement, stratified by class;
* calibration is reported (Brier score, expected calibration error, reliability curve).

Undefined quantities (precision with no predicted positives, AUC with a single class,
...) are reported as ``None``, never NaN, so every result can be written with
``json.dumps(..., allow_nan=False)``. All returned numbers are plain Python ints/floats.

No TensorFlow here: this module only needs numpy and scikit-learn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

HEADLINE_METRICS: tuple[str, ...] = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "pr_auc",
)

# Metrics bootstrap_ci knows how to compute on resamples.
_BOOTSTRAP_METRICS = frozenset(HEADLINE_METRICS) | {"recall", "npv"}

_POLICY_METHODS = ("sensitivity", "specificity", "youden")

# Absolute tolerance when comparing a sensitivity (a ratio of counts) with the target,
# so that e.g. 9/10 counts as reaching 0.9 whatever the floating-point rounding.
_SENS_TOL = 1e-9

# Resamples processed at once in bootstrap_ci; bounds memory for large test sets.
_BOOTSTRAP_CHUNK = 256


# --------------------------------------------------------------------------- inputs


def _validate(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as int8 0/1 array, probabilities as float64 array) or raise ValueError.

    Accepts 1-D sequences or column vectors of shape (n, 1) (what Keras' predict returns
    for a sigmoid head).
    """
    y = _as_1d(y_true, "y_true")
    p = _as_1d(y_prob, "y_prob")
    if y.shape[0] != p.shape[0]:
        raise ValueError(
            f"y_true and y_prob must have the same length, got {y.shape[0]} and {p.shape[0]}"
        )
    if y.shape[0] == 0:
        raise ValueError("y_true and y_prob are empty: need at least one case")

    if y.dtype == bool:
        y = y.astype(np.int8)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"y_true must contain numeric labels 0/1, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        examples = sorted({repr(v) for v in y[bad][:5].tolist()})
        raise ValueError(
            "y_true must contain only 0 (benign) and 1 (malignant); "
            f"found {int(bad.sum())} other value(s), e.g. {', '.join(examples)}"
        )

    if p.dtype == bool or not (
        np.issubdtype(p.dtype, np.integer) or np.issubdtype(p.dtype, np.floating)
    ):
        raise ValueError(f"y_prob must contain numeric probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError(
            f"y_prob must be finite; found {int((~np.isfinite(p)).sum())} NaN/inf value(s)"
        )
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            "y_prob must lie in [0, 1] (probabilities of malignancy); "
            f"got min {p.min():.6g}, max {p.max():.6g}"
        )
    return y.astype(np.int8), p


def _as_1d(values: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (or shape (n, 1)), got shape {arr.shape}")
    return arr


def _validate_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"threshold must be a number, got {threshold!r}") from exc
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return t


def _validate_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


# ------------------------------------------------------------------ threshold choice


@dataclass(frozen=True)
class ThresholdPolicy:
    """How the operating threshold is chosen on the validation split.

    method:
        "sensitivity": best specificity among thresholds whose sensitivity is at least
        `min_sensitivity` (a screening-style operating point: miss few cancers).
        "specificity": best sensitivity among thresholds whose specificity is at least
        `min_specificity` (few false alarms; used by site calibration, train/fit_site_profile.py).
        "youden": maximise Youden's J = sensitivity + specificity - 1.
    Ties are broken towards the highest threshold (fewest false positives for the same
    trade-off).
    """

    method: str = "sensitivity"
    min_sensitivity: float = 0.90
    min_specificity: float = 0.90

    def __post_init__(self) -> None:
        if self.method not in _POLICY_METHODS:
            raise ValueError(
                f"ThresholdPolicy.method must be one of {_POLICY_METHODS}, got {self.method!r}"
            )
        for name in ("min_sensitivity", "min_specificity"):
            ms = getattr(self, name)
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not (0.0 < ms <= 1.0):
                raise ValueError(f"ThresholdPolicy.{name} must be in (0, 1], got {ms!r}")

    def describe(self) -> str:
        """The policy in words, as reports and run.json record it."""
        if self.method == "sensitivity":
            return f"best specificity at sensitivity >= {self.min_sensitivity:.2f}"
        if self.method == "specificity":
            return f"best sensitivity at specificity >= {self.min_specificity:.2f}"
        return "Youden's J"


def _rates_at_candidates(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every unique probability t (ascending): sensitivity and specificity of p >= t."""
    candidates = np.unique(p)  # sorted ascending, all observed values
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    # number of positives with p >= t  ==  P - number of positives with p < t
    tp = pos.size - np.searchsorted(pos, candidates, side="left")
    tn = np.searchsorted(neg, candidates, side="left")  # negatives with p < t
    return candidates, tp / pos.size, tn / neg.size


def choose_threshold(
    y_true: Any, y_prob: Any, policy: ThresholdPolicy = ThresholdPolicy()
) -> float:
    """Choose the operating threshold on the validation split.

    Candidate thresholds are the unique predicted probabilities, so the returned value is
    one that was actually observed. The smallest observed probability is always a
    candidate and gives sensitivity 1, so the "sensitivity" policy always has a solution
    (possibly with specificity 0).

    Raises ValueError if the validation labels lack positives or negatives: neither
    sensitivity nor specificity can be estimated then.
    """
    if not isinstance(policy, ThresholdPolicy):
        raise ValueError(f"policy must be a ThresholdPolicy, got {type(policy).__name__}")
    y, p = _validate(y_true, y_prob)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        missing = "positive (malignant)" if n_pos == 0 else "negative (benign)"
        raise ValueError(
            f"cannot choose a threshold: the validation split has no {missing} cases "
            f"({n_pos} positive, {n_neg} negative); both classes are needed"
        )

    candidates, sens, spec = _rates_at_candidates(y, p)
    if policy.method == "sensitivity":
        feasible = sens >= policy.min_sensitivity - _SENS_TOL
        # feasible[0] is always True (the minimum probability gives sensitivity 1).
        score = np.where(feasible, spec, -np.inf)
    elif policy.method == "specificity":
        feasible = spec >= policy.min_specificity - _SENS_TOL
        if not feasible.any():
            # Even the highest observed probability flags some negatives (ties at the
            # top): every observed threshold misses the target, so take the strictest.
            return float(candidates[-1])
        score = np.where(feasible, sens, -np.inf)
    else:  # youden
        score = sens + spec - 1.0
    best = score.max()
    # Highest threshold among the (numerically) tied best scores.
    tied = np.flatnonzero(score >= best - 1e-12)
    return float(candidates[tied[-1]])


# --------------------------------------------------------------------- calibration


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]: bin k holds [k/n, (k+1)/n), the last one also holds 1."""
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def reliability_curve(y_true: Any, y_prob: Any, n_bins: int = 10) -> dict:
    """Per-bin calibration summary for the reliability diagram.

    Returns {"bin_edges": [n_bins + 1 floats], "mean_predicted": [...], "fraction_positive":
    [...], "count": [...], "n_bins": n_bins, "ece": float}. The per-bin lists have length
    n_bins; empty bins have count 0 and None for mean_predicted/fraction_positive.
    """
    y, p = _validate(y_true, y_prob)
    n_bins = _validate_n_bins(n_bins)
    idx = _bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    mean_pred: list[float | None] = []
    frac_pos: list[float | None] = []
    for c, sp, sy in zip(count, sum_p, sum_y):
        mean_pred.append(float(sp / c) if c else None)
        frac_pos.append(float(sy / c) if c else None)
    ece = float(np.sum(np.abs(sum_p - sum_y)) / y.size)
    return {
        "bin_edges": [k / n_bins for k in range(n_bins + 1)],
        "mean_predicted": mean_pred,
        "fraction_positive": frac_pos,
        "count": [int(c) for c in count],
        "n_bins": n_bins,
        "ece": ece,
    }


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10) -> float:
    """ECE: sum over equal-width bins of (bin count / n) * |mean prob - fraction positive|."""
    return reliability_curve(y_true, y_prob, n_bins)["ece"]


# ------------------------------------------------------------------ point metrics


def binary_metrics(y_true: Any, y_prob: Any, threshold: float) -> dict:
    """All point metrics at `threshold` (predict positive iff prob >= threshold).

    F1 is computed as 2TP / (2TP + FP + FN), which equals the harmonic mean of precision
    and recall whenever both exist and is 0 when there are positives but none is found.
    Rank metrics (roc_auc, pr_auc) need both classes, otherwise None.
    """
    y, p = _validate(y_true, y_prob)
    t = _validate_threshold(threshold)
    pred = p >= t
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    n = int(y.size)
    n_pos = tp + fn
    n_neg = tn + fp

    recall = _ratio(tp, n_pos)
    both = n_pos > 0 and n_neg > 0
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "sensitivity": recall,
        "specificity": _ratio(tn, n_neg),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "npv": _ratio(tn, tn + fn),
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "pr_auc": float(average_precision_score(y, p)) if both else None,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "n": n,
        "n_positive": int(n_pos),
        "n_negative": int(n_neg),
        "threshold": t,
    }


# ---------------------------------------------------------------------- bootstrap


def _resample_metrics(
    weights: np.ndarray, y: np.ndarray, p: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Metrics for many resamples at once.

    `weights` has shape (B, n): weights[b, i] is how many times case i appears in
    resample b. Resample b is thus the original cases repeated by their counts, and the
    metrics below equal what binary_metrics would give on that expanded data set
    (AUC as the Mann-Whitney statistic with ties counted 1/2; PR AUC as average precision
    with tied scores grouped, as scikit-learn does). Undefined values are NaN here.
    """
    w = weights.astype(np.float64)
    pos = y == 1
    pred = p >= threshold

    tp = w @ (pos & pred).astype(np.float64)
    fn = w @ (pos & ~pred).astype(np.float64)
    fp = w @ (~pos & pred).astype(np.float64)
    tn = w @ (~pos & ~pred).astype(np.float64)
    n_pos = tp + fn
    n_neg = tn + fp

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.full(a.shape, np.nan)
        np.divide(a, b, out=out, where=b > 0)
        return out

    out = {
        "accuracy": div(tp + tn, n_pos + n_neg),
        "sensitivity": div(tp, n_pos),
        "specificity": div(tn, n_neg),
        "precision": div(tp, tp + fp),
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "npv": div(tn, tn + fn),
    }
    out["recall"] = out["sensitivity"]

    # Rank metrics: group cases by unique score (ascending) and work on group totals.
    order = np.argsort(p, kind="stable")
    p_sorted = p[order]
    starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])
    w_sorted = w[:, order]
    pos_sorted = pos[order]
    g_pos = np.add.reduceat(w_sorted * pos_sorted, starts, axis=1)  # (B, U)
    g_neg = np.add.reduceat(w_sorted * ~pos_sorted, starts, axis=1)

    # ROC AUC = P(score_pos > score_neg) + 0.5 P(equal).
    neg_below = np.cumsum(g_neg, axis=1) - g_neg
    auc_num = np.sum(g_pos * (neg_below + 0.5 * g_neg), axis=1)
    out["roc_auc"] = div(auc_num, n_pos * n_neg)

    # Average precision = sum over thresholds (descending) of recall increment * precision.
    tp_at = np.cumsum(g_pos[:, ::-1], axis=1)[:, ::-1]  # positives with score >= group score
    fp_at = np.cumsum(g_neg[:, ::-1], axis=1)[:, ::-1]
    prec_at = div(tp_at, tp_at + fp_at)
    prec_at = np.where(g_pos > 0, prec_at, 0.0)  # only groups holding positives contribute
    ap = div(np.sum(g_pos * prec_at, axis=1), n_pos)
    out["pr_auc"] = np.where(n_neg > 0, ap, np.nan)
    return out


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    threshold: float,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    metrics: Sequence[str] = HEADLINE_METRICS,
) -> dict[str, dict]:
    """Percentile-bootstrap confidence intervals: {metric: {"low": .., "high": ..}}.

    Cases are resampled with replacement separately within positives and within
    negatives (stratified), so every resample keeps the original class counts and has
    both classes whenever the data do. The threshold is held fixed (it was chosen on the
    validation split). Resamples where a metric is undefined (e.g. precision with no
    predicted positives) are left out of that metric's interval; if it is undefined in
    every resample, both bounds are None. Deterministic for a given seed.
    """
    y, p = _validate(y_true, y_prob)
    t = _validate_threshold(threshold)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in _BOOTSTRAP_METRICS]
    if unknown:
        raise ValueError(
            f"bootstrap_ci cannot compute {unknown}; choose from {sorted(_BOOTSTRAP_METRICS)}"
        )

    rng = np.random.default_rng(seed)
    pos_idx = np.flatnonzero(y == 1)
    neg_idx = np.flatnonzero(y == 0)
    n_resamples = int(n_resamples)
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, n_resamples, _BOOTSTRAP_CHUNK):
        b = min(_BOOTSTRAP_CHUNK, n_resamples - start)
        weights = np.zeros((b, y.size), dtype=np.int64)
        # Drawing k cases uniformly with replacement == multinomial counts over the k cases.
        for idx in (pos_idx, neg_idx):
            if idx.size:
                weights[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=b)
        chunk = _resample_metrics(weights, y, p, t)
        for m in metrics:
            values[m].append(chunk[m])

    alpha = (1.0 - confidence) / 2.0
    result: dict[str, dict] = {}
    for m in metrics:
        v = np.concatenate(values[m])
        v = v[np.isfinite(v)]
        if v.size == 0:
            result[m] = {"low": None, "high": None}
        else:
            low, high = np.quantile(v, [alpha, 1.0 - alpha])
            result[m] = {"low": float(low), "high": float(high)}
    return result


# ------------------------------------------------------------------- full report


def evaluate_predictions(
    y_true: Any, y_prob: Any, threshold: float, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """The metrics.json block for one split.

    "at_operating_threshold": binary_metrics at the threshold chosen on validation, plus
    "ci95" (stratified percentile bootstrap over HEADLINE_METRICS; an empty dict
    when n_resamples == 0). "at_0.5": the same metrics at 0.5, for reference only.
    """
    y, p = _validate(y_true, y_prob)
    t = _validate_threshold(threshold)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 0:
        raise ValueError(f"n_resamples must be a non-negative integer, got {n_resamples!r}")
    operating = binary_metrics(y, p, t)
    operating["ci95"] = (
        bootstrap_ci(y, p, t, n_resamples=int(n_resamples), seed=seed, confidence=0.95)
        if n_resamples > 0
        else {}
    )
    reference = binary_metrics(y, p, 0.5)
    reference["note"] = (
        "reference only: fixed threshold 0.5, not the operating threshold chosen on validation"
    )
    return {
        "at_operating_threshold": operating,
        "at_0.5": reference,
        "threshold": t,
        "n_bootstrap": int(n_resamples),
        "ci_method": "percentile bootstrap, cases resampled with replacement stratified by class",
    }


def grouped_paired_auc_difference(y_true: Any, p_a: Any, p_b: Any, groups: Sequence, n_resamples: int = 1000,
                                  seed: int = 0) -> dict:
    """AUC(a) - AUC(b) of two models on the same images, with a 95 % percentile CI from a
    bootstrap that resamples whole groups (patients: a patient's images are not
    independent). Resamples holding one class only are skipped (counted in n_resamples)."""
    y, p_a, p_b = np.asarray(y_true), np.asarray(p_a, dtype=np.float64), np.asarray(p_b, dtype=np.float64)
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_resamples):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if 0 < y[idx].sum() < len(idx):
            diffs.append(roc_auc_score(y[idx], p_a[idx]) - roc_auc_score(y[idx], p_b[idx]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": float(roc_auc_score(y, p_a) - roc_auc_score(y, p_b)),
            "ci95": {"low": float(low), "high": float(high)},
            "share_above_zero": float(np.mean(np.asarray(diffs) > 0)), "n_resamples": len(diffs)}
