"""The proposed lesion box (issue 21): the localiser against the classifier's own Grad-CAM.

    python -m benchmarks.studies.localiser EXPORT_DIR --out docs/results/localiser

For every image of the export's test and validation splits (its split.json) that has a
lesion mask, through the runtime only (no TensorFlow):
  1. the classifier (runtime.classifier.Classifier, the export's default variant) reads
     the file, finds its scan region (Prediction.region) and gives its Grad-CAM map
     (Prediction.cam, at the image's size);
  2. the image and its lesion mask are cut to that region (runtime.scan_crop.apply_region):
     the pictures the localiser and the proposed box live in;
  3. the localiser's box: runtime.localiser.Localiser.propose on the crop (its map
     threshold and margin from the manifest): the box roi="auto" classifies;
  4. the Grad-CAM box: runtime.lesion_scores.proposed_box of the crop's Grad-CAM,
     normalised by its maximum, at `--cam-threshold` (0.7, runtime.roi's), the same
     margin: the box roi="auto" classifies without a localiser;
  5. each box against the mask's tight box (runtime.lesion_scores): IoU, found (IoU >=
     0.5), the lesion's centre inside the box; images without a lesion (BUSI's normal
     class): how often a box is proposed anyway.
Per source and pooled, with Wilson 95% intervals for the shares, and the localiser's time
per image (lesion_map: preprocessing, ONNX Runtime, resizing the map; median ms, batch 1, on
one thread and on the default thread count, interleaved).
Issue 21's target: IoU >= 0.5 on >= 70 % of lesion images of every source, test split.
Writes OUT/localiser.json, OUT/localiser.md and OUT/localiser.png atomically.
Research and education only: not a diagnosis.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.dataset import read_source, sources_of_split
from runtime.gradcam import normalize_cam
from runtime.host import DISCLAIMER, cpu_model
from runtime.images import ImageReadError, read_image
from runtime.lesion_scores import IOU_FOUND, BoxScore, proposed_box, score_box, summary_by
from runtime.manifest import split_file
from runtime.roi import GRADCAM_THRESHOLD, ROI_MIN_SIDE
from runtime.scan_crop import apply_region
from runtime.session import resolve_threads

log = logging.getLogger("benchmarks.studies.localiser")

PARTS = ("test", "val")
CAM_THRESHOLD = GRADCAM_THRESHOLD     # roi="auto"'s without a localiser
TARGET_SHARE = 0.70          # issue 21: IoU >= 0.5 on >= 70 % of lesion images per source
METHODS = ("localiser", "gradcam")
TIMED_IMAGES = 60          # test crops the localiser is timed on


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """Wilson score 95% interval of a share k/n (None, None for n == 0)."""
    if n == 0:
        return None, None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------- the images

def split_samples(export_dir: Path, data: str | None = None) -> tuple[dict, dict]:
    """(split.json, {(source, relative path): Sample}) of the export's split."""
    split = json.loads(split_file(export_dir).read_text())
    known = {}
    for source in sources_of_split(split, data):
        for sample in read_source(source).labelled:
            known[(source.name, sample.relative)] = sample
    return split, known


def part_samples(split: dict, known: dict, part: str, limit: int | None = None) -> tuple[list, int]:
    """The samples of one part that have a mask file; and how many had none."""
    single = split["sources"][0]["name"] if len(split.get("sources") or []) == 1 else None
    samples, no_mask = [], 0
    for entry in split["files"].get(part, []):
        sample = known.get((entry.get("source", single), entry["path"]))
        if sample is None:
            raise FileNotFoundError(f"{entry['path']} of the split is not in its source any more (--data DIR?)")
        if sample.mask is None:
            no_mask += 1
            continue
        samples.append(sample)
    return (samples[:limit] if limit else samples), no_mask


def _mask01(path: Path) -> np.ndarray:
    return (read_image(path)[..., 0] >= 128).astype(np.uint8)


# --------------------------------------------------------------------- one image

def measure_image(clf, loc, sample, cam_threshold: float) -> dict:
    """Both boxes of one image against its mask, in the pixels of its scan-region crop."""
    scan = clf.decode(str(sample.path))
    pred = clf.predict_decoded([scan], paths=[str(sample.path)], with_cam=True)[0]
    if not pred.ok:
        return {"error": pred.error}
    region = pred.region
    cropped = apply_region(scan.display, _mask01(sample.mask), region=region)
    crop, mask = cropped.image, cropped.mask
    ours = score_box(loc.propose(crop), mask)
    cam = normalize_cam(region.crop(pred.cam)) if pred.cam is not None else None
    theirs = score_box(proposed_box(cam, cam_threshold, loc.margin) if cam is not None else None, mask)
    return {"localiser": ours, "gradcam": theirs, "crop": crop}


def measure_part(clf, loc, samples, cam_threshold: float, what: str) -> dict:
    per: dict[str, list[BoxScore]] = defaultdict(list)
    sources, crops, errors = [], [], []
    for i, sample in enumerate(samples, 1):
        try:
            result = measure_image(clf, loc, sample, cam_threshold)
        except ImageReadError as err:
            result = {"error": str(err)}
        if "error" in result:
            errors.append(result["error"])
        else:
            for method in METHODS:
                per[method].append(result[method])
            sources.append(sample.source)
            if len(crops) < TIMED_IMAGES:
                crops.append(result["crop"])
        if i % 50 == 0 or i == len(samples):
            log.info("%s: %d/%d images", what, i, len(samples))
    out = {"images": len(sources), "errors": errors[:20], "n_errors": len(errors), "crops": crops}
    for method in METHODS:
        summaries = summary_by(per[method], sources)
        for group, r in summaries.items():
            chosen = [s for s, src in zip(per[method], sources) if group == "all" or src == group]
            lesions = [s for s in chosen if s.lesion]
            low, high = wilson(sum(s.found for s in lesions), len(lesions))
            r["found_ci95"] = {"low": low, "high": high}
            r["ious"] = [round(s.iou, 3) for s in lesions]
        out[method] = summaries
    return out


def time_localiser(export_dir: Path, crops: list[np.ndarray], threads: list[int], rounds: int = 3) -> dict:
    """Median and 90th percentile ms of lesion_map per image (batch 1) and of the ONNX
    Runtime call alone, per thread count, the counts interleaved round by round so a
    shared machine's load falls on all of them alike."""
    from runtime.localiser import Localiser

    locs = {n: Localiser.load(export_dir, threads=n) for n in threads}
    whole: dict[int, list[float]] = {n: [] for n in threads}
    session: dict[int, list[float]] = {n: [] for n in threads}
    for loc in locs.values():                        # warm-up
        for crop in crops[:5]:
            loc.lesion_map(crop)
    for _ in range(rounds):
        for n, loc in locs.items():
            for crop in crops:
                t0 = time.perf_counter()
                loc.lesion_map(crop)
                whole[n].append(time.perf_counter() - t0)
                x = np.zeros((1, *loc.spec.input_shape), np.float32)
                t0 = time.perf_counter()
                loc.session.run([loc.entry.output], {loc.entry.input: x})
                session[n].append(time.perf_counter() - t0)
    ms = lambda v, q: round(1000 * float(np.percentile(v, q)), 2)  # noqa: E731
    return {"images": len(crops), "rounds": rounds,
            "by_threads": {str(n): {"lesion_map_median_ms": ms(whole[n], 50), "lesion_map_p90_ms": ms(whole[n], 90),
                                    "session_median_ms": ms(session[n], 50)} for n in threads},
            "crop_median_size": [int(np.median([c.shape[0] for c in crops])),
                                 int(np.median([c.shape[1] for c in crops]))] if crops else None}


# --------------------------------------------------------------------- the report

def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _found(r: dict) -> str:
    ci = r.get("found_ci95") or {}
    if r["found"] is None:
        return "—"
    return f"{_pct(r['found'])} [{_pct(ci.get('low'))}–{_pct(ci.get('high'))}]"


def study_markdown(doc: dict) -> str:
    lines = [
        "**The proposed lesion box: the localiser against the classifier's Grad-CAM.** "
        f"Export `{doc['export']}`: localiser `{doc['localiser']['file']}` (map threshold "
        f"{doc['localiser']['threshold']:.2f}, chosen on the validation split; margin "
        f"{doc['localiser']['margin']:.0%} per side), classifier variant `{doc['classifier']}` "
        f"(Grad-CAM normalised by its maximum, box at {doc['cam_threshold']:.2f}, same margin). "
        "Boxes against the tight box of the lesion mask, in the pixels of the image cut to its scan region. "
        f"Found: box IoU ≥ {IOU_FOUND} (95% Wilson interval); centre: the box holds the centroid of the lesion.", "",
        "| split | source | lesion images | localiser: found | centre | mean IoU | Grad-CAM: found | centre | "
        "mean IoU | lesion-free images given a box (localiser) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for part, r in doc["parts"].items():
        for source in r["localiser"]:
            a, b = r["localiser"][source], r["gradcam"][source]
            free = (f"{_pct(a['box_without_lesion'])} of {a['images_without_lesion']}"
                    if a["images_without_lesion"] else "—")
            lines.append(f"| {part} | {source} | {a['lesion_images']} | {_found(a)} | {_pct(a['centre_inside'])} | "
                         f"{a['mean_iou']:.3f} | {_found(b)} | {_pct(b['centre_inside'])} | {b['mean_iou']:.3f} | "
                         f"{free} |")
    held_out = {True: f"The localiser learnt from the training split of run `{doc['localiser']['source_run']}`, "
                      "the split this export ships (split.json sha256 matches): its test and validation images are "
                      "held out (validation chose its epoch and map threshold).",
                False: "**The localiser was trained on another split than this export's**: its figures here may "
                       "include images it learnt from.",
                None: "The manifest records no split for the localiser: whether these images were held out is "
                      "not known."}[doc.get("same_split_as_localiser")]
    margin = doc["localiser"]["margin"]
    boxes = (f"The boxes are those predict(..., roi=\"auto\") classifies (runtime.roi): the map's piece "
             f"{'as it is' if not margin else f'grown by {margin:.0%} a side'}, at least {ROI_MIN_SIDE} px a side.")
    if margin:
        boxes += (f" With the margin, a box around exactly the lesion reaches IoU {1 / (1 + 2 * margin) ** 2:.2f} at "
                  "most with the mask's tight box.")
    lines += ["", _target_line(doc), "", held_out + " " + boxes, "",
              _timing_line(doc), "",
              f"Command: `{doc['command']}` ({doc['seconds']:.0f} s)", "", DISCLAIMER]
    return "\n".join(lines) + "\n"


def _timing_line(doc: dict) -> str:
    t = doc["timing"]
    parts = [f"{n} thread(s): median {r['lesion_map_median_ms']:.1f} ms (90th percentile {r['lesion_map_p90_ms']:.1f} "
             f"ms; ONNX Runtime alone {r['session_median_ms']:.1f} ms)" for n, r in t["by_threads"].items()]
    size = t.get("crop_median_size") or ["?", "?"]
    return (f"Localiser time per image (lesion_map, batch 1: preprocessing, ONNX Runtime, the map resized to the "
            f"crop; {t['images']} test crops of median size {size[1]}x{size[0]} px, {t['rounds']} rounds, "
            f"{doc['cpu']}): " + "; ".join(parts) + f". Load average while timing: {t.get('load', '?')} on "
            f"{t.get('cpus', '?')} CPUs (a shared machine).")


def _target_line(doc: dict) -> str:
    test = doc["parts"].get("test")
    if test is None:
        return "No test split: the target is not checked."
    verdicts = []
    for source, r in test["localiser"].items():
        if source == "all" or r["found"] is None:
            continue
        verdicts.append(f"{source} {_pct(r['found'])} ({'met' if r['found'] >= TARGET_SHARE else 'not met'})")
    return (f"Issue 21's target (IoU ≥ 0.5 on ≥ {TARGET_SHARE:.0%} of lesion images per source, test split): "
            + "; ".join(verdicts) + ".")


def study_plot(doc: dict, target: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = doc["parts"].get("test") or next(iter(doc["parts"].values()))
    sources = [s for s in test["localiser"] if s != "all"] + ["all"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    for k, (method, colour) in enumerate((("localiser", "tab:blue"), ("gradcam", "tab:orange"))):
        values = [test[method][s]["found"] or 0.0 for s in sources]
        lows = [v - (test[method][s]["found_ci95"]["low"] or v) for s, v in zip(sources, values)]
        highs = [(test[method][s]["found_ci95"]["high"] or v) - v for s, v in zip(sources, values)]
        xs = np.arange(len(sources)) + (k - 0.5) * width
        left.bar(xs, values, width, yerr=[lows, highs], capsize=3, color=colour,
                 label="localiser" if method == "localiser" else f"Grad-CAM box (≥ {doc['cam_threshold']:.1f})")
    left.axhline(TARGET_SHARE, color="k", ls="--", lw=1, label=f"target {TARGET_SHARE:.0%}")
    left.set_xticks(np.arange(len(sources)), [f"{s}\n(n={test['localiser'][s]['lesion_images']})" for s in sources])
    left.set_ylim(0, 1)
    left.set_ylabel(f"lesion images with box IoU ≥ {IOU_FOUND}")
    left.set_title("test split: lesions found (95% CI)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8)
    grid = np.linspace(0, 1, 101)
    for source, colour in zip(sources, ("tab:green", "tab:purple", "tab:gray", "tab:red")):
        for method, style in (("localiser", "-"), ("gradcam", ":")):
            ious = np.asarray(test[method][source]["ious"])
            if ious.size:
                right.plot(grid, [(ious >= g).mean() for g in grid], style, color=colour,
                           label=f"{source}, {'localiser' if method == 'localiser' else 'Grad-CAM'}")
    right.axvline(IOU_FOUND, color="k", lw=0.8)
    right.set_xlabel("box IoU with the mask's box, at least")
    right.set_ylabel("share of lesion images")
    right.set_title("test split: IoU reached")
    right.legend(fontsize=7)
    fig.suptitle(f"Proposed lesion box, export {Path(doc['export']).name}. {DISCLAIMER}", fontsize=8)
    with atomic.atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------- running it

def run_study(export_dir: Path, parts: tuple[str, ...] = PARTS, cam_threshold: float = CAM_THRESHOLD,
              threads: int | None = None, limit: int | None = None, data: str | None = None) -> dict:
    from runtime.classifier import Classifier
    from runtime.localiser import Localiser

    loc = Localiser.load(export_dir, threads=threads)
    if loc is None:
        raise ValueError(f"{export_dir}: the manifest describes no localiser (add one: bcd localiser RUN --export "
                         f"{export_dir})")
    split, known = split_samples(export_dir, data)
    doc = {"export": str(export_dir), "cam_threshold": cam_threshold, "localiser": {
        "file": loc.entry.file, "threshold": loc.threshold, "margin": loc.margin, "params": loc.entry.params,
        "source_run": loc.entry.source_run, "sha256": loc.entry.sha256}, "parts": {}}
    if loc.entry.split_sha256 and split_file(export_dir).is_file():
        from runtime.model_files import sha256_file
        doc["same_split_as_localiser"] = sha256_file(split_file(export_dir)) == loc.entry.split_sha256
    with Classifier.load(export_dir, threads=threads) as clf:
        doc["classifier"] = clf.variant
        for part in parts:
            samples, no_mask = part_samples(split, known, part, limit)
            if not samples:
                continue
            result = measure_part(clf, loc, samples, cam_threshold, f"{part} split")
            result["without_mask_file"] = no_mask
            doc["parts"][part] = result
    if not doc["parts"]:
        raise ValueError(f"{export_dir}'s split has no images with a lesion mask in {', '.join(parts)}")
    timed = doc["parts"].get("test", next(iter(doc["parts"].values())))
    counts = sorted({1, resolve_threads(threads)})
    log.info("timing the localiser on %d crops with %s thread(s)", len(timed["crops"]), " and ".join(map(str, counts)))
    doc["timing"] = time_localiser(export_dir, timed["crops"], counts)
    doc["timing"]["load"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    doc["timing"]["cpus"] = os.cpu_count()
    for part in doc["parts"].values():
        part.pop("crops")
    doc["cpu"] = cpu_model()
    return doc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.localiser", description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path, help="an export directory with a localiser (its manifest's 'localiser')")
    p.add_argument("--out", type=Path, required=True, help="folder for localiser.json, localiser.md, localiser.png")
    p.add_argument("--parts", default=",".join(PARTS), help="splits to score (default %(default)s)")
    p.add_argument("--cam-threshold", type=float, default=CAM_THRESHOLD,
                   help="Grad-CAM box threshold on the map normalised by its maximum (default %(default)s)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: physical cores)")
    p.add_argument("--limit", type=int, help="at most this many images per split (a quick look)")
    p.add_argument("--data", help="where the split's datasets live now, if they moved")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    try:
        doc = run_study(args.export, parts, args.cam_threshold, args.threads, args.limit, args.data)
    except (ValueError, FileNotFoundError) as err:
        print(f"localiser study: error: {err}", file=sys.stderr)
        return 2
    doc["command"] = "python -m benchmarks.studies.localiser " + " ".join(sys.argv[1:] if argv is None else argv)
    doc["seconds"] = round(time.perf_counter() - started, 1)
    atomic.write_json(args.out / "localiser.json", doc)
    text = study_markdown(doc)
    atomic.write_text(args.out / "localiser.md", text)
    study_plot(doc, args.out / "localiser.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
