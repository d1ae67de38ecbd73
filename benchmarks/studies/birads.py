"""The radiologists' yardstick: BI-RADS against biopsy on the model's own split.

    python -m benchmarks.studies.birads models/bus-vgg16-w50-128 --out docs/results/birads
    python -m benchmarks.studies.birads runs/bus-b --out runs/bus-b/birads

BUS-BRA's bus_data.csv holds, for every image, the radiologist's BI-RADS category (2-5)
beside the biopsy result (Pathology). Used as a score, BI-RADS has an AUC of its own
against biopsy: the bar a model should reach on the same images. For the BUS-BRA images
of an export's or a run's test and validation splits (its split.json), this writes:
  - the BI-RADS AUC [95% CI] and its sensitivity / specificity at BI-RADS >= 4 (the
    category from which a biopsy is recommended);
  - the model's AUC [95% CI] and its sensitivity / specificity at its own threshold on
    the same images (an export through the runtime, a run through Keras);
  - the model's AUC minus the BI-RADS AUC, with a 95% CI from a bootstrap over patients
    (Case: a patient's images are not independent);
  - BI-RADS on all BUS-BRA images (no model), for reference.
The CIs of single AUCs come from train.metrics.bootstrap_ci (images resampled within
each class), as in the model cards. Writes OUT/birads.json and OUT/birads.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.dataset import CsvMapping, DataSource, Sample, read_source, recorded_folder
from runtime.host import DISCLAIMER
from runtime.manifest import split_file
from train.metrics import binary_metrics, bootstrap_ci, grouped_paired_auc_difference

log = logging.getLogger("benchmarks.studies.birads")

BUSBRA_MAPPING = "path=Images/{ID}.png,label=Pathology,group=Case,birads=BIRADS"
BIOPSY_FROM = 4          # BI-RADS 4 and 5: a biopsy is recommended
PARTS = ("test", "val")
_SCALE = 10.0            # BI-RADS / 10 keeps the score in [0, 1] for the metric helpers


def birads_yardstick(y: np.ndarray, birads: np.ndarray, groups, model_p: np.ndarray | None = None,
                     model_threshold: float | None = None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """BI-RADS (and the model, when given) against biopsy on the same images."""
    y, score = np.asarray(y, dtype=int), np.asarray(birads, dtype=np.float64) / _SCALE
    out = {"n": int(y.size), "malignant": int(y.sum()),
           "birads_counts": {str(int(k)): int((np.asarray(birads) == k).sum()) for k in np.unique(birads)},
           "birads": _scored(y, score, BIOPSY_FROM / _SCALE, n_resamples, seed)}
    out["birads"]["operating_point"] = f"BI-RADS >= {BIOPSY_FROM}"
    if model_p is not None:
        out["model"] = _scored(y, np.asarray(model_p, dtype=np.float64), float(model_threshold), n_resamples, seed)
        out["model"]["operating_point"] = f"its threshold {model_threshold:.3f}"
        out["model_minus_birads"] = grouped_paired_auc_difference(y, model_p, score, groups, n_resamples, seed)
    return out


def _scored(y: np.ndarray, p: np.ndarray, threshold: float, n_resamples: int, seed: int) -> dict:
    m = binary_metrics(y, p, threshold)
    ci = bootstrap_ci(y, p, threshold, n_resamples, seed, metrics=("roc_auc", "sensitivity", "specificity"))
    return {k: {"value": m[k], "ci95": ci[k]} for k in ("roc_auc", "sensitivity", "specificity")}


# --------------------------------------------------------------------- the images

def busbra_samples(csv_path: Path) -> dict[str, Sample]:
    """Every BUS-BRA image with its BI-RADS, by the path split.json records."""
    source = DataSource.parse(str(csv_path), CsvMapping.parse(BUSBRA_MAPPING))
    return {s.relative: s for s in read_source(source).labelled if s.birads is not None}


def split_part(split: dict, part: str, csv_path: Path, known: dict[str, Sample]) -> list[Sample]:
    """The BUS-BRA images of one part of split.json, matched by the source's folder name
    (the split may have been made where the data lived then)."""
    names = {d["name"] for d in split.get("sources") or [] if recorded_folder(d).name == csv_path.parent.name}
    return [known[e["path"]] for e in split["files"].get(part, []) if e.get("source") in names and e["path"] in known]


def _read_split(model: Path) -> dict:
    path = model / "split.json" if (model / "run.json").is_file() else split_file(model)
    return json.loads(Path(path).read_text())


def _default_csv(split: dict) -> Path | None:
    for d in split.get("sources") or []:
        if d.get("kind") == "csv" and Path(d["path"]).name == "bus_data.csv":
            return Path(d["path"])
    return None


# --------------------------------------------------------------------- the model

def model_probabilities(model: Path, samples: list[Sample]) -> tuple[np.ndarray, float, str]:
    """(probabilities, operating threshold, what scored them) for the samples."""
    if (model / "run.json").is_file():
        return _run_probabilities(model, samples)
    from runtime.classifier import Classifier
    from train.evaluate_export import classify_samples
    with Classifier.load(model) as clf:
        p, _, errors, _ = classify_samples(clf, samples)
        if errors:
            raise ValueError(f"{len(errors)} image(s) could not be classified, e.g. {errors[0]}")
        return p, clf.threshold, f"export {model.name} ({clf.variant}, through the runtime)"


def _run_probabilities(run: Path, samples: list[Sample]) -> tuple[np.ndarray, float, str]:
    from runtime.preprocessing import PreprocessSpec
    from train.data import load_files
    from train.evaluate import predict_probabilities
    from train.tf_setup import keras
    info = json.loads((run / "run.json").read_text())
    if info.get("status") != "complete":
        raise ValueError(f"{run} is not a finished run")
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    model = keras.models.load_model(run / "model.keras", compile=False)
    images = load_files(Path("/"), [str(s.path.resolve()) for s in samples], spec)
    return predict_probabilities(model, images, spec), float(info["threshold"]["value"]), f"run {run.name} (Keras)"


# --------------------------------------------------------------------- the report

def _v(entry: dict | None, key: str) -> str:
    if entry is None:
        return "—"
    value, ci = entry[key]["value"], entry[key]["ci95"]
    if value is None:
        return "—"
    return f"{value:.3f} [{ci['low']:.3f}–{ci['high']:.3f}]" if ci["low"] is not None else f"{value:.3f}"


def birads_markdown(doc: dict) -> str:
    model = f"Model: {doc['model_what']}." if doc["model_what"] else "No model given."
    lines = [f"**The radiologists' yardstick on BUS-BRA.** {model} "
             "BI-RADS (the radiologist's category, 2–5) used as a score against biopsy, on the same images; "
             f"sensitivity / specificity at BI-RADS ≥ {BIOPSY_FROM} for BI-RADS, at the model's threshold "
             "for the model. 95% CIs: bootstrap of images within each class; the difference: bootstrap of "
             "patients.", "",
             "| images | n (malignant) | BI-RADS AUC | model AUC | model − BI-RADS | BI-RADS sens. / spec. | model sens. / spec. |",
             "|---|---|---|---|---|---|---|"]
    for name, r in doc["parts"].items():
        diff = r.get("model_minus_birads")
        d = f"{diff['difference']:+.3f} [{diff['ci95']['low']:+.3f}, {diff['ci95']['high']:+.3f}]" if diff else "—"
        b, m = r["birads"], r.get("model")
        lines.append(f"| {name} | {r['n']} ({r['malignant']}) | {_v(b, 'roc_auc')} | {_v(m, 'roc_auc')} | {d} | "
                     f"{_v(b, 'sensitivity')} / {_v(b, 'specificity')} | "
                     f"{_v(m, 'sensitivity') if m else '—'} / {_v(m, 'specificity') if m else '—'} |")
    lines += ["", f"Command: `{doc['command']}`", "", DISCLAIMER]
    return "\n".join(lines) + "\n"


def run_study(model: Path | None, csv_path: Path | None, n_resamples: int = 1000) -> dict:
    split = _read_split(model) if model is not None else None
    csv_path = csv_path or (_default_csv(split) if split else None)
    if csv_path is None or not csv_path.is_file():
        raise ValueError("BUS-BRA's bus_data.csv not found: pass --busbra PATH/bus_data.csv")
    known = busbra_samples(csv_path)
    parts: dict[str, dict] = {}
    what = None
    if split is not None:
        for part in PARTS:
            samples = split_part(split, part, csv_path, known)
            if not samples:
                continue
            p, threshold, what = model_probabilities(model, samples)
            parts[f"{part} split, BUS-BRA"] = _measure(samples, p, threshold, n_resamples)
        if not parts:
            raise ValueError(f"{model}'s split.json lists no BUS-BRA images of {csv_path}")
    parts["all BUS-BRA images (no model)"] = _measure(list(known.values()), None, None, n_resamples)
    return {"model": str(model) if model else None, "model_what": what, "busbra_csv": str(csv_path), "parts": parts}


def _measure(samples: list[Sample], p, threshold, n_resamples: int) -> dict:
    y = np.array([s.label for s in samples])
    birads = np.array([s.birads for s in samples])
    groups = [s.group or s.relative for s in samples]
    return birads_yardstick(y, birads, groups, p, threshold, n_resamples)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.birads", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, nargs="?", help="an export directory or a finished run directory "
                   "(omitted: BI-RADS on all BUS-BRA images only)")
    p.add_argument("--busbra", type=Path, help="BUS-BRA's bus_data.csv (default: the one the split records)")
    p.add_argument("--out", type=Path, required=True, help="folder for birads.json and birads.md")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    try:
        doc = run_study(args.model, args.busbra, args.bootstrap)
    except (ValueError, FileNotFoundError) as err:
        print(f"birads: error: {err}", file=sys.stderr)
        return 2
    doc["command"] = "python -m benchmarks.studies.birads " + " ".join(sys.argv[1:] if argv is None else argv)
    doc["seconds"] = round(time.perf_counter() - started, 1)
    atomic.write_json(args.out / "birads.json", doc)
    text = birads_markdown(doc)
    atomic.write_text(args.out / "birads.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
