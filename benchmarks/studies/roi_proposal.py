"""How well `roi="auto"` finds the lesion: the proposed box against the lesion mask's box.

    python -m benchmarks.studies.roi_proposal runtime/models/bus-vgg16-w50-128 --part val
    python -m benchmarks.studies.roi_proposal EXPORT_DIR --part test --out docs/results/roi-proposal

For every lesion image (a non-empty mask) of one part of the export's split.json, the
box Classifier.predict(image, roi="auto") proposes (runtime.roi) is compared with the
tight box of its mask (runtime.lesion_box.mask_box): per source, the share with
IoU >= 0.5 (issue 21's bar: 70 %), the median IoU and how often nothing was proposed.
Also the time per image of "auto" against no ROI, measured alternately in the same run
(decoded arrays, one thread), as a ratio. Light runtime only. With --out, writes
OUT/roi_proposal.json and OUT/roi_proposal.md (atomically).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from runtime import atomic
from runtime.classifier import Classifier
from runtime.dataset import samples_of_split
from runtime.host import DISCLAIMER
from runtime.images import read_image
from runtime.lesion_box import iou, mask_box
from runtime.manifest import split_file

HIT_IOU = 0.5


def measure(model: Path, part: str, data: str | None = None, limit: int | None = None) -> dict:
    clf = Classifier.load(model, threads=1)
    doc = json.loads(split_file(model).read_text())
    per: dict[str, dict] = {}
    seconds = {"auto": 0.0, "none": 0.0}
    n = 0
    for sample in samples_of_split(doc, part, data):
        if limit is not None and n >= limit:
            break
        if sample.mask is None:
            continue
        image = read_image(sample.path)
        mask = cv2.imread(str(sample.mask), cv2.IMREAD_GRAYSCALE)
        if mask is None or not mask.any():
            continue                                   # normal images: no lesion
        if mask.shape != image.shape[:2]:
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        started = time.perf_counter()
        pred = clf.predict(image, roi="auto")
        seconds["auto"] += time.perf_counter() - started
        started = time.perf_counter()
        clf.predict(image)
        seconds["none"] += time.perf_counter() - started
        n += 1
        row = per.setdefault(sample.source, {"ious": [], "none_proposed": 0, "errors": 0})
        if not pred.ok:
            row["errors"] += 1
        elif pred.roi is None:
            row["none_proposed"] += 1
            row["ious"].append(0.0)
        else:
            row["ious"].append(iou(pred.roi, mask_box(mask)))
    sources = {}
    for name, row in per.items():
        ious = np.asarray(row["ious"])
        sources[name] = {"lesions": len(ious) + row["errors"], "hits": int((ious >= HIT_IOU).sum()),
                         "hit_share": float((ious >= HIT_IOU).mean()) if ious.size else None,
                         "median_iou": float(np.median(ious)) if ious.size else None,
                         "none_proposed": row["none_proposed"], "errors": row["errors"]}
    return {"model": str(model), "variant": clf.variant, "engine": clf.engine, "part": part,
            "proposer": "localiser" if clf.localiser is not None else "gradcam", "hit_iou": HIT_IOU,
            "sources": sources, "images": n,
            "ms_per_image": {k: 1000 * v / max(n, 1) for k, v in seconds.items()},
            "auto_over_none": seconds["auto"] / seconds["none"] if seconds["none"] else None}


def markdown(result: dict) -> str:
    lines = [f"# Proposed lesion boxes: {Path(result['model']).name}, {result['part']} split",
             "", f"Proposer: {result['proposer']} ({result['variant']}, {result['engine']}).", "",
             f"| source | lesions | IoU >= {result['hit_iou']} | median IoU | none proposed |", "|---|---|---|---|---|"]
    for name, s in result["sources"].items():
        share = f"{s['hits']}/{s['lesions']} = {s['hit_share']:.1%}" if s["hit_share"] is not None else "-"
        median = f"{s['median_iou']:.3f}" if s["median_iou"] is not None else "-"
        lines.append(f"| {name} | {s['lesions']} | {share} | {median} | {s['none_proposed']} |")
    if result["auto_over_none"] is not None:
        lines += ["", f"roi auto takes {result['auto_over_none']:.2f}x the time per image of no ROI in this run "
                      "(decoded arrays, one thread)."]
    return "\n".join(lines + ["", DISCLAIMER, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.roi_proposal", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="export directory with its split.json")
    p.add_argument("--part", default="val", help="part of the split (default val)")
    p.add_argument("--data", help="where the split's data lives now, if it moved")
    p.add_argument("--limit", type=int, help="at most this many lesion images (a quick look)")
    p.add_argument("--out", type=Path, help="write roi_proposal.json and roi_proposal.md here")
    args = p.parse_args(argv)
    result = measure(args.model, args.part, args.data, args.limit)
    text = markdown(result)
    print(text)
    if args.out is not None:
        atomic.write_json(args.out / "roi_proposal.json", result)
        atomic.write_text(args.out / "roi_proposal.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
