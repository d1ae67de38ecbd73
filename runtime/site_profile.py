"""Site profiles: a clinic's own operating point for one exported model.

A threshold chosen on one hospital's validation images does not travel: at another
site, with other scanners and patients, the same threshold gives another sensitivity
and specificity. `bcd calibrate` (train/fit_site_profile.py) fits a new operating point on a
site's own labelled images and writes it as a small JSON file, the site profile:

    {"schema": "bcd-site-profile", "schema_version": 1, "name": "clinic-a",
     "model": {"export": "bus-vgg16-w50-128", "variant": "onnx-int8", "sha256": "..."},
     "threshold": {"value": 0.31, "policy": "best specificity at sensitivity >= 0.90", ...},
     "recalibration": {"method": "none" | "platt" (a, b) | "isotonic" (x, y)},
     "data": {"n": 120, "n_malignant": 40, "n_benign": 80, "files_sha256": "...", ...},
     "achieved": {sensitivity, specificity, their 95% CIs ... on the calibration data}, ...}

This module is the one place the schema is written (`SiteProfile.to_dict`, used by
`write_profile`) and read (`read_profile`). It applies a profile without scikit-learn:

    clf = Classifier.load("runtime/models/bus-vgg16-w50-128")
    clf.use_site(read_profile("clinic-a.json"))   # refuses a profile made for another model
    clf.predict("scan.png")                       # recalibrated probability, the site's threshold

A profile is bound to the model file it was fitted on (its sha256): probabilities of
another model, or of another variant of the same export, are different numbers, so
the profile's threshold would not mean the same operating point there.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from runtime import atomic
from runtime.host import DISCLAIMER
from runtime.model_files import sha256_file

SCHEMA = "bcd-site-profile"
SCHEMA_VERSION = 1
SITE_ENV = "BCD_SITE"                  # default profile of bcd predict / evaluate / demo
METHODS = ("threshold", "platt", "isotonic")   # what `bcd calibrate --method` fits
_EPS = 1e-7                             # keeps logit() finite for probabilities of exactly 0 or 1


class SiteProfileError(ValueError):
    """A profile that can't be read, or that belongs to another model."""


# --------------------------------------------------------------------- recalibration


@dataclass(frozen=True)
class Recalibration:
    """A monotone map from the model's probability to a site-calibrated one.

    "none": identity. "platt": sigmoid(a * logit(p) + b). "isotonic": piecewise linear
    through the points (x, y), constant beyond the ends (what scikit-learn's
    IsotonicRegression(out_of_bounds="clip") predicts, without scikit-learn)."""

    method: str = "none"
    a: float | None = None
    b: float | None = None
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method == "platt":
            if not (_finite(self.a) and _finite(self.b)):
                raise SiteProfileError("platt recalibration needs finite numbers a and b")
            if self.a <= 0:
                raise SiteProfileError("platt recalibration needs a > 0 (an increasing map)")
        elif self.method == "isotonic":
            x, y = np.asarray(self.x, float), np.asarray(self.y, float)
            if x.size < 1 or x.size != y.size or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise SiteProfileError("isotonic recalibration needs equally long, finite lists x and y")
            if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise SiteProfileError("isotonic recalibration needs x and y in increasing order")
            if y.min() < 0 or y.max() > 1:
                raise SiteProfileError("isotonic recalibration values y must lie in [0, 1]")
        elif self.method != "none":
            raise SiteProfileError(f"unknown recalibration method {self.method!r} (none, platt or isotonic)")

    def apply(self, p):
        """Recalibrated probabilities for an array (or one float) of model probabilities.
        NaN stays NaN, so the caller's non-finite check still sees it."""
        arr = np.asarray(p, dtype=np.float64)
        if self.method == "platt":
            q = np.clip(arr, _EPS, 1.0 - _EPS)
            out = 1.0 / (1.0 + np.exp(-(self.a * np.log(q / (1.0 - q)) + self.b)))
        elif self.method == "isotonic":
            out = np.interp(arr, self.x, self.y)
            out = np.where(np.isnan(arr), np.nan, out)
        else:
            out = arr
        return float(out) if np.ndim(p) == 0 else out

    def to_dict(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b,
                    "formula": "sigmoid(a * logit(p) + b)"}
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.x), "y": list(self.y),
                    "formula": "piecewise linear through (x, y), constant beyond the ends"}
        return {"method": "none"}

    @classmethod
    def from_dict(cls, d: Any) -> "Recalibration":
        if not isinstance(d, dict):
            raise SiteProfileError("recalibration: expected an object")
        method = d.get("method", "none")
        try:
            if method == "platt":
                return cls("platt", a=float(d["a"]), b=float(d["b"]))
            if method == "isotonic":
                return cls("isotonic", x=tuple(float(v) for v in d["x"]), y=tuple(float(v) for v in d["y"]))
        except (KeyError, TypeError, ValueError) as err:
            raise SiteProfileError(f"recalibration: damaged {method} parameters ({err})") from None
        return cls(str(method))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- profile


@dataclass
class SiteProfile:
    """What `bcd calibrate` fitted. Only `model`, `threshold` and `recalibration` change
    predictions; the rest says what the operating point rests on."""

    name: str
    model: dict[str, Any]                # export, variant, sha256 (of the model file), file
    threshold: float
    policy: str                          # e.g. "best specificity at sensitivity >= 0.90"
    recalibration: Recalibration = field(default_factory=Recalibration)
    target: dict[str, Any] = field(default_factory=dict)     # {"metric": "sensitivity", "value": 0.9}
    data: dict[str, Any] = field(default_factory=dict)       # counts per class, files_sha256, source
    achieved: dict[str, Any] = field(default_factory=dict)   # on the calibration data, with 95% CIs
    checks: dict[str, Any] = field(default_factory=dict)     # limits applied, warnings, forced
    created: str = ""
    tool: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None             # where it was read from (not stored)

    def __post_init__(self) -> None:
        if not _finite(self.threshold):
            raise SiteProfileError("threshold must be a finite number")
        sha = self.model.get("sha256") if isinstance(self.model, dict) else None
        if not isinstance(sha, str) or len(sha) != 64:
            raise SiteProfileError("model.sha256: the model file's sha256 (64 hex digits) is missing")

    def recalibrate(self, p):
        return self.recalibration.apply(p)

    def describe(self) -> str:
        """One line for logs and reports."""
        d = self.data
        counts = (f"; fitted on {d['n']} images: {d.get('n_malignant')} malignant, {d.get('n_benign')} benign"
                  if d.get("n") is not None else "")
        recal = "" if self.recalibration.method == "none" else f", {self.recalibration.method} recalibration"
        return f"site profile '{self.name}' (threshold {self.threshold:.4f}: {self.policy}{recal}{counts})"

    def check_model(self, file: str | os.PathLike, variant: str | None = None) -> None:
        """Raise SiteProfileError unless `file` is the model file this profile was made for."""
        actual = sha256_file(Path(file))
        if actual.lower() == str(self.model["sha256"]).lower():
            return
        made_for = ", ".join(f"{k} {self.model[k]}" for k in ("export", "variant") if self.model.get(k))
        this = f"{file}" + (f" (variant {variant})" if variant else "")
        raise SiteProfileError(
            f"site profile '{self.name}'{_where(self.path)} was made for another model file "
            f"({made_for or 'unknown export'}, sha256 {str(self.model['sha256'])[:12]}...); "
            f"this model is {this}, sha256 {actual[:12]}.... A profile applies only to the model file it was "
            "calibrated on: run `bcd calibrate` for this model (or drop --site / unset "
            f"{SITE_ENV})."
        )

    # ---------------------------------------------------------------- the schema

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "created": self.created,
            "tool": dict(self.tool),
            "model": dict(self.model),
            "threshold": {"value": self.threshold, "policy": self.policy, "target": dict(self.target),
                          "scale": ("recalibrated probability" if self.recalibration.method != "none"
                                    else "model probability")},
            "recalibration": self.recalibration.to_dict(),
            "data": dict(self.data),
            "achieved": dict(self.achieved),
            "checks": dict(self.checks),
            "note": f"{DISCLAIMER} Recalibrate for a new scanner, site or patient population.",
        }

    @classmethod
    def from_dict(cls, d: Any, path: Path | None = None) -> "SiteProfile":
        where = _where(path)
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise SiteProfileError(f"not a site profile{where} (written by `bcd calibrate`)")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise SiteProfileError(f"site profile{where} has schema version {d.get('schema_version')!r}; "
                                   f"this runtime reads version {SCHEMA_VERSION}")
        t = d.get("threshold")
        if not isinstance(t, dict) or not _finite(t.get("value")):
            raise SiteProfileError(f"site profile{where}: threshold.value is missing or not a number")
        if not isinstance(d.get("model"), dict):
            raise SiteProfileError(f"site profile{where}: the model it belongs to is missing")
        try:
            return cls(name=str(d.get("name") or (path.stem if path else "site")), model=dict(d["model"]),
                       threshold=float(t["value"]), policy=str(t.get("policy", "")),
                       recalibration=Recalibration.from_dict(d.get("recalibration", {"method": "none"})),
                       target=dict(t.get("target") or {}), data=dict(d.get("data") or {}),
                       achieved=dict(d.get("achieved") or {}), checks=dict(d.get("checks") or {}),
                       created=str(d.get("created", "")), tool=dict(d.get("tool") or {}), path=path)
        except SiteProfileError as err:
            raise SiteProfileError(f"site profile{where}: {err}") from None


def _where(path: Path | None) -> str:
    return f" ({path})" if path else ""


def read_profile(path: str | os.PathLike) -> SiteProfile:
    path = Path(path)
    doc = atomic.read_json(path, missing="site profile not found: {path}",
                           invalid="{path}: not a JSON site profile ({reason})",
                           error=SiteProfileError, missing_error=SiteProfileError)
    return SiteProfile.from_dict(doc, path)


def write_profile(path: str | os.PathLike, profile: SiteProfile) -> None:
    atomic.write_json(path, profile.to_dict())


# --------------------------------------------------------------------------- helpers


def file_list_sha256(names: Sequence[str], labels: Iterable[int]) -> str:
    """A fingerprint of which images (relative names) with which labels a profile was
    fitted on: sha256 of the sorted "name<TAB>label" lines."""
    lines = sorted(f"{n}\t{int(y)}" for n, y in zip(names, labels))
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def site_path(arg: str | os.PathLike | None, no_site: bool = False) -> Path | None:
    """The profile a command uses: --site, else $BCD_SITE, else none (--no-site: none)."""
    if no_site:
        return None
    if arg:
        return Path(arg)
    env = os.environ.get(SITE_ENV)
    return Path(env) if env else None


def load_for(classifier, path: str | os.PathLike | None) -> SiteProfile | None:
    """Read the profile at `path` (None: nothing) and apply it to `classifier`."""
    if path is None:
        return None
    profile = read_profile(path)
    classifier.use_site(profile)
    return profile
