"""Does site calibration work? Two development datasets play two sites.

    python -m benchmarks.studies.site_profiles runtime/models/bus-vgg16-w50-128 \\
        --busi ../shared/data/busi --busbra ../shared/data/busbra --out docs/results/site_profiles

For each site there is a calibration pool and a disjoint test set:
  - BUSI: the export's own split.json, validation images as the pool, test images as the
    test set (the images the export's threshold was chosen on, and scored on);
  - BUS-BRA (bus_data.csv: ID, Case = patient, Pathology): the patients with no image
    in the export's training split, halved by patient (Case) with a fixed seed,
    stratified by whether the patient has a malignant lesion: one half is the pool,
    the other the test set. No patient is in both.
A clinic's calibration set is simulated by drawing N images at random from the pool
(--draws times, without replacement within a draw), fitting exactly what `bcd calibrate`
fits (train.fit_site_profile.fit, forced: the share of draws `bcd calibrate` would refuse is
reported), and applying the profile's recalibration and threshold to the test images
(runtime.site_profile, as the runtime does). The test images are scored once, by the
runtime, without any profile; the profile is then applied to those probabilities.

Writes OUT/results.json and OUT/results.md (the table for the README). Platt scaling is
not in the default methods: it is strictly increasing, so it makes the same decisions
as the plain threshold fitted on the same images (only the probability shown changes).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.classifier import Classifier
from runtime.manifest import read_manifest
from runtime.dataset import CsvMapping, DataSource, Sample, read_source, recorded_folder
from train.fit_site_profile import SiteProfileConfig, fit, probabilities
from runtime.manifest import split_file
from train.metrics import binary_metrics, bootstrap_ci
from runtime.host import DISCLAIMER

log = logging.getLogger("benchmarks.studies.site_profiles")

DEFAULT_SIZES = ("50", "100", "all")
DEFAULT_DRAWS = 200


BUSBRA_MAPPING = "path=Images/{ID}.png,label=Pathology,group=Case"


@dataclass
class Site:
    name: str
    pool: list[Sample]
    test: list[Sample]
    how: str

    @property
    def pool_y(self) -> np.ndarray:
        return np.array([s.label for s in self.pool], dtype=np.int8)

    @property
    def test_y(self) -> np.ndarray:
        return np.array([s.label for s in self.test], dtype=np.int8)


# ------------------------------------------------------------------------ the sites


def _split_relatives(split: dict, part: str, dataset: Path) -> list[str]:
    """The images of one part (train/val/test) of the export's split.json (`split`) that
    came from `dataset`, as the paths the split records (relative to the dataset), in
    its order.

    Sources are matched by folder name, not by absolute path: the split was made where
    the data lived then (another machine, another checkout), and `dataset` is where it
    lives now."""
    entries = split["files"].get(part, [])
    sources = split.get("sources") or []
    if not sources:                       # an old one-folder split: every entry is from it
        return [e["path"] for e in entries]
    names = {d["name"] for d in sources if recorded_folder(d).name == Path(dataset).name}
    return [e["path"] for e in entries if e.get("source") in names]


def _read_split(export_dir: Path) -> dict:
    return json.loads(split_file(Path(export_dir)).read_text())


def _pick(samples: list[Sample], relatives: list[str]) -> list[Sample]:
    by_relative = {s.relative: s for s in samples}
    return [by_relative[r] for r in relatives if r in by_relative]


def busi_site(export_dir: Path, busi: Path) -> Site:
    samples = read_source(DataSource.parse(str(busi))).labelled
    split = _read_split(export_dir)
    pool, test = (_pick(samples, _split_relatives(split, part, busi)) for part in ("val", "test"))
    if not pool or not test:
        raise ValueError(f"the export's split.json lists no BUSI validation/test images of {busi}")
    return Site("BUSI", pool, test, "the export's split.json: validation images = pool, test images = test set")


def busbra_site(export_dir: Path, busbra: Path, seed: int = 0) -> Site:
    source = DataSource.parse(str(busbra / "bus_data.csv"), CsvMapping.parse(BUSBRA_MAPPING))
    samples = read_source(source).labelled
    trained = set(_split_relatives(_read_split(export_dir), "train", busbra))
    cases: dict[str, list[Sample]] = {}
    for s in samples:
        cases.setdefault(str(s.group), []).append(s)
    eligible = sorted((c for c, ss in cases.items() if not any(s.relative in trained for s in ss)), key=_num)
    malignant = {c for c in eligible if any(s.label == 1 for s in cases[c])}
    rng = np.random.default_rng(seed)
    pool_cases: set[str] = set()
    for stratum in (sorted(malignant, key=_num), sorted(set(eligible) - malignant, key=_num)):
        order = rng.permutation(len(stratum))
        pool_cases |= {stratum[i] for i in order[: len(stratum) // 2]}
    pool = [s for c in eligible if c in pool_cases for s in cases[c]]
    test = [s for c in eligible if c not in pool_cases for s in cases[c]]
    how = (f"{len(eligible)} of {len(cases)} patients (none in the export's training split), halved by patient "
           f"(Case), seed {seed}, stratified by malignant/benign patient")
    return Site("BUS-BRA", pool, test, how)


def _num(case: str):
    return (0, int(case), "") if case.isdigit() else (1, 0, case)


# ------------------------------------------------------------------------ measuring


def _rates(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    pred = p >= t
    return float(pred[y == 1].mean()), float((~pred[y == 0]).mean())


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "p5": float(np.quantile(v, 0.05)), "p95": float(np.quantile(v, 0.95)),
            "mean": float(v.mean())}


def measure_site(site: Site, p_pool: np.ndarray, p_test: np.ndarray, export_threshold: float, targets, sizes,
                 methods, draws: int, seed: int) -> dict:
    pool_y, test_y = site.pool_y, site.test_y
    sens, spec = _rates(test_y, p_test, export_threshold)
    ci = bootstrap_ci(test_y, p_test, export_threshold, metrics=("sensitivity", "specificity"))
    out = {"site": site.name, "how": site.how,
           "pool": {"n": len(site.pool), "n_malignant": int(pool_y.sum())},
           "test": {"n": len(site.test), "n_malignant": int(test_y.sum()),
                    "auc": binary_metrics(test_y, p_test, 0.5)["roc_auc"]},
           "export_threshold": {"value": export_threshold, "sensitivity": sens, "specificity": spec, "ci95": ci},
           "calibrated": []}
    rng = np.random.default_rng(seed)
    capped = sorted({min(size, len(site.pool)) for size in sizes})   # BUSI's pool is 90: 100 and "all" coincide
    for target, value in targets:
        for n in capped:
            picks = [np.arange(len(site.pool))] if n == len(site.pool) else [
                rng.choice(len(site.pool), n, replace=False) for _ in range(draws)]
            for method in methods:
                config = SiteProfileConfig(target=target, target_value=value, method=method, force=True)
                rows = {"sensitivity": [], "specificity": [], "threshold": [], "refused": 0, "one_class": 0,
                        "n_malignant": []}
                for idx in picks:
                    y = pool_y[idx]
                    if y.min() == y.max():
                        rows["one_class"] += 1
                        continue
                    f = fit(y, p_pool[idx], config)
                    s, c = _rates(test_y, f.recalibration.apply(p_test), f.threshold)
                    rows["sensitivity"].append(s)
                    rows["specificity"].append(c)
                    rows["threshold"].append(f.threshold)
                    rows["n_malignant"].append(int(y.sum()))
                    rows["refused"] += bool(f.problems)
                fitted = len(rows["sensitivity"])
                achieved = np.asarray(rows[target] if target != "youden" else rows["sensitivity"])
                out["calibrated"].append({
                    "target": target, "target_value": value, "size": n, "all_of_pool": n == len(site.pool),
                    "method": method, "draws": len(picks), "fitted": fitted,
                    "refused_share": rows["refused"] / fitted if fitted else None,
                    "one_class_draws": rows["one_class"],
                    "n_malignant": _summary(rows["n_malignant"]) if fitted else None,
                    "sensitivity": _summary(rows["sensitivity"]) if fitted else None,
                    "specificity": _summary(rows["specificity"]) if fitted else None,
                    "met_target_share": (float(np.mean(achieved >= value - 1e-9))
                                         if fitted and target != "youden" else None),
                })
    return out


# ------------------------------------------------------------------------ report


def _r(s: dict | None) -> str:
    return "n/a" if s is None else f"{s['median']:.3f} ({s['p5']:.2f}–{s['p95']:.2f})"


def results_markdown(doc: dict) -> str:
    lines = [
        f"# Site calibration: `{doc['export']}` ({doc['variant']})",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Each calibrated row: {doc['draws']} random draws of N images from the site's calibration pool; "
        "`bcd calibrate`'s fit on each draw, applied to the site's test images. Cells: median "
        "(5th–95th percentile over the draws). \"all\" = the whole pool, one fit. \"refused\" = share of draws "
        "`bcd calibrate` refuses without --force (fewer than 20 images of a class, or a 95% CI of the target "
        "metric wider than 0.30).",
        "",
    ]
    for site in doc["sites"]:
        e = site["export_threshold"]
        lines += [
            f"## {site['site']}",
            "",
            f"Pool {site['pool']['n']} images ({site['pool']['n_malignant']} malignant); test "
            f"{site['test']['n']} images ({site['test']['n_malignant']} malignant), model AUC on test "
            f"{site['test']['auc']:.3f}. Split: {site['how']}.",
            "",
            "| operating point | N (malignant) | refused | test sensitivity | test specificity | met target |",
            "|---|---|---|---|---|---|",
            f"| export's threshold {e['value']:.4f} | — | — | {e['sensitivity']:.3f} "
            f"({e['ci95']['sensitivity']['low']:.2f}–{e['ci95']['sensitivity']['high']:.2f}) | "
            f"{e['specificity']:.3f} ({e['ci95']['specificity']['low']:.2f}–{e['ci95']['specificity']['high']:.2f}) "
            "| — |",
        ]
        for row in site["calibrated"]:
            target = "Youden" if row["target"] == "youden" else f"{row['target'][:4]}. ≥ {row['target_value']:.2f}"
            size = f"all {row['size']}" if row["all_of_pool"] else str(row["size"])
            mal = row["n_malignant"]
            mal_text = "" if mal is None else (f" ({mal['median']:.0f})" if row["all_of_pool"]
                                                 else f" ({mal['p5']:.0f}–{mal['p95']:.0f})")
            refused = "n/a" if row["refused_share"] is None else f"{row['refused_share']:.0%}"
            met = "—" if row["met_target_share"] is None else f"{row['met_target_share']:.0%}"
            lines.append(f"| {target}, {row['method']} | {size}{mal_text} | {refused} | {_r(row['sensitivity'])} | "
                         f"{_r(row['specificity'])} | {met} |")
        lines.append("")
        lines.append("(Export's threshold: 95% bootstrap CI over the test images. \"met target\": share of draws "
                     "whose test value reaches the target.)")
        lines.append("")
    lines += [f"Machine: {doc['seconds']:.0f} s in all (scoring the images with the runtime dominates).",
              "", DISCLAIMER]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ main


def _targets(text: str) -> list[tuple[str, float]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in ("sensitivity", "specificity", "youden"):
            raise argparse.ArgumentTypeError(f"bad target {part!r}: sensitivity=S, specificity=S or youden")
        out.append((name, float(value) if value else 0.90))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.site_profiles", description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path, help="export directory (with split.json beside its manifest or in its run)")
    p.add_argument("--busi", type=Path, default=Path("../shared/data/busi"), help="BUSI folder")
    p.add_argument("--busbra", type=Path, default=Path("../shared/data/busbra"), help="BUS-BRA folder (bus_data.csv)")
    p.add_argument("--out", type=Path, default=Path("docs/results/site_profiles"))
    p.add_argument("--variant", help="variant (default as `bcd predict`)")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="calibration set sizes, comma-separated; 'all' = the whole pool (default 50,100,all)")
    p.add_argument("--targets", type=_targets, default=_targets("sensitivity=0.90"),
                   help="e.g. sensitivity=0.90,specificity=0.80,youden (default sensitivity=0.90)")
    p.add_argument("--methods", default="threshold,isotonic", help="threshold, platt, isotonic (default threshold,isotonic)")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="random calibration sets per size (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the BUS-BRA patient split and of the draws")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    sizes = [10 ** 9 if s.strip() == "all" else int(s) for s in args.sizes.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    sites = []
    if args.busi.is_dir():
        sites.append(busi_site(args.export, args.busi))
    if (args.busbra / "bus_data.csv").is_file():
        sites.append(busbra_site(args.export, args.busbra, args.seed))
    if not sites:
        print("no site data found (--busi, --busbra)", file=sys.stderr)
        return 2
    results = []
    with Classifier.load(args.export, variant=args.variant) as clf:
        variant, threshold = clf.variant, clf.threshold
        for site in sites:
            log.info("%s: scoring %d pool + %d test images", site.name, len(site.pool), len(site.test))
            p_pool = probabilities(clf, site.pool)
            p_test = probabilities(clf, site.test)
            results.append(measure_site(site, p_pool, p_test, threshold, args.targets, sizes, methods,
                                        args.draws, args.seed))
    doc = {"export": Path(args.export).resolve().name, "export_dir": str(args.export), "variant": variant,
           "source_model": read_manifest(args.export / "manifest.json").source_model,
           "command": "python -m benchmarks.studies.site_profiles " + " ".join(sys.argv[1:] if argv is None else argv),
           "draws": args.draws, "seed": args.seed, "sites": results,
           "seconds": time.perf_counter() - started}
    atomic.write_json(args.out / "results.json", doc)
    text = results_markdown(doc)
    atomic.write_text(args.out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
