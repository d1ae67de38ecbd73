"""Does `bcd adapt` help at a site? Repeated draws on the site's own labelled scans.

    python -m benchmarks.studies.site_adapt EXPORT --data SITE_DATA [--csv-map MAP] [--draws 5]
                                          [--size 100] [--layers early] [--out DIR]

For an export and a site's labelled scans (class folders or a CSV index, the runtime's one
reader), each draw takes `--size` of the scans at random (whole patients where the data
names them), adapts the export on them (runtime.site_adapt; their labels are not read) and
scores the parent and the adapted export on the site's other scans, the same scans for
both. It reports each draw's AUC before and after, the mean gain, and the AUC of each
negative class against the positives (BUSI: benign and normal scans). Writes OUT/site_adapt.json,
OUT/site_adapt.md and OUT/site_adapt.png (default OUT: EXPORT/site-adapt-<data name>).

A site with labelled scans can run it to decide whether adapting pays there; with one
hospital held out it measures what adapting gives a hospital the model never saw
(docs/results.md). Research and education only: not a diagnosis.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.classifier import Classifier
from benchmarks.frames import auc
from runtime.dataset import DEFAULT_CLASS_LABELS, CsvMapping, DatasetError, DataSource, LabelMap, Sample, read_source
from runtime.host import DISCLAIMER
from runtime.manifest import read_manifest
from runtime.site_adapt import LAYERS, MIN_IMAGES, AdaptError, ExportAdaptConfig, adapt_export

log = logging.getLogger("benchmarks.studies.site_adapt")
MIN_CLASS = 10          # a negative class with fewer scans gets no AUC of its own


@dataclass(frozen=True)
class StudyConfig:
    export_dir: str
    data: str
    csv_map: str | None = None
    draws: int = 5
    size: int = 100
    layers: str = "early"
    seed: int = 1000

    def __post_init__(self) -> None:
        if self.layers not in LAYERS:
            raise ValueError(f"--layers must be one of {', '.join(LAYERS)}")
        if self.draws < 1 or self.size < MIN_IMAGES:
            raise ValueError(f"--draws must be at least 1 and --size at least {MIN_IMAGES}")


def site_samples(config: StudyConfig, label_map: dict[str, int]) -> list[Sample]:
    """The site's labelled scans (malignant = 1; benign and normal = 0 unless mapped otherwise)."""
    mapping = CsvMapping.parse(config.csv_map) if config.csv_map else None
    source = DataSource.parse(config.data, mapping=mapping, labels=LabelMap(dict(label_map)))
    return read_source(source).labelled


def draw(samples: list[Sample], size: int, rng: np.random.Generator) -> set[int]:
    """Indices of about `size` scans, whole patients where the data names them."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group or f"#{i}", []).append(i)
    chosen: set[int] = set()
    for key in rng.permutation(np.array(sorted(groups), dtype=object)):
        if len(chosen) >= size:
            break
        chosen.update(groups[key])
    return chosen


def scores(y: np.ndarray, p: np.ndarray, classes: list[str | None]) -> dict:
    """AUC on all scans, and each negative class with enough scans against the positives
    (where there are several negative classes: BUSI's benign and normal scans)."""
    out = {"auc": auc(y, p)}
    names = sorted({c for c, label in zip(classes, y) if label == 0 and c is not None})
    positive = "/".join(sorted({c for c, label in zip(classes, y) if label == 1 and c is not None})) or "positive"
    for name in names if len(names) > 1 else []:
        keep = np.array([label == 1 or c == name for c, label in zip(classes, y)])
        if sum(c == name for c in classes) >= MIN_CLASS:
            out[f"{name} vs {positive}"] = auc(y[keep], p[keep])
    return out


def _probabilities(export: Path, files: list[str]) -> np.ndarray:
    with Classifier.load(export) as clf:
        preds = clf.predict(files)
    return np.array([np.nan if r.error else r.probability for r in preds], dtype=np.float64)


@dataclass
class Site:
    """The site's scans the runtime accepts (colour Doppler screens and non-scans are refused,
    so they are neither adapted on nor scored), with the parent's probabilities."""
    samples: list[Sample]
    parent: np.ndarray

    @property
    def files(self) -> list[str]:
        return [str(s.path) for s in self.samples]

    @property
    def y(self) -> np.ndarray:
        return np.array([s.label for s in self.samples])


def read_site(export: Path, config: StudyConfig) -> Site:
    samples = site_samples(config, DEFAULT_CLASS_LABELS)
    log.info("scoring the parent on %d scans", len(samples))
    parent = _probabilities(export, [str(s.path) for s in samples])
    usable = np.isfinite(parent)
    site = Site([s for s, ok in zip(samples, usable) if ok], parent[usable])
    if len(site.samples) < config.size + 20:
        raise ValueError(f"{config.data}: {len(site.samples)} usable labelled scans; the study needs --size "
                         f"({config.size}) and at least 20 more to score")
    return site


def one_draw(export: Path, site: Site, fit: set[int], layers: str) -> dict:
    """Adapt on the scans `fit`, score parent and adapted on the others."""
    files, y = site.files, site.y
    rest = np.array([i for i in range(len(files)) if i not in fit])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "adapted"
        adapt_export(ExportAdaptConfig(export_dir=str(export), data=tuple(files[i] for i in sorted(fit)),
                                       out=str(out), layers=layers, max_images=len(fit)))
        adapted = _probabilities(out, [files[i] for i in rest])
        used = read_manifest(out).training_data["site_adaptation"]["site_scans"]
    ok = np.isfinite(adapted)
    idx = rest[ok]
    classes = [site.samples[i].class_name for i in idx]
    row = {"adapted_on": int(used), "scored": int(len(idx)),
           "parent": scores(y[idx], site.parent[idx], classes), "adapted": scores(y[idx], adapted[ok], classes)}
    row["gain"] = row["adapted"]["auc"] - row["parent"]["auc"]
    return row


def run_study(config: StudyConfig) -> dict:
    export = Path(config.export_dir)
    read_manifest(export)                        # a clear error before any scan is read
    site = read_site(export, config)
    rng = np.random.default_rng(config.seed)
    rows = []
    for d in range(config.draws):
        row = {"draw": d, **one_draw(export, site, draw(site.samples, config.size, rng), config.layers)}
        log.info("draw %d: %.3f -> %.3f (%+.3f) on %d scans", d, row["parent"]["auc"], row["adapted"]["auc"],
                 row["gain"], row["scored"])
        rows.append(row)
    gains = np.array([r["gain"] for r in rows])
    return {"export": str(export), "data": config.data, "layers": config.layers, "size": config.size,
            "draws": rows, "mean_gain": float(gains.mean()), "min_gain": float(gains.min()),
            "max_gain": float(gains.max()), "draws_gaining": int((gains > 0).sum()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def markdown(doc: dict) -> str:
    keys = [k for k in doc["draws"][0]["parent"] if k != "auc"]
    head = ("| draw | adapted on | scored | AUC parent | AUC adapted | gain |"
            + "".join(f" {k}: parent → adapted |" for k in keys))
    lines = [f"# `bcd adapt` at a site: {Path(doc['data']).name}", "",
             f"Export `{doc['export']}`, layers `{doc['layers']}`, {len(doc['draws'])} draws of about {doc['size']} "
             "scans each adapted on (labels unused); the parent and the adapted export scored on the other scans.", "",
             head, "|" + "---|" * (6 + len(keys))]
    for r in doc["draws"]:
        extra = "".join(f" {r['parent'][k]:.3f} → {r['adapted'][k]:.3f} |" for k in keys)
        lines.append(f"| {r['draw']} | {r['adapted_on']} | {r['scored']} | {r['parent']['auc']:.3f} | "
                     f"{r['adapted']['auc']:.3f} | {r['gain']:+.3f} |{extra}")
    lines += ["", f"Mean gain {doc['mean_gain']:+.4f} (from {doc['min_gain']:+.3f} to {doc['max_gain']:+.3f}); "
              f"{doc['draws_gaining']} of {len(doc['draws'])} draws gained.", "", DISCLAIMER, ""]
    return "\n".join(lines)


def plot(doc: dict, target: Path) -> None:
    from benchmarks.plots import _save, plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in doc["draws"]:
        ax.plot([0, 1], [r["parent"]["auc"], r["adapted"]["auc"]], "-o", color="tab:blue", alpha=0.7)
    ax.set_xticks([0, 1], ["parent", f"adapted ({doc['layers']})"])
    ax.set_ylabel("AUC on the site's other scans")
    ax.set_title(f"bcd adapt, {len(doc['draws'])} draws of {doc['size']} scans: mean {doc['mean_gain']:+.3f}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, target)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.site_adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("export", help="export directory (bcd export; with adapt-reference.json)")
    p.add_argument("--data", required=True, help="the site's labelled scans: class folders or a CSV index")
    p.add_argument("--csv-map", help="column mapping of a CSV index, as bcd train's")
    p.add_argument("--draws", type=int, default=5, help="random draws (default %(default)s)")
    p.add_argument("--size", type=int, default=100, help="scans adapted on per draw (default %(default)s)")
    p.add_argument("--layers", choices=LAYERS, default="early", help="as bcd adapt (default %(default)s)")
    p.add_argument("--seed", type=int, default=1000, help="for the draws (default %(default)s)")
    p.add_argument("--out", type=Path, help="output folder (default EXPORT/site-adapt-<data name>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("runtime.site_adapt").setLevel(logging.WARNING)
    try:
        config = StudyConfig(str(args.export), args.data, args.csv_map, args.draws, args.size, args.layers, args.seed)
        doc = run_study(config)
    except (ValueError, DatasetError, AdaptError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or Path(args.export) / f"site-adapt-{Path(args.data).stem}"
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "site_adapt.json", doc)
    atomic.write_text(out / "site_adapt.md", markdown(doc))
    plot(doc, out / "site_adapt.png")
    print(markdown(doc))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
