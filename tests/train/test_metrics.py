"""Tests for train.metrics and train.plots.

Expected values in the hand-computed tests are written out as literals (worked out on
paper in the comments), not obtained from scikit-learn.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from train.metrics import (
    HEADLINE_METRICS,
    ThresholdPolicy,
    _resample_metrics,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    evaluate_predictions,
    expected_calibration_error,
    reliability_curve,
)

# Small worked example (index: label, prob):
#   0: 0 0.15   1: 0 0.52   2: 1 0.55   3: 1 0.85
#   4: 1 0.35   5: 0 0.62   6: 1 0.95   7: 0 0.05
Y = [0, 0, 1, 1, 1, 0, 1, 0]
P = [0.15, 0.52, 0.55, 0.85, 0.35, 0.62, 0.95, 0.05]


def synthetic(n: int, seed: int, prevalence: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Moderately separable scores, the kind a decent classifier produces."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[0], y[1] = 0, 1  # both classes always present
    p = np.clip(rng.normal(0.3 + 0.35 * y, 0.18), 0.0, 1.0)
    return y, p


def assert_plain_json(obj) -> None:
    """Only dict/list/str/None/bool and *built-in* int/float, no NaN/inf anywhere."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str)
            assert_plain_json(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_plain_json(v)
    elif obj is None or isinstance(obj, (str, bool)):
        pass
    else:
        assert type(obj) in (int, float), f"{obj!r} has type {type(obj)}"
        assert math.isfinite(obj)


# ------------------------------------------------------------- point metrics by hand


def test_binary_metrics_hand_computed():
    m = binary_metrics(Y, P, 0.5)
    # prob >= 0.5 -> predicted positive: indices 1, 2, 3, 5, 6
    # TP = {2, 3, 6} = 3, FN = {4} = 1, FP = {1, 5} = 2, TN = {0, 7} = 2
    assert m["confusion_matrix"] == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}
    assert (m["n"], m["n_positive"], m["n_negative"]) == (8, 4, 4)
    assert m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(0.625)  # 5/8
    assert m["precision"] == pytest.approx(0.6)  # 3/5
    assert m["recall"] == pytest.approx(0.75)  # 3/4
    assert m["sensitivity"] == m["recall"]
    assert m["specificity"] == pytest.approx(0.5)  # 2/4
    assert m["f1"] == pytest.approx(2 / 3)  # 2*0.6*0.75/(0.6+0.75) = 0.9/1.35
    assert m["npv"] == pytest.approx(2 / 3)  # 2/(2+1)
    # Brier: squared errors 0.0225 0.2704 0.2025 0.0225 0.4225 0.3844 0.0025 0.0025
    #        sum 1.3298, / 8
    assert m["brier"] == pytest.approx(0.166225)
    # ECE, 10 bins: bin0 {0.05|0}: .05; bin1 {0.15|0}: .15; bin3 {0.35|1}: .65;
    #   bin5 {0.52|0, 0.55|1}: |0.535 - 0.5| = .035 (x2 cases); bin6 {0.62|0}: .62;
    #   bin8 {0.85|1}: .15; bin9 {0.95|1}: .05  -> (0.05+0.15+0.65+0.07+0.62+0.15+0.05)/8
    assert m["ece"] == pytest.approx(1.74 / 8)
    # AUC = correctly ordered (pos, neg) pairs / 16. Negatives 0.05 0.15 0.52 0.62.
    #   pos 0.95 beats 4, 0.85 beats 4, 0.55 beats 3, 0.35 beats 2 -> 13/16
    assert m["roc_auc"] == pytest.approx(13 / 16)
    # AP: ranking + + - + - + - -, precision at each positive: 1/1, 2/2, 3/4, 4/6
    assert m["pr_auc"] == pytest.approx((1 + 1 + 0.75 + 4 / 6) / 4)


def test_threshold_is_inclusive():
    # predict positive iff prob >= threshold: a case exactly at the threshold is positive
    m = binary_metrics(Y, P, 0.55)
    # predicted positive: 0.55, 0.62, 0.85, 0.95 -> TP 3 (0.55, 0.85, 0.95), FP 1 (0.62)
    assert m["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}


def test_auc_with_ties_hand_computed():
    # pos: 0.8, 0.4 ; neg: 0.4, 0.1. Pairs: (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=1/2,
    # (0.4>0.1)=1 -> 3.5/4
    m = binary_metrics([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1], 0.5)
    assert m["roc_auc"] == pytest.approx(0.875)


def test_ece_and_reliability_curve_two_bins():
    # bin [0, 0.5): probs 0.15 0.35 0.05, labels 0 1 0 -> mean 0.55/3, frac 1/3, gap 0.15
    # bin [0.5, 1]: probs 0.52 0.55 0.85 0.62 0.95, labels 0 1 1 0 1 -> mean 0.698, frac 0.6
    # ECE = (3 * 0.15 + 5 * 0.098) / 8 = 0.94 / 8
    assert expected_calibration_error(Y, P, n_bins=2) == pytest.approx(0.1175)
    rc = reliability_curve(Y, P, n_bins=2)
    assert rc["bin_edges"] == [0.0, 0.5, 1.0]
    assert rc["count"] == [3, 5]
    assert rc["mean_predicted"] == pytest.approx([0.55 / 3, 0.698])
    assert rc["fraction_positive"] == pytest.approx([1 / 3, 0.6])
    assert rc["ece"] == pytest.approx(0.1175)


def test_reliability_curve_edges_and_empty_bins():
    rc = reliability_curve([0, 1, 1], [0.0, 1.0, 1.0], n_bins=4)
    # 0.0 goes to the first bin, 1.0 to the last (closed) bin; middle bins are empty
    assert rc["count"] == [1, 0, 0, 2]
    assert rc["mean_predicted"] == [0.0, None, None, 1.0]
    assert rc["fraction_positive"] == [0.0, None, None, 1.0]
    assert rc["ece"] == 0.0
    assert_plain_json(rc)


def test_column_vector_inputs_accepted():
    m = binary_metrics(np.array(Y)[:, None], np.array(P)[:, None], 0.5)
    assert m["confusion_matrix"] == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}


# ----------------------------------------------------------------- threshold choice


def test_choose_threshold_sensitivity_policy_hand_analysed():
    # Sensitivity >= 0.9 needs all 4 positives, so t <= 0.35 (lowest positive).
    # Candidates 0.35 / 0.15 / 0.05 give specificity 2/4 / 1/4 / 0 -> 0.35.
    t = choose_threshold(Y, P, ThresholdPolicy("sensitivity", 0.9))
    assert t == 0.35
    m = binary_metrics(Y, P, t)
    assert m["sensitivity"] >= 0.9
    assert m["specificity"] == pytest.approx(0.5)
    # Sensitivity >= 0.75 allows t <= 0.55: at 0.55 sens 3/4, spec 3/4 (best).
    assert choose_threshold(Y, P, ThresholdPolicy("sensitivity", 0.75)) == 0.55
    # Default policy is "sensitivity" with 0.90
    assert choose_threshold(Y, P) == 0.35


def test_choose_threshold_youden_hand_analysed():
    # J = sens + spec - 1 at each candidate:
    #   0.95: .25+1   -1 = .25   0.85: .5+1 -1 = .5    0.62: .5+.75-1 = .25
    #   0.55: .75+.75 -1 = .5    0.52: .75+.5-1 = .25  0.35: 1+.5 -1 = .5
    #   0.15: 1+.25   -1 = .25   0.05: 1+0  -1 = 0
    # Three-way tie at J = 0.5 -> highest threshold, 0.85.
    assert choose_threshold(Y, P, ThresholdPolicy("youden")) == 0.85


def test_choose_threshold_specificity_tie_goes_to_highest_threshold():
    # y: 0 1 1 0 1, p: .1 .3 .4 .6 .9 ; min sensitivity 0.6 (>= 2 of 3 positives)
    # t=.4: sens 2/3, spec 1/2 ; t=.3: sens 1, spec 1/2 ; t=.1: spec 0 ; t>=.6: sens 1/3
    t = choose_threshold([0, 1, 1, 0, 1], [0.1, 0.3, 0.4, 0.6, 0.9], ThresholdPolicy("sensitivity", 0.6))
    assert t == 0.4


def test_choose_threshold_only_minimum_prob_reaches_sensitivity():
    # The lowest-scored case is malignant: only t = its prob catches it (specificity 0).
    t = choose_threshold([1, 0, 0, 1], [0.1, 0.5, 0.6, 0.9], ThresholdPolicy("sensitivity", 0.9))
    assert t == 0.1
    assert binary_metrics([1, 0, 0, 1], [0.1, 0.5, 0.6, 0.9], t)["sensitivity"] == 1.0


def test_choose_threshold_exact_sensitivity_target_reached():
    # 10 positives, 9/10 = 0.9 must count as reaching 0.9 despite float rounding.
    y = [1] * 10 + [0] * 10
    p = [0.05] + [0.6 + 0.03 * i for i in range(9)] + [0.1 + 0.04 * i for i in range(10)]
    t = choose_threshold(y, p, ThresholdPolicy("sensitivity", 0.9))
    assert t == pytest.approx(0.6)
    m = binary_metrics(y, p, t)
    assert m["sensitivity"] == pytest.approx(0.9)
    assert m["specificity"] == 1.0


def test_choose_threshold_is_optimal_against_brute_force():
    y, p = synthetic(120, seed=3)
    p = np.round(p, 2)  # force ties
    # sensitivity/specificity at every grid threshold and every observed probability
    cands = np.concatenate([np.linspace(0, 1, 401), p])
    pred = p[None, :] >= cands[:, None]
    sens = (pred & (y == 1)).sum(axis=1) / (y == 1).sum()
    spec = (~pred & (y == 0)).sum(axis=1) / (y == 0).sum()

    t = choose_threshold(y, p, ThresholdPolicy("sensitivity", 0.9))
    assert t in set(p.tolist())  # an observed probability
    best = binary_metrics(y, p, t)
    assert best["sensitivity"] >= 0.9
    assert spec[sens >= 0.9].max() == pytest.approx(best["specificity"])

    ty = choose_threshold(y, p, ThresholdPolicy("youden"))
    jy = binary_metrics(y, p, ty)
    assert (sens + spec).max() == pytest.approx(jy["sensitivity"] + jy["specificity"])


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1, 1]])
def test_choose_threshold_needs_both_classes(y):
    with pytest.raises(ValueError, match="no (positive|negative)"):
        choose_threshold(y, [0.2, 0.5, 0.7])


@pytest.mark.parametrize(
    "kwargs", [{"method": "f1"}, {"min_sensitivity": 0.0}, {"min_sensitivity": 1.5}]
)
def test_threshold_policy_validation(kwargs):
    with pytest.raises(ValueError):
        ThresholdPolicy(**kwargs)


# ----------------------------------------------------------------------- bootstrap


def test_vectorised_resampling_matches_direct_computation():
    # weights[b, i] = multiplicity of case i; must equal binary_metrics on the repeated data
    y, p = synthetic(60, seed=5)
    p = np.round(p, 2)
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 3, size=(8, y.size))
    weights[:, :2] += 1  # keep both classes
    got = _resample_metrics(weights, y, p, 0.45)
    for b in range(weights.shape[0]):
        expected = binary_metrics(np.repeat(y, weights[b]), np.repeat(p, weights[b]), 0.45)
        for k in ("accuracy", "sensitivity", "specificity", "precision", "f1", "npv", "roc_auc", "pr_auc"):
            assert got[k][b] == pytest.approx(expected[k], abs=1e-12), (k, b)


def test_bootstrap_ci_contains_point_estimate_and_is_deterministic():
    y, p = synthetic(150, seed=1)
    t = 0.45
    point = binary_metrics(y, p, t)
    ci = bootstrap_ci(y, p, t, n_resamples=1000, seed=7)
    assert set(ci) == set(HEADLINE_METRICS)
    for k, bounds in ci.items():
        assert set(bounds) == {"low", "high"}
        assert bounds["low"] <= point[k] <= bounds["high"], k
        assert bounds["low"] < bounds["high"], k
    assert bootstrap_ci(y, p, t, n_resamples=1000, seed=7) == ci
    assert bootstrap_ci(y, p, t, n_resamples=1000, seed=8) != ci
    assert_plain_json(ci)


def test_bootstrap_ci_narrows_with_more_data():
    small = synthetic(60, seed=11)
    large = synthetic(1200, seed=12)
    ci_s = bootstrap_ci(*small, 0.45, n_resamples=400, seed=0)
    ci_l = bootstrap_ci(*large, 0.45, n_resamples=400, seed=0)
    for k in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        width_s = ci_s[k]["high"] - ci_s[k]["low"]
        width_l = ci_l[k]["high"] - ci_l[k]["low"]
        assert width_l < 0.6 * width_s, k


def test_bootstrap_ci_is_stratified():
    # With 2 positives among 40 cases, unstratified resampling would often draw no
    # positive; stratified, sensitivity and AUC are defined in every resample.
    y = [1, 1] + [0] * 38
    p = [0.9, 0.3] + list(np.linspace(0.0, 0.8, 38))
    ci = bootstrap_ci(y, p, 0.5, n_resamples=300, seed=0)
    # sensitivity of a resample can only be 0, 0.5 or 1
    assert ci["sensitivity"]["low"] == 0.0 and ci["sensitivity"]["high"] == 1.0
    assert ci["roc_auc"]["low"] is not None


@pytest.mark.parametrize("bad", [{"n_resamples": 0}, {"confidence": 1.0}, {"metrics": ("brier_x",)}])
def test_bootstrap_ci_argument_validation(bad):
    with pytest.raises(ValueError):
        bootstrap_ci(Y, P, 0.5, **bad)


# ------------------------------------------------------------ degenerate / reports


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_none_not_nan(label):
    y = [label] * 5
    p = [0.1, 0.2, 0.6, 0.7, 0.9]
    m = binary_metrics(y, p, 0.5)
    assert m["roc_auc"] is None and m["pr_auc"] is None
    if label == 0:
        assert m["sensitivity"] is None and m["recall"] is None
        assert m["specificity"] == pytest.approx(0.4)
        assert m["precision"] == 0.0  # 3 predicted positives, all false
    else:
        assert m["specificity"] is None
        assert m["npv"] == 0.0
        assert m["sensitivity"] == pytest.approx(0.6)
    report = evaluate_predictions(y, p, 0.5, n_resamples=50, seed=0)
    text = json.dumps(report, allow_nan=False)  # must not raise
    assert "NaN" not in text
    assert_plain_json(report)
    ci = report["at_operating_threshold"]["ci95"]
    assert ci["roc_auc"] == {"low": None, "high": None}


def test_no_predicted_positives():
    m = binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], 0.9)
    assert m["confusion_matrix"] == {"tn": 2, "fp": 0, "fn": 2, "tp": 0}
    assert m["precision"] is None
    assert m["sensitivity"] == 0.0
    assert m["f1"] == 0.0  # 2TP / (2TP + FP + FN) = 0 / 2
    assert m["npv"] == 0.5
    json.dumps(m, allow_nan=False)


def test_evaluate_predictions_structure():
    y, p = synthetic(150, seed=2)
    t = choose_threshold(y, p)
    report = evaluate_predictions(y, p, t, n_resamples=200, seed=0)
    assert report["threshold"] == t
    assert report["n_bootstrap"] == 200
    op = report["at_operating_threshold"]
    assert op == {**binary_metrics(y, p, t), "ci95": op["ci95"]}
    assert set(op["ci95"]) == set(HEADLINE_METRICS)
    ref = report["at_0.5"]
    assert ref["threshold"] == 0.5
    assert "reference only" in ref["note"]
    assert_plain_json(report)
    json.dumps(report, allow_nan=False)
    # no bootstrap requested: no intervals, same point metrics
    quick = evaluate_predictions(y, p, t, n_resamples=0)
    assert quick["at_operating_threshold"]["ci95"] == {} and quick["n_bootstrap"] == 0
    # numpy inputs and numpy scalars come back as plain Python numbers
    assert type(op["confusion_matrix"]["tp"]) is int
    assert type(op["roc_auc"]) is float


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([0, 1, 1], [0.2, 0.8], "same length"),
        ([0, 2, 1], [0.2, 0.8, 0.5], "only 0"),
        ([0, -1, 1], [0.2, 0.8, 0.5], "only 0"),
        ([0, 0.5, 1], [0.2, 0.8, 0.5], "only 0"),
        ([0, 1, 1], [0.2, 1.2, 0.5], r"\[0, 1\]"),
        ([0, 1, 1], [-0.1, 0.8, 0.5], r"\[0, 1\]"),
        ([0, 1, 1], [0.2, float("nan"), 0.5], "finite"),
        ([0, 1, 1], [0.2, float("inf"), 0.5], "finite"),
        ([], [], "empty"),
        ([[0, 1], [1, 0]], [[0.2, 0.8], [0.5, 0.5]], "one-dimensional"),
        (["a", "b"], [0.2, 0.8], "numeric"),
    ],
)
def test_invalid_inputs_raise_value_error(y, p, match):
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, p, 0.5)
    with pytest.raises(ValueError):
        evaluate_predictions(y, p, 0.5, n_resamples=10)


@pytest.mark.parametrize("t", [float("nan"), float("inf"), "high", None])
def test_invalid_threshold_raises_value_error(t):
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics(Y, P, t)


# --------------------------------------------------------------------------- plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, path


def assert_no_temp_files(directory) -> None:
    leftovers = [f.name for f in directory.iterdir() if f.name.startswith(".") or ".tmp" in f.name]
    assert leftovers == []


def test_each_plot_function_writes_a_png(tmp_path):
    from train import plots

    y, p = synthetic(80, seed=4)
    t = choose_threshold(y, p)
    m = binary_metrics(y, p, t)
    written = [
        plots.plot_roc(y, p, tmp_path / "roc.png", threshold=t),
        plots.plot_roc(y, p, tmp_path / "roc_plain.png"),
        plots.plot_pr(y, p, tmp_path / "pr.png", threshold=t),
        plots.plot_confusion(m["confusion_matrix"], tmp_path / "cm.png"),
        plots.plot_reliability(y, p, tmp_path / "rel.png", n_bins=5),
        plots.plot_history(
            {"loss": [0.7, 0.5, 0.4, 0.35], "val_loss": [0.72, 0.6, 0.5, 0.52],
             "auc": [0.6, 0.8, 0.85, 0.9], "val_auc": [0.6, 0.75, 0.8, 0.79],
             "phase_boundaries": [2]},
            tmp_path / "history.png",
        ),
        plots.plot_history({"loss": [0.7, 0.5], "val_loss": [0.8, None]}, tmp_path / "loss_only.png"),
    ]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(w.name for w in written)
    for path in written:
        assert_png(path)
    assert_no_temp_files(tmp_path)


def test_write_evaluation_plots(tmp_path):
    from train import plots

    y, p = synthetic(100, seed=6)
    t = choose_threshold(y, p)
    report = evaluate_predictions(y, p, t, n_resamples=50)
    out = tmp_path / "eval"
    paths = plots.write_evaluation_plots(y, p, t, report, out)
    assert [x.name for x in paths] == ["roc.png", "pr.png", "confusion.png", "reliability.png"]
    for path in paths:
        assert path.parent == out
        assert_png(path)
    assert_no_temp_files(out)
    assert len(list(out.iterdir())) == 4


def test_plots_survive_single_class_data(tmp_path):
    from train import plots

    y, p = [0, 0, 0, 0], [0.1, 0.3, 0.6, 0.2]
    report = evaluate_predictions(y, p, 0.5, n_resamples=20)
    paths = plots.write_evaluation_plots(y, p, 0.5, report, tmp_path)
    for path in paths:
        assert_png(path)
    assert_no_temp_files(tmp_path)


def test_plot_confusion_rejects_incomplete_matrix(tmp_path):
    from train import plots

    with pytest.raises(ValueError, match="missing"):
        plots.plot_confusion({"tn": 1, "fp": 2}, tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []
