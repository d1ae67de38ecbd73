"""Whole image or the clinician's box? Issue 21's head-to-head, per source.

    python -m benchmarks.studies.roi EXPORT --out docs/results/roi
    python -m benchmarks.studies.roi EXPORT_OF_A_HELD_OUT_SITE_RUN --parts val --out ...

On the lesion images (a mask with a lesion; BUSI's normal images have no box) of an
export's split (split.json beside its manifest), every image is classified three ways
through the runtime (runtime.classifier.Classifier, as `bcd predict` does):
  - whole: the scan region, as today;
  - clinician box: `roi=` a box drawn around the lesion mask as a clinician might
    (runtime.lesion_box.clinician_box: a margin of 10-40 % of the lesion's box on each
    side and each edge moved by up to 10 %; seeded per image, so runs repeat);
  - proposed box: `roi="auto"` (the export's localiser, else the model's Grad-CAM).
Per source and part: AUC [95 % CI] (images resampled within each class), sensitivity and
specificity at the export's threshold (chosen on whole images), each box mode's AUC
minus the whole image's with a 95 % CI from a bootstrap over patients, and the proposed
box's IoU with the lesion mask's box. With an export of a run trained with one hospital
held out (`bcd train --val-source busi`), `--parts val` scores that hospital, unseen.
Writes OUT/roi.json, OUT/roi.md and OUT/roi.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.dataset import Sample, read_source, sources_of_split
from runtime.host import DISCLAIMER
from runtime.images import ImageReadError, read_image
from runtime.lesion_box import Box, clinician_box, iou, mask_box
from runtime.manifest import split_file
from runtime.progress import Progress
from train.metrics import binary_metrics, bootstrap_ci, grouped_paired_auc_difference
from train.roi_samples import MIN_LESION_PIXELS     # "a lesion image": as training's lesion crops count one

log = logging.getLogger("benchmarks.studies.roi")
MODES = ("whole", "clinician box", "proposed box")


def lesion_samples(split: dict, part: str, data_override: str | None = None) -> list[tuple[Sample, Box]]:
    """(sample, the lesion mask's box) for the images of one split part that have a lesion."""
    files = {(f["source"], f["path"]) for f in split["files"].get(part, [])}
    out = []
    for source in sources_of_split(split, data_override):
        for sample in read_source(source).labelled:
            if (source.name, sample.relative) not in files or sample.mask is None:
                continue
            try:
                mask = read_image(sample.mask)[..., 0] > 127
            except ImageReadError:
                continue
            if np.count_nonzero(mask) >= MIN_LESION_PIXELS:
                out.append((sample, mask_box(mask)))
    return out


def _spread(items: list, limit: int | None) -> list:
    """`limit` items evenly spread over the list (both sources, both classes), or all."""
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def drawn_box(sample: Sample, lesion: Box, width: int, height: int) -> Box:
    rng = np.random.default_rng(zlib.crc32(f"{sample.source}:{sample.relative}".encode()))
    return clinician_box(lesion, width, height, rng)


def classify_three_ways(clf, items: list[tuple[Sample, Box]]) -> list[dict]:
    """One row per image: label, group, each mode's probability, the proposed box's IoU."""
    rows = []
    progress = Progress(len(items), "classifying lesion images three ways")
    for i, (sample, lesion) in enumerate(items, 1):
        whole = clf.predict(str(sample.path))
        if not whole.ok:
            log.warning("skipped %s: %s", sample.relative, whole.error)
            continue
        shape = read_image(sample.path).shape
        given = clf.predict(str(sample.path), roi=drawn_box(sample, lesion, shape[1], shape[0]))
        proposed = clf.predict(str(sample.path), roi="auto")
        if not (given.ok and proposed.ok):
            log.warning("skipped %s: %s", sample.relative, given.error or proposed.error)
            continue
        box = getattr(proposed, "roi", None)
        rows.append({"source": sample.source, "path": sample.relative, "label": int(sample.label),
                     "group": f"{sample.source}:{sample.group or sample.relative}",
                     "whole": whole.probability, "clinician box": given.probability,
                     "proposed box": proposed.probability,
                     "ood": {"whole": whole.out_of_distribution, "clinician box": given.out_of_distribution,
                             "proposed box": proposed.out_of_distribution},
                     "proposed_iou": iou(Box(box.x, box.y, box.width, box.height), lesion) if box is not None else 0.0})
        progress.update(i)
    return rows


def compare(rows: list[dict], threshold: float, n_resamples: int = 1000, seed: int = 0,
            box_threshold: float | None = None) -> dict:
    """Each mode's AUC, sensitivity and specificity (a box's at `box_threshold`, the
    export's lesion-box threshold, when it has one), and its AUC minus the whole image's."""
    y = np.array([r["label"] for r in rows])
    groups = [r["group"] for r in rows]
    out = {"n": len(rows), "malignant": int(y.sum())}
    if not 0 < y.sum() < len(y):
        out["note"] = "one class only: no AUC"
        return out
    for mode in MODES:
        p = np.array([r[mode] for r in rows], dtype=np.float64)
        at = threshold if mode == "whole" or box_threshold is None else box_threshold
        m = binary_metrics(y, p, at)
        ci = bootstrap_ci(y, p, at, n_resamples, seed, metrics=("roc_auc", "sensitivity", "specificity"))
        out[mode] = {k: {"value": m[k], "ci95": ci[k]} for k in ("roc_auc", "sensitivity", "specificity")}
        if mode != "whole":
            whole = np.array([r["whole"] for r in rows], dtype=np.float64)
            out[mode]["minus_whole"] = grouped_paired_auc_difference(y, p, whole, groups, n_resamples, seed)
        flags = [r["ood"][mode] for r in rows if r.get("ood", {}).get(mode) is not None]
        out[mode]["ood_flagged"] = float(np.mean(flags)) if flags else None
    ious = np.array([r["proposed_iou"] for r in rows])
    out["proposed_iou"] = {"mean": float(ious.mean()), "share_at_least_0.5": float((ious >= 0.5).mean())}
    return out


def run_study(export: Path, parts: tuple[str, ...], data_override: str | None, n_resamples: int,
              limit: int | None = None) -> dict:
    from runtime.classifier import Classifier
    split = json.loads(Path(split_file(export)).read_text())
    doc = {"export": str(export), "parts": {}}
    with Classifier.load(export) as clf:
        doc.update(variant=clf.variant, threshold=clf.threshold, box_threshold=clf.roi_threshold,
                   proposer="localiser" if getattr(clf, "localiser", None) is not None else "Grad-CAM")
        for part in parts:
            items = _spread(lesion_samples(split, part, data_override), limit)
            if not items:
                continue
            rows = classify_three_ways(clf, items)
            by_source = {s: [r for r in rows if r["source"] == s] for s in sorted({r["source"] for r in rows})}
            doc["parts"][part] = {"rows": rows, "sources": {s: compare(r, clf.threshold, n_resamples,
                                                                      box_threshold=clf.roi_threshold)
                                                            for s, r in by_source.items()}}
    if not doc["parts"]:
        raise ValueError(f"{export}'s split lists no lesion images with masks in {', '.join(parts)}")
    return doc


# --------------------------------------------------------------------- the report

def _v(entry: dict, key: str) -> str:
    value, ci = entry[key]["value"], entry[key]["ci95"]
    if value is None:
        return "—"
    return f"{value:.3f} [{ci['low']:.3f}–{ci['high']:.3f}]" if ci["low"] is not None else f"{value:.3f}"


def roi_markdown(doc: dict) -> str:
    lines = [f"**Whole image vs a box around the lesion.** Export `{Path(doc['export']).name}` "
             f"({doc['variant']}, threshold {doc['threshold']:.3f} chosen on whole images; boxes at "
             + (f"its lesion-box threshold {doc['box_threshold']:.3f}" if doc.get("box_threshold") is not None
                else "the same threshold") + f"); proposed boxes from "
             f"the {doc['proposer']}. Lesion images only. 95% CIs: bootstrap of images within each class; "
             "differences: bootstrap of patients.", "",
             "| part | source | n (malignant) | mode | AUC | − whole | sens. / spec. | OOD flagged | proposed IoU ≥ 0.5 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for part, r in doc["parts"].items():
        for source, s in r["sources"].items():
            if "note" in s:
                lines.append(f"| {part} | {source} | {s['n']} ({s['malignant']}) | — | {s['note']} | | | | |")
                continue
            for mode in MODES:
                e = s[mode]
                d = e.get("minus_whole")
                diff = f"{d['difference']:+.3f} [{d['ci95']['low']:+.3f}, {d['ci95']['high']:+.3f}]" if d else "—"
                iou_text = f"{s['proposed_iou']['share_at_least_0.5']:.1%}" if mode == "proposed box" else ""
                ood = f"{e['ood_flagged']:.1%}" if e.get("ood_flagged") is not None else "—"
                lines.append(f"| {part} | {source} | {s['n']} ({s['malignant']}) | {mode} | {_v(e, 'roc_auc')} | "
                             f"{diff} | {_v(e, 'sensitivity')} / {_v(e, 'specificity')} | {ood} | {iou_text} |")
    lines += ["", f"Command: `{doc['command']}`", "", DISCLAIMER]
    return "\n".join(lines) + "\n"


def roi_plot(doc: dict, target: Path) -> None:
    """AUC with its CI per source and mode: the three ways side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [(part, source, s) for part, r in doc["parts"].items() for source, s in r["sources"].items()
              if "note" not in s]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 3.6))
    for k, mode in enumerate(MODES):
        xs = np.arange(len(groups)) + (k - 1) * 0.25
        values = [s[mode]["roc_auc"]["value"] for _, _, s in groups]
        low = [v - (s[mode]["roc_auc"]["ci95"]["low"] or v) for v, (_, _, s) in zip(values, groups)]
        high = [(s[mode]["roc_auc"]["ci95"]["high"] or v) - v for v, (_, _, s) in zip(values, groups)]
        ax.errorbar(xs, values, yerr=[low, high], fmt="o", capsize=3, label=mode)
    ax.set_xticks(np.arange(len(groups)), [f"{source}\n({part})" for part, source, _ in groups])
    ax.set_ylabel("AUC (95% CI)")
    ax.set_title("Whole image vs a box around the lesion")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.roi", description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path, help="an export directory (manifest.json and split.json)")
    p.add_argument("--parts", default="test", help="split parts to score, comma-separated (default %(default)s)")
    p.add_argument("--data", help="where the split's data lives now, if it moved (as `bcd evaluate --data`)")
    p.add_argument("--out", type=Path, required=True, help="folder for roi.json, roi.md and roi.png")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--limit", type=int, help="N lesion images of each part, evenly spread (a quick look)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    try:
        doc = run_study(args.export, tuple(p.strip() for p in args.parts.split(",") if p.strip()), args.data,
                        args.bootstrap, args.limit)
    except (ValueError, FileNotFoundError) as err:
        print(f"roi: error: {err}", file=sys.stderr)
        return 2
    doc["command"] = "python -m benchmarks.studies.roi " + " ".join(sys.argv[1:] if argv is None else argv)
    doc["seconds"] = round(time.perf_counter() - started, 1)
    atomic.write_json(args.out / "roi.json", doc)
    roi_plot(doc, args.out / "roi.png")
    text = roi_markdown(doc)
    atomic.write_text(args.out / "roi.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
