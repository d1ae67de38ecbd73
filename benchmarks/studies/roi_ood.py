"""How often the out-of-distribution flag fires on a lesion box rather than the whole scan.

    python -m benchmarks.studies.roi_ood runtime/models/bus-vgg16-w50-128 --part test --source busi

The OOD score of an export is calibrated on whole scans. For every lesion image (a
non-empty mask) of one part of the export's split.json, the flag
(Prediction.out_of_distribution) is counted for: the whole scan region, the proposed box
(roi "auto") and the mask's box with a 20 % margin on each side (a clinician's box). The
demo words its warning for boxes after these figures. Prints one line per mode; light
runtime only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2

from runtime.classifier import Classifier
from runtime.dataset import samples_of_split
from runtime.lesion_box import mask_box, with_margin
from runtime.manifest import split_file

MARGIN = 0.20


def measure(model: Path, part: str, source: str | None = None) -> dict:
    clf = Classifier.load(model, threads=1)
    doc = json.loads(split_file(model).read_text())
    counts = {"whole": 0, "proposed": 0, f"mask box + {MARGIN:.0%}": 0}
    images = 0
    for sample in samples_of_split(doc, part):
        if sample.mask is None or (source is not None and sample.source != source):
            continue
        mask = cv2.imread(str(sample.mask), cv2.IMREAD_GRAYSCALE)
        tight = mask_box(mask > 0) if mask is not None else None
        if tight is None:
            continue
        box = with_margin(tight, MARGIN, mask.shape[1], mask.shape[0])
        scan = clf.decode(str(sample.path))
        preds = [clf.predict_decoded([scan], [str(sample.path)], roi=roi)[0] for roi in (None, "auto", box)]
        if not all(p.ok for p in preds) or preds[0].out_of_distribution is None:
            continue
        images += 1
        for key, pred in zip(counts, preds):
            counts[key] += bool(pred.out_of_distribution)
    return {"model": str(model), "part": part, "source": source, "images": images, "flagged": counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--part", default="test")
    parser.add_argument("--source", default=None, help="only this source (e.g. busi, busbra)")
    args = parser.parse_args(argv)
    result = measure(args.model, args.part, args.source)
    for key, n in result["flagged"].items():
        print(f"{key}: flagged {n}/{result['images']} lesion images ({args.part}, {args.source or 'all sources'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
