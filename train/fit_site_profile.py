"""`bcd calibrate`: fit a site's own operating point for an exported model.

    result = write_site_profile("runtime/models/bus-vgg16-w50-128", "site-data/", "clinic-a.json",
                              SiteProfileConfig(target="sensitivity", target_value=0.90))

The model file is never touched. Its probabilities on the site's labelled images give:
  - optionally a recalibration of the probabilities (Platt scaling or isotonic
    regression, fitted here with scikit-learn and stored as numbers the light runtime
    applies without it: runtime/site_profile.py);
  - the threshold on the (recalibrated) probability that meets the target: best
    specificity at sensitivity >= S, best sensitivity at specificity >= S, or Youden's J
    (train.metrics.choose_threshold, as in training);
  - what that threshold achieves on the same images, with stratified bootstrap 95% CIs.
These numbers are in-sample (the threshold was chosen on the very images it is scored
on), so new images from the site will usually do a little worse; the CI shows how
little the data can pin down. Too little data is refused unless forced: fewer than
`min_per_class` images of either class, or a CI of the target metric wider than
`max_ci_width`. A set with one class only is always refused (nothing to set a threshold
between).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.classifier import Classifier
from runtime.dataset import DataSource, LabelMap, Sample, read_source
from runtime.model_files import sha256_file
from runtime.site_profile import METHODS, Recalibration, SiteProfile, file_list_sha256, write_profile
from train.metrics import ThresholdPolicy, binary_metrics, bootstrap_ci, choose_threshold
from runtime.host import DISCLAIMER, tool_record, utc_now

log = logging.getLogger(__name__)

TARGETS = ("sensitivity", "specificity", "youden")
DEFAULT_MIN_PER_CLASS = 20
DEFAULT_MAX_CI_WIDTH = 0.30
_PLATT_C = 1e4          # almost no regularisation: two parameters, fitted on >= 40 images


class SiteProfileFitError(ValueError):
    """Calibration is impossible on this data (e.g. one class only); --force does not help."""


class SiteProfileRefused(SiteProfileFitError):
    """The data is too small or too uncertain for the target; --force writes it anyway."""


@dataclass(frozen=True)
class SiteProfileConfig:
    target: str = "sensitivity"          # sensitivity | specificity | youden
    target_value: float = 0.90           # the minimum sensitivity / specificity (unused for youden)
    method: str = "threshold"            # threshold | platt | isotonic
    min_per_class: int = DEFAULT_MIN_PER_CLASS
    max_ci_width: float = DEFAULT_MAX_CI_WIDTH
    n_resamples: int = 1000
    seed: int = 0
    force: bool = False
    name: str | None = None              # default: the profile file's stem

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 < self.target_value <= 1.0:
            raise ValueError(f"the target {self.target} must be in (0, 1], got {self.target_value}")
        if self.min_per_class < 1 or not 0.0 < self.max_ci_width <= 1.0 or self.n_resamples < 1:
            raise ValueError("min_per_class and n_resamples must be at least 1, max_ci_width in (0, 1]")

    @property
    def policy(self) -> ThresholdPolicy:
        if self.target == "sensitivity":
            return ThresholdPolicy("sensitivity", min_sensitivity=self.target_value)
        if self.target == "specificity":
            return ThresholdPolicy("specificity", min_specificity=self.target_value)
        return ThresholdPolicy("youden")

    @property
    def checked_metrics(self) -> tuple[str, ...]:
        """The metrics whose CI must be narrow enough for this target."""
        return ("sensitivity", "specificity") if self.target == "youden" else (self.target,)


# ---------------------------------------------------------------------------- data


@dataclass
class SiteData:
    samples: list[Sample]
    labels: np.ndarray                   # 0 benign, 1 malignant
    source: DataSource
    per_class: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Relative names (what the file-list hash covers)."""
        return [s.relative for s in self.samples]


def read_site_data(data: DataSource | str | Path, labels: dict | None = None) -> SiteData:
    """Every labelled image of SITE_DATA: a folder of class folders or a CSV index, read
    by the one dataset reader (runtime.dataset.read_source), as for every command."""
    source = data if isinstance(data, DataSource) else DataSource.parse(str(data))
    if labels:
        source = replace(source, labels=LabelMap(dict(labels)))
    samples = read_source(source).labelled
    return SiteData(samples=samples, labels=np.array([s.label for s in samples], dtype=np.int8), source=source,
                    per_class=dict(Counter(s.class_name for s in samples)))


# ------------------------------------------------------------------------ fitting


def fit_recalibration(y: np.ndarray, p: np.ndarray, method: str) -> Recalibration:
    """Platt or isotonic parameters from scikit-learn, as numbers the runtime applies."""
    if method == "threshold":
        return Recalibration("none")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        q = np.clip(p, 1e-7, 1 - 1e-7)
        logit = np.log(q / (1 - q)).reshape(-1, 1)
        lr = LogisticRegression(C=_PLATT_C).fit(logit, y)
        a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        if a <= 0:
            raise SiteProfileFitError("Platt scaling found no increasing relation between the model's probability "
                                   "and malignancy on this data (slope <= 0): the model does not separate the "
                                   "classes at this site, and no recalibration or threshold can fix that")
        return Recalibration("platt", a=a, b=b)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
        return Recalibration("isotonic", x=tuple(map(float, iso.X_thresholds_)),
                             y=tuple(map(float, iso.y_thresholds_)))
    raise ValueError(f"unknown method {method!r}")


@dataclass
class Fit:
    threshold: float
    recalibration: Recalibration
    achieved: dict                       # on the calibration data (in-sample), with ci95
    problems: list[str]                  # reasons to refuse (empty: fine)
    warnings: list[str]


def check_classes(y: np.ndarray) -> None:
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        only = "benign (or normal)" if n_pos == 0 else "malignant"
        missing = "malignant" if n_pos == 0 else "benign"
        raise SiteProfileFitError(
            f"the calibration data holds only {only} images ({n_pos} malignant, {n_neg} benign): "
            f"with no {missing} image, {'sensitivity' if n_pos == 0 else 'specificity'} cannot be measured and "
            "no threshold can be set between the classes. Add labelled images of both classes "
            f"(at least {DEFAULT_MIN_PER_CLASS} of each).")


def fit(y, p, config: SiteProfileConfig) -> Fit:
    """Recalibration + threshold + what they achieve on (y, p), and any reason to refuse."""
    y = np.asarray(y, dtype=np.int8)
    p = np.asarray(p, dtype=np.float64)
    check_classes(y)
    recal = fit_recalibration(y, p, config.method)
    q = recal.apply(p)                   # the runtime's own code, so predictions reproduce this exactly
    t = choose_threshold(y, q, config.policy)
    m = binary_metrics(y, q, t)
    ci = bootstrap_ci(y, q, t, n_resamples=config.n_resamples, seed=config.seed,
                      metrics=("sensitivity", "specificity", "roc_auc"))
    achieved = {k: m[k] for k in ("sensitivity", "specificity", "precision", "npv", "roc_auc", "n",
                                  "n_positive", "n_negative", "confusion_matrix")}
    achieved["ci95"] = ci
    achieved["note"] = ("in-sample: the threshold was chosen on these images, so new images from the site "
                        "will usually score a little lower")
    problems, warnings = [], []
    n_pos, n_neg = m["n_positive"], m["n_negative"]
    for count, what in ((n_pos, "malignant"), (n_neg, "benign")):
        if count < config.min_per_class:
            problems.append(f"too few {what} images: {count} (at least {config.min_per_class} are needed "
                            "for an operating point worth trusting)")
    for metric in config.checked_metrics:
        low, high = ci[metric]["low"], ci[metric]["high"]
        if low is None or high - low > config.max_ci_width:
            width = "undefined" if low is None else f"{high - low:.2f} ({low:.2f} to {high:.2f})"
            problems.append(f"the 95% CI of {metric} on this data is {width}, wider than the limit "
                            f"{config.max_ci_width:.2f}: too few images to pin the operating point down")
    if m["roc_auc"] is not None and m["roc_auc"] < 0.5:
        problems.append(f"the model's AUC on this data is {m['roc_auc']:.3f}, below chance: it does not rank "
                        "malignant above benign here, and a threshold cannot fix that")
    if config.target != "youden" and m[config.target] < config.target_value - 1e-9:
        warnings.append(f"{config.target} {m[config.target]:.3f} is below the target {config.target_value:.2f} "
                        "even on the calibration data (ties at the top of the probability range)")
    return Fit(t, recal, achieved, problems, warnings)


# ------------------------------------------------------------------------ the command


@dataclass
class SiteProfileResult:
    profile: SiteProfile
    profile_path: Path
    report_path: Path
    report: str                          # Markdown


def write_site_profile(export_dir: str | Path, data: DataSource | str | Path, out: str | Path, config: SiteProfileConfig,
                     variant: str | None = None, labels: dict | None = None) -> SiteProfileResult:
    """Score SITE_DATA with the export, fit, check and write OUT (+ OUT.md report).

    Raises SiteProfileFitError (one class), SiteProfileRefused (too small, unless
    config.force), ValueError / FileNotFoundError for bad input."""
    out = Path(out)
    site = read_site_data(data, labels)
    if not site.samples:
        raise ValueError(f"{site.source.path}: no labelled images (class folders benign/, malignant/, normal/ "
                         "or a CSV index)")
    check_classes(site.labels)   # before spending time on inference
    with Classifier.load(export_dir, variant=variant) as clf:
        p = probabilities(clf, site.samples)
        model = {"export": Path(export_dir).resolve().name, "variant": clf.variant, "file": clf.info.file.name,
                 "sha256": sha256_file(clf.info.file)}
        export_threshold = clf.threshold
        export_policy = (clf.manifest.threshold.get("policy") if clf.manifest else None) or "the export's"
    result = fit(site.labels, p, config)
    shipped = binary_metrics(site.labels, p, export_threshold)
    forced = bool(result.problems)
    if forced and not config.force:
        raise SiteProfileRefused("refusing to write a site profile: " + "; ".join(result.problems)
                                 + ". Add labelled images, or pass --force to write it anyway (the profile "
                                   "then records that it was forced).")
    profile = SiteProfile(
        name=config.name or out.stem, model=model, threshold=result.threshold, policy=config.policy.describe(),
        recalibration=result.recalibration,
        target={"metric": config.target, "value": None if config.target == "youden" else config.target_value},
        data={"source": {k: v for k, v in site.source.to_dict().items() if k != "class_labels"},
              "n": int(site.labels.size), "n_malignant": int(site.labels.sum()),
              "n_benign": int((site.labels == 0).sum()), "per_class_folder": site.per_class,
              "files_sha256": file_list_sha256(site.names, site.labels)},
        achieved={**result.achieved, "export_threshold": {
            "value": export_threshold, "policy": export_policy,
            "sensitivity": shipped["sensitivity"], "specificity": shipped["specificity"]}},
        checks={"min_per_class": config.min_per_class, "max_ci_width": config.max_ci_width,
                "n_bootstrap": config.n_resamples, "forced": forced, "problems": result.problems,
                "warnings": result.warnings},
        created=utc_now(),
        tool=tool_record(),
    )
    write_profile(out, profile)
    report = report_markdown(profile)
    report_path = out.with_suffix(".md")
    atomic.write_text(report_path, report)
    log.info("wrote %s: %s", out, profile.describe())
    return SiteProfileResult(profile, out, report_path, report)


def probabilities(classifier: Classifier, samples: list[Sample]) -> np.ndarray:
    """The export's raw probabilities for the samples, with `bcd evaluate`'s scoring loop
    (no Grad-CAM: lesion masks are left aside). Every image must be classified: the
    profile records the whole file list, so an unreadable or refused image is an error
    that names it, not a NaN for the fit."""
    from train.evaluate_export import classify_samples

    p, _, errors, _ = classify_samples(classifier, [replace(s, mask=None) for s in samples])
    if errors:
        raise SiteProfileFitError(f"{len(errors)} of {len(samples)} image(s) could not be classified, e.g. "
                               f"{errors[0]}; fix or remove them and run again")
    return p


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(ci: dict | None) -> str:
    return "" if not ci or ci.get("low") is None else f"{ci['low']:.3f} – {ci['high']:.3f}"


def _source_text(source) -> str:
    return source.get("path", "?") if isinstance(source, dict) else str(source)


def report_markdown(profile: SiteProfile) -> str:
    a, d, c = profile.achieved, profile.data, profile.checks
    e = a.get("export_threshold", {})
    cm = a["confusion_matrix"]
    recal = profile.recalibration.method
    lines = [
        f"# Site profile: {profile.name}",
        "",
        f"Model: `{profile.model.get('export')}` variant `{profile.model.get('variant')}` "
        f"(file sha256 `{profile.model['sha256'][:16]}…`); the profile is refused by any other model file.",
        f"Calibration data: `{_source_text(d.get('source'))}`, n = {d.get('n')} ({d.get('n_malignant')} malignant, "
        f"{d.get('n_benign')} benign); file list sha256 `{str(d.get('files_sha256'))[:16]}…`.",
        f"Operating point: threshold **{profile.threshold:.4f}** ({profile.policy})"
        + (f" on the {recal}-recalibrated probability." if recal != "none" else " on the model's probability."),
        "",
        "On the calibration data (in-sample: the threshold was chosen on these images; expect a little less "
        "on new ones):",
        "",
        "| operating point | threshold | sensitivity | 95% CI | specificity | 95% CI |",
        "|---|---|---|---|---|---|",
        f"| this site profile | {profile.threshold:.4f} | {_f(a['sensitivity'])} | {_ci(a['ci95'].get('sensitivity'))} "
        f"| {_f(a['specificity'])} | {_ci(a['ci95'].get('specificity'))} |",
    ]
    if e:
        lines.append(f"| the export's threshold ({e.get('policy')}) | {e['value']:.4f} | {_f(e.get('sensitivity'))} "
                     f"| | {_f(e.get('specificity'))} | |")
    lines += [
        "",
        f"AUC {_f(a.get('roc_auc'))} ({_ci(a['ci95'].get('roc_auc'))}). Confusion matrix at the site threshold: "
        f"TP {cm['tp']}, FN {cm['fn']}, FP {cm['fp']}, TN {cm['tn']}.",
    ]
    if c.get("forced"):
        lines += ["", "**Forced:** written despite: " + "; ".join(c.get("problems", [])) + "."]
    for w in c.get("warnings", []):
        lines += ["", f"Warning: {w}."]
    lines += ["", "Use it: `bcd predict IMAGES --site PROFILE` (or set BCD_SITE). Recalibrate for a new scanner, "
              "a new site or a new patient population.", "", DISCLAIMER]
    return "\n".join(lines) + "\n"
