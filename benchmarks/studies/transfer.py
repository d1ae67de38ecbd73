"""Transfer to a new site: does fine-tuning an earlier run on a clinic's 100 images help?

`python -m benchmarks.studies.transfer --out DIR [--image-size 64] [--width 0.25] [--repeats 3] ...`

One command, every number from it:
1. splits the target site (default BUS-BRA, grouped by patient) with a fixed seed into a
   test set of whole patients and, from the other patients, `--repeats` draws of a
   100-image "site" training set (whole patients, stratified by label), written as
   canonical CSVs (path,label,group,mask; absolute paths) in DIR;
2. trains the source model on the other dataset (default BUSI) with `bcd train`, or
   reuses `--source-run`; then per draw, with `bcd train` on the 100 images, a model
   fine-tuned from the source run (`--weights SOURCE_RUN`) and one from scratch per
   `--scratch-archs` recipe;
3. scores every model with `bcd evaluate RUN --data test.csv` (AUC with a 95% bootstrap
   CI), plus paired patient-level bootstrap CIs of the AUC differences;
4. writes DIR/transfer.md and DIR/transfer.json.

Each `bcd train` on the 100 images makes its own 70/15/15 split, so it trains on about 70
and early-stops and picks its threshold on about 15: what a clinic would get. The source
model is fine-tuned as plain VGG16 (`--finetune-arch vgg16`): its saved form has the batch
norms folded in. Finished runs with the same settings are reused, so an interrupted
benchmark continues.
Research and education only: not a diagnosis.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.dataset import CsvMapping, DataSource, Sample, read_source
from runtime.host import DISCLAIMER
from train.metrics import grouped_paired_auc_difference

BUSBRA_MAP = "path=Images/{ID}.png,label=Pathology,group=Case,mask=Masks/mask_{ID#bus_}.png"
CSV_COLUMNS = ("path", "label", "group", "mask")
ARCHS = ("vgg16", "vgg16-bn")


@dataclass(frozen=True)
class TransferConfig:
    out: str
    source: str = "/work/shared/data/busi"                   # dataset the source model learns from
    target: str = "/work/shared/data/busbra/bus_data.csv"   # the "new site"
    target_map: str | None = BUSBRA_MAP
    source_run: str | None = None       # reuse a finished run instead of training the source model
    site_images: int = 100
    test_images: int = 600
    repeats: int = 3                    # draws of the site set (each: one fine-tuned + one scratch model)
    seed: int = 0
    image_size: int = 64
    width: float = 0.25
    arch: str = "vgg16-bn"               # the source model's recipe (from scratch, ~450 images)
    finetune_arch: str = "vgg16"         # the saved source model is plain VGG16 (batch norms folded): see README
    scratch_archs: str = "vgg16-bn,vgg16"   # the site-only baselines, one model per recipe and draw
    source_epochs: int = 20
    site_epochs: int = 30
    patience: int = 6
    batch_size: int = 16
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        if self.site_images < 10 or self.test_images < 10 or self.repeats < 1:
            raise ValueError("--site-images and --test-images must be at least 10, --repeats at least 1")
        if not self.scratch or any(a not in ARCHS for a in (self.arch, self.finetune_arch, *self.scratch)):
            raise ValueError(f"architectures must be among {', '.join(ARCHS)}")

    @property
    def scratch(self) -> list[str]:
        return [a for a in self.scratch_archs.split(",") if a]


# ---- the split (no TensorFlow) ------------------------------------------------------

@dataclass(frozen=True)
class SiteSplit:
    test: list[Sample]
    sites: list[list[Sample]]        # one 100-image training set per repeat


def _patients(samples: list[Sample]) -> dict[str, list[Sample]]:
    """Samples by patient; an image without a group is its own patient."""
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.group or f"image:{s.path}", []).append(s)
    return out


def _fill(pool: list[str], sizes: dict[str, int], target: int, rng: np.random.Generator) -> list[str]:
    """Whole patients, in random order, as many images as fit into `target`: one-image
    patients fill the last gaps, so the total is usually exact."""
    chosen, total = [], 0
    for key in rng.permutation(sorted(pool)).tolist():
        if total + sizes[key] <= target:
            chosen.append(key)
            total += sizes[key]
            if total == target:
                break
    return chosen


def _draw(patients: dict[str, list[Sample]], pool: set[str], n_images: int, malignant_share: float,
          rng: np.random.Generator) -> list[str]:
    """About n_images images of whole patients from `pool`, malignant share as given
    (a patient counts as malignant when any of its images is)."""
    sizes = {k: len(v) for k, v in patients.items()}
    malignant = [k for k in pool if any(s.label == 1 for s in patients[k])]
    benign = [k for k in pool if k not in set(malignant)]
    n_malignant = round(n_images * malignant_share)
    chosen = _fill(malignant, sizes, n_malignant, rng)
    chosen += _fill(benign, sizes, n_images - sum(sizes[k] for k in chosen), rng)
    short = n_images - sum(sizes[k] for k in chosen)
    if short:   # a gap neither stratum could fill exactly: any patient left that fits
        chosen += _fill([k for k in pool if k not in set(chosen)], sizes, short, rng)
    if sum(sizes[k] for k in chosen) != n_images:
        raise ValueError(f"cannot draw {n_images} images of whole patients from {len(pool)} patients "
                         f"({sum(sizes[k] for k in pool)} images)")
    return chosen


def make_site_split(samples: list[Sample], site_images: int = 100, test_images: int = 600,
                    repeats: int = 1, seed: int = 0) -> SiteSplit:
    """A test set of whole patients, then `repeats` site training sets drawn from the
    other patients; both stratified by label, reproducible from the seed."""
    patients = _patients([s for s in samples if s.label is not None])
    n = sum(len(v) for v in patients.values())
    if site_images + test_images > n:
        raise ValueError(f"the target site has {n} labelled images: too few for {site_images} training "
                         f"+ {test_images} test images")
    share = sum(s.label == 1 for v in patients.values() for s in v) / n
    rng = np.random.default_rng(seed)
    test = _draw(patients, set(patients), test_images, share, rng)
    rest = set(patients) - set(test)
    sites = [_draw(patients, rest, site_images, share, np.random.default_rng([seed, r + 1])) for r in range(repeats)]
    flat = lambda keys: sorted((s for k in keys for s in patients[k]), key=lambda s: str(s.path))  # noqa: E731
    return SiteSplit(test=flat(test), sites=[flat(keys) for keys in sites])


def write_canonical_csv(path: Path, samples: list[Sample], masks: bool = True) -> Path:
    """path,label,group,mask with absolute paths: a CSV `bcd train` reads without --csv-map.
    masks=False leaves the mask column empty. An identical existing file is left alone, so
    a rerun can tell its evaluations are current."""
    buffer = io.StringIO()
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in samples:
        w.writerow([Path(s.path).resolve(), s.class_name or ("malignant" if s.label else "benign"),
                    s.group or "", Path(s.mask).resolve() if s.mask and masks else ""])
    text = buffer.getvalue()
    if not (path.is_file() and path.read_text() == text):
        atomic.write_text(path, text)
    return path


def split_summary(samples: list[Sample]) -> dict:
    return {"images": len(samples), "malignant": sum(s.label == 1 for s in samples),
            "patients": len(_patients(samples))}


# ---- running bcd ---------------------------------------------------------------------

def _bcd(args: list[str], log_file: Path) -> float:
    """Run `bcd ARGS` in a fresh process (TensorFlow's global dtype policy and thread pools
    do not mix across runs in one process); seconds taken. Output goes to log_file."""
    cmd = [sys.executable, "-m", "bcd.cli", *args]
    print("$ bcd " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.monotonic()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write("$ bcd " + " ".join(shlex.quote(a) for a in args) + "\n")
        log.flush()
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if code:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"bcd {args[0]} failed (exit {code}); end of {log_file}:\n{tail}")
    return time.monotonic() - start


def _complete(run: Path, expected: dict) -> bool:
    """True when `run` finished with the expected settings; a finished run with other
    settings is an error (reusing it would mix recipes in one table)."""
    try:
        info = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return False
    if info.get("status") != "complete":
        return False
    differs = {k: (info.get("config", {}).get(k), v) for k, v in expected.items() if info.get("config", {}).get(k) != v}
    if differs:
        raise ValueError(f"{run} is a finished run with other settings ({differs}): delete it or use another --out")
    return True


def _train(config: TransferConfig, run: Path, data: list[str], epochs: int, weights: str, arch: str,
           logs: Path) -> dict:
    """`bcd train` unless `run` is already complete (then reused)."""
    args = ["train", *data, "--out", str(run), "--image-size", str(config.image_size),
            "--arch", arch, "--width", str(config.width), "--epochs", str(epochs),
            "--patience", str(config.patience), "--batch-size", str(config.batch_size),
            "--weights", weights, "--seed", str(config.seed)]
    expected = {"image_size": config.image_size, "width": config.width, "epochs": epochs, "weights": weights,
                "batch_norm": arch == "vgg16-bn", "seed": config.seed}
    reused = _complete(run, expected)
    if reused:
        print(f"reusing the finished run {run}", flush=True)
    else:
        _bcd(args + (["--resume"] if run.exists() else []), logs / f"{run.name}.log")
    return {"run": str(run), "command": "bcd " + shlex.join(args), "reused": reused, **_run_summary(run)}


def _run_summary(run: Path) -> dict:
    """Which epoch a run kept, in which phase, and its training time (from run.json)."""
    info = json.loads((run / "run.json").read_text())
    best = info.get("best_epoch")
    phase = next((p["name"] for p in info.get("phases", []) if best and p["start"] < best <= p["end"]), None)
    return {"best_epoch": best, "best_phase": phase, "epochs_trained": info.get("epochs_trained"),
            "best_val_auc": info.get("best_val_auc"), "training_seconds": info.get("training_seconds")}


def _evaluate(config: TransferConfig, run: Path, test_csv: Path, out: Path, logs: Path) -> dict:
    args = ["evaluate", str(run), "--data", f"site-test={test_csv}", "--out", str(out),
            "--bootstrap", str(config.bootstrap)]
    done = out / "predictions.json"
    fresh = done.is_file() and done.stat().st_mtime > max((run / "model.keras").stat().st_mtime,
                                                          test_csv.stat().st_mtime)
    seconds = None if fresh else round(_bcd(args, logs / f"eval-{out.name}.log"), 1)
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["at_operating_threshold"]
    predictions = json.loads((out / "predictions.json").read_text())
    return {"run": str(run), "eval_dir": str(out), "seconds": seconds,
            "auc": m["roc_auc"], "auc_ci95": m["ci95"].get("roc_auc"),
            "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "threshold": doc["threshold"]["value"],
            "probabilities": {str(Path(r["path"])): r["probability"] for r in predictions}}


# ---- the benchmark -----------------------------------------------------------------

def _read_target(config: TransferConfig) -> list[Sample]:
    mapping = CsvMapping.parse(config.target_map) if config.target_map else None
    return read_source(DataSource.parse(config.target, mapping)).labelled


def run_transfer(config: TransferConfig) -> dict:
    out = Path(config.out)
    logs = out / "logs"
    started = time.monotonic()
    split = make_site_split(_read_target(config), config.site_images, config.test_images, config.repeats, config.seed)
    # Without masks `bcd evaluate` skips the Grad-CAM localisation figures, which this table
    # does not use and which cost more than the scoring on a loaded 2-core machine.
    test_csv = write_canonical_csv(out / "test.csv", split.test, masks=False)
    site_csvs = [write_canonical_csv(out / f"site-{r + 1}.csv", s) for r, s in enumerate(split.sites)]
    doc: dict = {"config": asdict(config), "disclaimer": DISCLAIMER,
                 "split": {"test": split_summary(split.test), "sites": [split_summary(s) for s in split.sites]},
                 "runs": {}, "evaluations": {}, "comparisons": []}

    if config.source_run:
        source_run = Path(config.source_run)
        doc["runs"]["source"] = {"run": str(source_run), "command": None, "seconds": None, "reused": True}
    else:
        source_run = out / "runs" / "source"
        doc["runs"]["source"] = _train(config, source_run, ["--data", config.source], config.source_epochs,
                                       "none", config.arch, logs)
    doc["source_test"] = _own_test_auc(source_run)
    evals = doc["evaluations"]
    evals["source"] = _evaluate(config, source_run, test_csv, out / "eval" / "source", logs)
    for r, site_csv in enumerate(site_csvs, start=1):
        data = ["--data", f"site={site_csv}"]
        plan = [("finetuned", str(source_run), config.finetune_arch)]
        plan += [(f"scratch-{arch}", "none", arch) for arch in config.scratch]
        for kind, weights, arch in plan:
            name = f"{kind}-{r}"
            doc["runs"][name] = _train(config, out / "runs" / name, data, config.site_epochs, weights, arch, logs)
            evals[name] = _evaluate(config, out / "runs" / name, test_csv, out / "eval" / name, logs)
    doc["comparisons"] = _comparisons(config, split, evals)
    doc["time"] = _time_summary(doc, out / "transfer.json", time.monotonic() - started)
    for e in evals.values():
        e.pop("probabilities")
    doc["command"] = "python -m benchmarks.studies.transfer " + shlex.join(_argv_of(config))
    atomic.write_json(out / "transfer.json", doc)
    atomic.write_text(out / "transfer.md", transfer_markdown(doc))
    return doc


def _time_summary(doc: dict, previous: Path, wall: float) -> dict:
    """Training time (run.json of every run) and evaluation time; evaluations reused from an
    earlier invocation keep the seconds that invocation recorded."""
    try:
        before = json.loads(previous.read_text()).get("evaluations", {})
    except (OSError, ValueError):
        before = {}
    for name, e in doc["evaluations"].items():
        if e["seconds"] is None:
            e["seconds"] = before.get(name, {}).get("seconds")
    train = sum(r.get("training_seconds") or 0 for name, r in doc["runs"].items()
                if name != "source" or not doc["config"]["source_run"])
    evals = [e["seconds"] for e in doc["evaluations"].values()]
    return {"training_seconds": round(train, 1),
            "evaluation_seconds": round(sum(x for x in evals if x), 1) if all(evals) else None,
            "this_invocation_seconds": round(wall, 1)}


def _own_test_auc(run: Path) -> dict | None:
    """The source model's AUC on its own dataset's test split (from its metrics.json)."""
    try:
        m = json.loads((run / "metrics.json").read_text())["at_operating_threshold"]
    except (OSError, ValueError, KeyError):
        return None
    return {"auc": m["roc_auc"], "auc_ci95": m.get("ci95", {}).get("roc_auc"), "n": m["n"]}


def _comparisons(config: TransferConfig, split: SiteSplit, evals: dict) -> list[dict]:
    """Per draw: fine-tuned vs scratch and fine-tuned vs no fine-tuning, paired."""
    keys = [str(Path(s.path).resolve()) for s in split.test]
    y = np.array([s.label for s in split.test])
    groups = [s.group or str(s.path) for s in split.test]

    def probs(name: str) -> np.ndarray:
        by_path = {str(Path(k).resolve()): v for k, v in evals[name]["probabilities"].items()}
        return np.array([by_path[k] for k in keys])

    out = []
    for r in range(1, config.repeats + 1):
        for other in ["source"] + [f"scratch-{arch}-{r}" for arch in config.scratch]:
            d = grouped_paired_auc_difference(y, probs(f"finetuned-{r}"), probs(other), groups, config.bootstrap, seed=r)
            out.append({"draw": r, "a": f"finetuned-{r}", "b": other, **d})
    return out


def _argv_of(config: TransferConfig) -> list[str]:
    """The command-line options that reproduce `config` (defaults omitted)."""
    defaults = TransferConfig(out=config.out)
    argv = ["--out", config.out]
    for name, value in asdict(config).items():
        if name == "out" or value == getattr(defaults, name):
            continue
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def _kept(run: dict) -> str:
    if not run.get("best_epoch"):
        return ""
    phase = " head only" if run.get("best_phase") == "head" else ""
    return f"(epoch {run['best_epoch']}/{run['epochs_trained']}{phase})"


def _ci(ci: dict | None) -> str:
    return f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""


def _time_line(t: dict) -> str:
    text = f"Time on 2 shared, heavily loaded CPU cores: training {t['training_seconds'] / 60:.0f} min (all runs)"
    if t.get("evaluation_seconds"):
        text += f", evaluation {t['evaluation_seconds'] / 60:.0f} min (processes included)"
    return text + "."


def _kinds(c: dict) -> list[tuple[str, str]]:
    """(evaluation name prefix, what the table calls it) per site model."""
    scratch = [a for a in c["scratch_archs"].split(",") if a]
    return [("finetuned", f"fine-tuned from the source model ({c['finetune_arch']})")] + \
        [(f"scratch-{a}", f"from scratch ({a})") for a in scratch]


def transfer_markdown(doc: dict) -> str:
    c, s, e = doc["config"], doc["split"], doc["evaluations"]
    t, draws = s["test"], range(1, len(s["sites"]) + 1)
    source = Path(c["source"]).name
    site = s["sites"][0]
    lines = [
        f"**Transfer to a new site.** Source model: trained on {source} only. New site: "
        f"{Path(c['target']).parent.name}, {len(s['sites'])} random draws of {site['images']} training images "
        f"(whole patients, about {site['patients']} patients, {site['malignant']} malignant). Test: "
        f"{t['images']} images ({t['malignant']} malignant) of {t['patients']} other patients of the new site, "
        "the same for every model. AUC with 95% bootstrap CI.",
        "",
        "| model | trained on | AUC on the test patients |",
        "|---|---|---|",
        f"| no fine-tuning | {source} only | {e['source']['auc']:.3f} {_ci(e['source']['auc_ci95'])} |",
    ]
    for kind, what in _kinds(c):
        aucs = [e[f"{kind}-{r}"]["auc"] for r in draws]
        trained_on = f"{source}, then the {site['images']} site images" if kind == "finetuned" else \
            f"the {site['images']} site images only"
        lines.append(f"| {what} | {trained_on} | {np.mean(aucs):.3f} mean of {len(aucs)} draws "
                     f"(range {min(aucs):.3f}–{max(aucs):.3f}) |")
    kinds = _kinds(c)
    lines += ["", "Per draw, AUC [95% CI] (the epoch early stopping kept, of those trained):", "",
              "| draw | " + " | ".join(what for _, what in kinds) + " |", "|---|" + "---|" * len(kinds)]
    for r in draws:
        lines.append(f"| {r} | " + " | ".join(f"{e[f'{k}-{r}']['auc']:.3f} {_ci(e[f'{k}-{r}']['auc_ci95'])} "
                                             f"{_kept(doc['runs'][f'{k}-{r}'])}" for k, _ in kinds) + " |")
    lines += ["", "Fine-tuned minus the others, paired on the same test images (95% CI, bootstrap over patients):",
              "", "| draw | − no fine-tuning | " + " | ".join(f"− {what}" for _, what in kinds[1:]) + " |",
              "|---|---|" + "---|" * (len(kinds) - 1)]
    for r in draws:
        comps = [x for x in doc["comparisons"] if x["draw"] == r]
        lines.append(f"| {r} | " + " | ".join(f"{x['difference']:+.3f} {_ci(x['ci95'])}" for x in comps) + " |")
    own = doc.get("source_test")
    lines += [""]
    if own:
        lines.append(f"The source model's AUC on {source}'s own test split: {own['auc']:.3f} {_ci(own['auc_ci95'])} "
                     f"(n = {own['n']}).")
    lines += [
        f"Settings: {c['width']}× width VGG16, {c['image_size']} px input; source model {c['arch']}, up to "
        f"{c['source_epochs']} epochs; site models up to {c['site_epochs']} epochs; early stopping patience "
        f"{c['patience']}. Each site model's `bcd train` splits its {site['images']} images 70/15/15 by patient, "
        "so it trains on about 70 and early-stops on about 15: what a clinic with 100 labelled images gets.",
        _time_line(doc["time"]),
        "",
        f"Command: `{doc['command']}`",
        "",
        DISCLAIMER,
    ]
    return "\n".join(lines) + "\n"


# ---- command line ------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.transfer", description=__doc__.split("\n")[0])
    d = TransferConfig(out="")
    p.add_argument("--out", required=True, help="folder for the CSVs, runs, evaluations, transfer.md/json")
    p.add_argument("--source", default=d.source, help="dataset the source model learns from (default BUSI)")
    p.add_argument("--target", default=d.target, help="the new site's CSV index (default BUS-BRA)")
    p.add_argument("--target-map", default=d.target_map, help="--csv-map of the target CSV ('' for canonical)")
    p.add_argument("--source-run", help="a finished run to use as the source model instead of training one")
    for name in ("site_images", "test_images", "repeats", "seed", "image_size", "source_epochs", "site_epochs",
                 "patience", "batch_size", "bootstrap"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--width", type=float, default=d.width)
    p.add_argument("--arch", choices=ARCHS, default=d.arch, help="the source model's architecture")
    p.add_argument("--finetune-arch", choices=ARCHS, default=d.finetune_arch,
                   help="architecture the source model is fine-tuned as (default vgg16: its saved, folded form)")
    p.add_argument("--scratch-archs", default=d.scratch_archs, help="comma-separated from-scratch baselines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    args["target_map"] = args["target_map"] or None
    try:
        doc = run_transfer(TransferConfig(**args))
    except (ValueError, RuntimeError, OSError) as err:
        print(f"transfer: error: {err}", file=sys.stderr)
        return 2
    print(transfer_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
