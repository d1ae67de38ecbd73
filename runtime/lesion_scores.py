"""How well a proposed lesion box matches the lesion (issue 21): the figures the localiser
is trained towards, chosen by and reported with.

Per image, the box a lesion map proposes (`proposed_box`: the box the classifier's
roi="auto" classifies, runtime.roi; or None) is compared with the tight box of the
image's lesion mask:
- iou: intersection over union of the two boxes (0 when no box was proposed);
- found: iou >= IOU_FOUND (0.5, the usual detection criterion and issue 21's target);
- centre inside: the proposed box holds the lesion's centre (the centroid of the mask's
  pixels), a looser criterion that forgives a box of the wrong size.
Images whose mask is empty (BUSI's "normal" class: no lesion) count separately: the share
of them for which a box is proposed anyway (a false proposal).

The same functions serve training (threshold choice on the validation split), the
localiser's metrics.json and the study (benchmarks/studies/localiser.py), so a figure
means the same thing everywhere. Numpy + OpenCV only (runtime is the light core).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from runtime.lesion_box import Box, box_from_map, iou, mask_box
from runtime.roi import PROPOSAL_MARGIN, ROI_MIN_SIDE, at_least

IOU_FOUND = 0.5
# Map thresholds tried when one is chosen on the validation split.
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))


def proposed_box(lesion_map: np.ndarray, threshold: float, margin: float = PROPOSAL_MARGIN,
                 min_side: int = ROI_MIN_SIDE) -> Box | None:
    """The box a lesion map proposes, as the classifier's roi="auto" classifies it
    (runtime.roi.propose): the piece of the map at or above `threshold` that holds its
    peak (lesion_box.box_from_map) grown by `margin`, and at least `min_side` px a side
    (roi.ROI_MIN_SIDE: a floor in the ORIGINAL image's pixels; 0 for maps of images
    already shrunk to the model's input). In the map's pixels; None: nothing reaches
    the threshold."""
    found = box_from_map(lesion_map, threshold, margin)
    if found is None or min_side <= 0:
        return found
    height, width = np.shape(lesion_map)[:2]
    return at_least(found, min_side, width, height)


@dataclass(frozen=True)
class BoxScore:
    lesion: bool             # the mask holds a lesion
    proposed: bool           # a box was proposed
    iou: float               # box IoU with the mask's box (0: no box, or no lesion)
    centre_inside: bool      # the box holds the lesion's centre

    @property
    def found(self) -> bool:
        return self.lesion and self.iou >= IOU_FOUND


def lesion_centre(mask: np.ndarray) -> tuple[float, float] | None:
    """(x, y) centroid of the mask's nonzero pixels (None: an empty mask)."""
    ys, xs = np.nonzero(np.asarray(mask))
    return (float(xs.mean()), float(ys.mean())) if xs.size else None


def score_box(box: Box | None, mask: np.ndarray) -> BoxScore:
    """One proposed box (or None) against one lesion mask of the same picture."""
    truth = mask_box(mask)
    if truth is None:
        return BoxScore(False, box is not None, 0.0, False)
    if box is None:
        return BoxScore(True, False, 0.0, False)
    cx, cy = lesion_centre(mask)
    inside = box.x <= cx < box.right and box.y <= cy < box.bottom
    return BoxScore(True, True, iou(box, truth), bool(inside))


def score_map(lesion_map: np.ndarray, mask: np.ndarray, threshold: float,
              margin: float = PROPOSAL_MARGIN, min_side: int = ROI_MIN_SIDE) -> BoxScore:
    """The box proposed from a lesion map (at the mask's size) against the mask."""
    return score_box(proposed_box(lesion_map, threshold, margin, min_side), mask)


def summary(scores: Sequence[BoxScore]) -> dict:
    """The figures of a set of images: lesion images (n, mean IoU, share found, share
    with the centre inside, share without a box) and images without a lesion (n, share
    with a box proposed anyway). A share is None when there are no such images."""
    lesions = [s for s in scores if s.lesion]
    empty = [s for s in scores if not s.lesion]
    share = lambda values: float(np.mean(values)) if len(values) else None  # noqa: E731
    return {
        "lesion_images": len(lesions),
        "mean_iou": share([s.iou for s in lesions]),
        "median_iou": float(np.median([s.iou for s in lesions])) if lesions else None,
        "found": share([s.found for s in lesions]),
        "centre_inside": share([s.centre_inside for s in lesions]),
        "no_box": share([not s.proposed for s in lesions]),
        "images_without_lesion": len(empty),
        "box_without_lesion": share([s.proposed for s in empty]),
    }


def summary_by(scores: Sequence[BoxScore], groups: Iterable[str]) -> dict[str, dict]:
    """{"all": summary of every image, <group>: summary of its images} (groups: e.g.
    each image's source)."""
    per = defaultdict(list)
    for score, group in zip(scores, groups):
        per[str(group)].append(score)
    out = {"all": summary(scores)}
    out.update({g: summary(per[g]) for g in sorted(per)})
    return out


def macro_found(scores: Sequence[BoxScore], groups: Sequence[str]) -> float:
    """The share of lesions found, averaged over the groups that have lesion images (each
    source counts equally: the target is per source)."""
    shares = [v["found"] for k, v in summary_by(scores, groups).items() if k != "all" and v["found"] is not None]
    return float(np.mean(shares)) if shares else 0.0


def choose_threshold(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], groups: Sequence[str],
                     candidates: Sequence[float] = THRESHOLDS, margin: float = PROPOSAL_MARGIN,
                     min_side: int = ROI_MIN_SIDE) -> tuple[float, list[dict]]:
    """The map threshold whose boxes find the most lesions (macro_found), ties to the
    higher mean IoU, then the lower threshold; and the table of every candidate.
    `maps`: lesion maps at their mask's size."""
    table = []
    for t in candidates:
        scores = [score_map(m, k, t, margin, min_side) for m, k in zip(maps, masks)]
        pooled = summary(scores)
        table.append({"threshold": float(t), "found": macro_found(scores, groups),
                      "mean_iou": pooled["mean_iou"] or 0.0, "box_without_lesion": pooled["box_without_lesion"]})
    best = max(table, key=lambda r: (round(r["found"], 9), round(r["mean_iou"], 9), -r["threshold"]))
    return best["threshold"], table
