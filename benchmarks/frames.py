"""`python -m benchmarks.frames`: images as scanners export them (issue 20).

Does the model give the same answer for a scan on a scanner screen, with calipers drawn
on it, or cropped by the scan-region finder, as for the tidy scan it was tested on?

    python -m benchmarks.frames [--model runtime/models/bus-vgg16-w50-128] [--split-root ../shared/data]
                                [--layouts 4] [--seed 0] [--out runs/frames] [--limit N]

Over the model's test split (its split.json), per source (busi, busbra), scored with the
runtime Classifier on ONNX Runtime at the manifest's threshold:
- plain vs framed: each scan placed on `--layouts` synthetic screens (benchmarks.screens,
  every layout drawn at random from a seeded generator), the finder
  (runtime.scan_region) crops the screen, the crop is classified: AUC plain vs framed
  and the share of calls that change (with its 95 % bootstrap interval over the scans);
  the same without the finder (the whole screen, as
  before issue 20), and against the scan as the screen's probe shows it (a fan for
  curved and sector layouts);
- calipers: the same with a sonographer's marks drawn on the scan (on the lesion's
  edges, from its mask), plain and framed;
- the finder's box on screens vs where the scan was placed, and vs the box found on the
  scan alone (shifted and scaled): the consistency that makes framed and plain agree;
- crop on vs off on the plain scans (AUC), on the test split and on every development
  scan; mask coverage: the share of the lesion mask inside the box found on each plain
  development scan that has a mask, and on each screen;
- colour overlays (runtime.colour_modes): flags on every development scan (B-mode) with
  and without calipers, and detection of synthetic colour Doppler, power Doppler and
  elastography overlays of several sizes, on plain scans and on screens;
- the finder's and the colour check's time on 856x606 screens, measured in this run.

Results: results.json and results.md (atomic) in --out, example screens as PNGs in
--out/examples; progress on stderr. Research and education only: not a diagnosis.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from benchmarks.screens import (OVERLAYS, add_overlay, draw_calipers, fan_mask, make_screen, plain_scan,
                                random_layout)
from runtime import atomic
from runtime.classifier import Classifier
from runtime.colour_modes import colour_overlay
from runtime.dataset import Sample, read_source, samples_of_split, sources_of_split
from runtime.images import ImageReadError, read_image
from runtime.progress import Progress
from runtime.scan_region import ScanRegion, find_scan_region
from runtime.shipped import MODELS_DIR, SHIPPED_MODEL

DEFAULT_MODEL = MODELS_DIR / SHIPPED_MODEL
SPLIT_FILE = "split.json"
OVERLAY_SIZES = (0.01, 0.03, 0.1, 0.25)     # overlay box, share of the scan's area
BATCH = 16


@dataclass(frozen=True)
class FramesConfig:
    model: Path = DEFAULT_MODEL
    split_root: Path | None = None           # where the split's datasets live now (default: as recorded)
    out: Path = Path("runs/frames")
    layouts: int = 4                         # screens per test scan
    seed: int = 0
    limit: int | None = None                 # only the first N test scans (a quick look)
    dev_scans: bool = True                   # also every development scan (coverage, colour, crop on/off)
    examples: int = 8


# ---------------------------------------------------------------------- data


def _split_doc(model: Path) -> dict:
    path = Path(model) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the export has no {SPLIT_FILE}; this benchmark needs its test split")
    return json.loads(path.read_text())


def dev_samples(doc: dict, split_root: Path | None) -> list[Sample]:
    """Every labelled image of the split's sources (the development scans)."""
    return [s for source in sources_of_split(doc, str(split_root) if split_root else None)
            for s in read_source(source).labelled]


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray | None:
    """The lesion mask as bool, None without one (or an empty one: normal scans). Folder
    sources (BUSI) keep theirs beside the image as `<name>_mask.png`."""
    path = Path(sample.mask) if sample.mask is not None else Path(sample.path).with_name(Path(sample.path).stem + "_mask.png")
    if not path.is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        return None
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    mask = mask >= 128
    return mask if mask.any() else None


def coverage(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of the mask's pixels inside box (x, y, w, h) of the mask's own pixels."""
    x, y, w, h = box
    inside = mask[max(0, y):max(0, y + h), max(0, x):max(0, x + w)].sum()
    return float(inside) / float(mask.sum())


def _box(region: ScanRegion) -> tuple[int, int, int, int]:
    return region.x, region.y, region.width, region.height


def _to_scan(found: tuple, placed: tuple, scan_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box on the screen in the scan's own pixels (the scan was placed at `placed`)."""
    px, py, pw, ph = placed
    sx, sy = scan_shape[1] / pw, scan_shape[0] / ph
    x, y, w, h = found
    x0, y0 = int(np.floor((x - px) * sx)), int(np.floor((y - py) * sy))
    x1, y1 = int(np.ceil((x + w - px) * sx)), int(np.ceil((y + h - py) * sy))
    return x0, y0, x1 - x0, y1 - y0


def _to_screen(box: tuple, placed: tuple, scan_shape: tuple[int, int]) -> tuple[float, float, float, float]:
    px, py, pw, ph = placed
    sx, sy = pw / scan_shape[1], ph / scan_shape[0]
    x, y, w, h = box
    return px + x * sx, py + y * sy, w * sx, h * sy


def edge_error(a: tuple, b: tuple) -> float:
    """Largest distance between corresponding edges of two (x, y, w, h) boxes."""
    return float(max(abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[0] + a[2] - b[0] - b[2]), abs(a[1] + a[3] - b[1] - b[3])))


# ---------------------------------------------------------------------- the test split


def _screen_rng(seed: int, idx: int, j: int) -> np.random.Generator:
    return np.random.default_rng([seed, idx, j])


def frame_views(image: np.ndarray, mask: np.ndarray | None, idx: int, config: FramesConfig,
                keep: list | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The images to classify for one test scan (name -> BGR image) and one record per
    screen (layout, boxes, errors, coverage)."""
    views = {"plain": image, "plain_crop": find_scan_region(image).crop(image)}
    screens = []
    for j in range(config.layouts):
        # calipers drawn afresh for every screen: as many caliper draws as screens, so
        # that a few borderline scans do not decide the calls-changed figure
        calipered = draw_calipers(image, np.random.default_rng([config.seed, idx, 999, j]), mask)
        views[f"calipers_plain{j}"] = find_scan_region(calipered).crop(calipered)
        rng = _screen_rng(config.seed, idx, j)
        layout = random_layout(rng)
        screen = make_screen(image, rng, layout)
        found = find_scan_region(screen.image)
        reference = plain_scan(image, layout)
        expected = _to_screen(_box(find_scan_region(reference)), screen.box, image.shape[:2])
        views[f"framed{j}"] = found.crop(screen.image)
        views[f"whole{j}"] = screen.image
        views[f"reference{j}"] = reference
        rng_c = _screen_rng(config.seed, idx, j)
        random_layout(rng_c)                               # the same stream: the same screen, calipers on the scan
        screen_c = make_screen(calipered, rng_c, layout)
        found_c = find_scan_region(screen_c.image)
        views[f"calipers_framed{j}"] = found_c.crop(screen_c.image)
        record = {"layout": j, "probe": layout.probe, "canvas": list(layout.canvas),
                  "placed": list(screen.box), "found": list(_box(found)), "region_source": found.source,
                  "error_vs_placed_px": edge_error(_box(found), screen.box),
                  "error_vs_plain_px": edge_error(_box(found), expected),
                  "scan_height_px": screen.box[3]}
        record["lesion_in_fan"] = lesion_in_fan(mask, layout)
        if mask is not None:
            record["mask_coverage"] = coverage(mask, _to_scan(_box(found), screen.box, image.shape[:2]))
        screens.append(record)
        if keep is not None and len(keep) < config.examples and j == 0:
            keep.append(_example(screen.image, screen.box, found))
            if len(keep) % 3 == 0:
                keep.append(_example(screen_c.image, screen_c.box, found_c))
    return views, screens


def lesion_in_fan(mask: np.ndarray | None, layout) -> float:
    """The share of the lesion mask a layout's probe fan keeps (1 for a linear probe, or
    without a lesion). Our scans are rectangles: a fan cut from one removes its corners,
    and with them, on many scans, part of the lesion itself, which a real curved or
    sector scan of that lesion shows (the sonographer centres it)."""
    if mask is None or layout.probe == "linear" or not mask.any():
        return 1.0
    fan = fan_mask(mask.shape[0], mask.shape[1], layout.probe, layout.apex) > 0
    return float((mask & fan).sum() / mask.sum())


def _example(image: np.ndarray, placed: tuple, found: ScanRegion) -> np.ndarray:
    out = image.copy()
    x, y, w, h = placed
    cv2.rectangle(out, (x - 1, y - 1), (x + w, y + h), (0, 255, 0), 1)           # where the scan was put: green
    cv2.rectangle(out, (found.x, found.y), (found.x + found.width - 1, found.y + found.height - 1), (0, 0, 255), 2)
    return out


def classify_views(clf: Classifier, per_image: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """name -> probabilities (NaN where the runtime refused the image)."""
    names = list(per_image[0])
    flat = [(i, n, views[n]) for i, views in enumerate(per_image) for n in names]
    probs = {n: np.full(len(per_image), np.nan) for n in names}
    for start in range(0, len(flat), BATCH):
        chunk = flat[start:start + BATCH]
        for (i, n, _), pred in zip(chunk, clf.predict_decoded([np.ascontiguousarray(v) for _, _, v in chunk])):
            if pred.ok:
                probs[n][i] = pred.probability
    return probs


def run_test_split(clf: Classifier, samples: list[Sample], config: FramesConfig, examples: list) -> dict:
    progress = Progress(len(samples), "framing and classifying the test split", every=25)
    probs: dict[str, list] = {}
    screens, sources, labels = [], [], []
    for start in range(0, len(samples), 8):
        chunk = samples[start:start + 8]
        views = []
        for k, sample in enumerate(chunk):
            idx = start + k
            image = read_image(sample.path)
            v, s = frame_views(image, read_mask(sample, image.shape[:2]), idx, config, examples)
            views.append(v)
            for record in s:
                record.update(source=sample.source, image=sample.relative)
            screens += s
            sources.append(sample.source)
            labels.append(int(sample.label))
        for name, p in classify_views(clf, views).items():
            probs.setdefault(name, []).extend(p.tolist())
        progress.update(min(start + 8, len(samples)))
    return {"probs": {k: np.asarray(v) for k, v in probs.items()}, "screens": screens,
            "sources": np.asarray(sources), "labels": np.asarray(labels)}


# ---------------------------------------------------------------------- figures


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(p)
    y, p = y[ok], p[ok]
    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None


CI_RESAMPLES = 2000


def share_ci(flags: np.ndarray, groups: np.ndarray, resamples: int = CI_RESAMPLES,
             seed: int = 0) -> list[float] | None:
    """95 % percentile-bootstrap interval of the share of True in `flags`, resampling
    whole scans (`groups`): a scan's screens and caliper draws share its tissue and its
    distance from the threshold, so they are not independent. None without data."""
    if flags.size == 0:
        return None
    ids, index = np.unique(groups, return_inverse=True)
    hits = np.bincount(index, weights=flags.astype(np.float64), minlength=ids.size)
    totals = np.bincount(index, minlength=ids.size).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, ids.size, (resamples, ids.size))
    shares = hits[draws].sum(axis=1) / totals[draws].sum(axis=1)
    return [float(v) for v in np.percentile(shares, [2.5, 97.5])]


def compare(y: np.ndarray, plain: np.ndarray, other: np.ndarray, threshold: float,
            groups: np.ndarray | None = None) -> dict:
    """AUC of both, their difference, and the share of calls that differ (pairs where
    either was refused are counted as refused, not as changed), with its 95 % interval
    over scans when `groups` (each pair's scan) is given."""
    ok = np.isfinite(plain) & np.isfinite(other)
    changed = (plain[ok] >= threshold) != (other[ok] >= threshold)
    a, b = auc(y, plain), auc(y, other)
    return {"n": int(ok.sum()), "refused": int((~ok).sum()), "auc_plain": a, "auc_other": b,
            "auc_delta": (b - a) if a is not None and b is not None else None,
            "calls_changed": float(changed.mean()) if changed.size else None,
            "calls_changed_n": int(changed.sum()),
            "calls_changed_ci": share_ci(changed, groups[ok]) if groups is not None else None,
            "max_abs_prob_change": float(np.max(np.abs(plain[ok] - other[ok]))) if ok.any() else None}


COMPARISONS = {
    "crop on plain scans": ("plain", "plain_crop"),
    "framed, finder on": ("plain", "framed"),
    "framed, finder off (whole screen)": ("plain", "whole"),
    "framed vs the probe's plain scan": ("reference", "framed"),
    "calipers on plain scans": ("plain", "calipers_plain"),
    "calipers, framed, finder on": ("plain", "calipers_framed"),
}


# linear-probe screens only: the scan's pixels are the plain scan's, only the frame differs
LINEAR_ONLY = {
    "linear screens: framed, finder on": ("plain", "framed"),
    "linear screens: calipers, framed, finder on": ("plain", "calipers_framed"),
}

# every probe, but only screens whose fan keeps the whole lesion (>= LESION_KEPT of its mask):
# what a real curved or sector scan of the lesion shows; the others lost lesion pixels
LESION_KEPT = 0.99
LESION_IN_FAN = {
    "lesion inside the fan: framed, finder on": ("plain", "framed"),
    "lesion inside the fan: calipers, framed, finder on": ("plain", "calipers_framed"),
}


def _pooled_screens(run: dict, layouts: int, key: str, default=None) -> np.ndarray:
    """One field of the screen record behind every pooled framed prediction
    (layout-major, as _pooled); `default` where a record lacks it."""
    n = len(run["labels"])
    return np.array([run["screens"][i * layouts + j].get(key, default) for j in range(layouts) for i in range(n)])


def _pooled_probe(run: dict, layouts: int) -> np.ndarray:
    return _pooled_screens(run, layouts, "probe")


def _pooled_lesion_kept(run: dict, layouts: int) -> np.ndarray:
    """Whether each pooled framed prediction's fan kept the lesion."""
    return _pooled_screens(run, layouts, "lesion_in_fan", 1.0) >= LESION_KEPT


def _pooled(probs: dict, name: str, layouts: int) -> np.ndarray:
    if name in probs:
        return np.tile(probs[name], layouts)
    return np.concatenate([probs[f"{name}{j}"] for j in range(layouts)])


def accuracy_figures(run: dict, threshold: float, layouts: int) -> dict:
    out: dict = {}
    for source in ["all", *sorted(set(run["sources"].tolist()))]:
        keep = np.ones(len(run["labels"]), bool) if source == "all" else run["sources"] == source
        probs = {k: v[keep] for k, v in run["probs"].items()}
        y = np.tile(run["labels"][keep], layouts)
        scans = np.tile(np.flatnonzero(keep), layouts)          # each pooled pair's scan
        figures = {}
        for title, (a, b) in COMPARISONS.items():
            figures[title] = compare(y, _pooled(probs, a, layouts), _pooled(probs, b, layouts), threshold, scans)
        for pairs, screens in ((LINEAR_ONLY, _pooled_probe(run, layouts) == "linear"),
                               (LESION_IN_FAN, _pooled_lesion_kept(run, layouts))):
            sel = screens[np.tile(keep, layouts)]
            for title, (a, b) in pairs.items():
                figures[title] = compare(y[sel], _pooled(probs, a, layouts)[sel], _pooled(probs, b, layouts)[sel],
                                         threshold, scans[sel])
        per_layout = [compare(run["labels"][keep], probs["plain"], probs[f"framed{j}"], threshold)
                      for j in range(layouts)]
        figures["framed, finder on"]["per_layout_draw"] = {
            "auc_delta": [f["auc_delta"] for f in per_layout], "calls_changed": [f["calls_changed"] for f in per_layout]}
        figures["by_probe"] = _by_probe(run, keep, threshold, layouts)
        out[source] = figures
    return out


def _by_probe(run: dict, keep: np.ndarray, threshold: float, layouts: int) -> dict:
    """Calls changed per probe shape: framed (finder on) vs the plain scan, and vs the
    probe's plain scan (the fan on black, no screen: the frame's own effect)."""
    probe = _pooled_probe(run, layouts)
    kept = _pooled_lesion_kept(run, layouts)
    plain = _pooled(run["probs"], "plain", layouts)
    reference = _pooled(run["probs"], "reference", layouts)
    framed = _pooled(run["probs"], "framed", layouts)
    mask = np.tile(keep, layouts)

    def changed(ok, base=plain):
        ok = ok & np.isfinite(base) & np.isfinite(framed)
        return float(((base[ok] >= threshold) != (framed[ok] >= threshold)).mean()) if ok.any() else None

    out = {}
    for kind in sorted(set(probe.tolist())):
        sel = mask & (probe == kind)
        out[kind] = {"screens": int(sel.sum()), "calls_changed": changed(sel),
                     "calls_changed_vs_probe_plain": changed(sel, reference),
                     "lesion_cut": int((sel & ~kept).sum()),
                     "calls_changed_lesion_kept": changed(sel & kept), "calls_changed_lesion_cut": changed(sel & ~kept)}
    return out


def box_figures(screens: list[dict]) -> dict:
    out = {}
    for probe in ["all", "linear", "curved", "sector"]:
        chosen = [s for s in screens if probe == "all" or s["probe"] == probe]
        if not chosen:
            continue
        placed = np.array([s["error_vs_placed_px"] for s in chosen])
        plain = np.array([s["error_vs_plain_px"] for s in chosen])
        rel = plain / np.array([s["scan_height_px"] for s in chosen])
        cov = np.array([s["mask_coverage"] for s in chosen if "mask_coverage" in s])
        out[probe] = {
            "screens": len(chosen),
            "error_vs_placed_px": _quantiles(placed),
            "error_vs_plain_px": _quantiles(plain),
            "share_within_4px_of_plain": float(np.mean(plain <= 4)),
            "share_within_2pct_of_plain": float(np.mean(rel <= 0.02)),
            "whole_screen_returned": int(sum(s["region_source"] != "found" for s in chosen)),
            "mask_coverage_at_least_99pct": float(np.mean(cov >= 0.99)) if cov.size else None,
            "mask_coverage_min": float(cov.min()) if cov.size else None,
            "masks": int(cov.size),
        }
    return out


def _quantiles(values: np.ndarray) -> dict:
    q = np.percentile(values, [0, 50, 90, 95, 99, 100]) if values.size else [None] * 6
    return {k: (float(v) if v is not None else None) for k, v in zip(("min", "median", "p90", "p95", "p99", "max"), q)}


# ---------------------------------------------------------------------- development scans


def dev_scan_figures(clf: Classifier, samples: list[Sample], config: FramesConfig) -> dict:
    """Every development scan: mask coverage and area kept by the box found on the plain
    scan, colour flags (with and without calipers), and AUC with the crop on vs off."""
    progress = Progress(len(samples), "development scans: finder, colour check, crop on/off", every=100)
    per_source: dict[str, dict] = {}
    flagged, flagged_calipers = [], []
    plain_imgs, crop_imgs, labels, sources = [], [], [], []
    p_plain, p_crop = [], []
    for i, sample in enumerate(samples):
        image = read_image(sample.path)
        region = find_scan_region(image)
        s = per_source.setdefault(sample.source, {"scans": 0, "coverage": [], "area_kept": []})
        s["scans"] += 1
        s["area_kept"].append(region.width * region.height / float(image.shape[0] * image.shape[1]))
        mask = read_mask(sample, image.shape[:2])
        if mask is not None:
            s["coverage"].append(coverage(mask, _box(region)))
        reason = colour_overlay(image, region)
        if reason:
            flagged.append({"image": f"{sample.source}/{sample.relative}", "reason": reason})
        calipered = draw_calipers(image, np.random.default_rng([config.seed, i, 7]), mask)
        reason = colour_overlay(calipered, find_scan_region(calipered))
        if reason:
            flagged_calipers.append({"image": f"{sample.source}/{sample.relative}", "reason": reason})
        plain_imgs.append(image)
        crop_imgs.append(region.crop(image) if region.source == "found" and _box(region) != (0, 0, image.shape[1], image.shape[0]) else None)
        labels.append(int(sample.label))
        sources.append(sample.source)
        if len(plain_imgs) == BATCH or i == len(samples) - 1:
            preds = clf.predict_decoded(plain_imgs)
            p = [q.probability if q.ok else np.nan for q in preds]
            cropped = [c for c in crop_imgs if c is not None]
            cp = iter(clf.predict_decoded([np.ascontiguousarray(c) for c in cropped]) if cropped else [])
            p_plain += p
            for pp, c in zip(p, crop_imgs):
                if c is None:
                    p_crop.append(pp)
                else:
                    q = next(cp)
                    p_crop.append(q.probability if q.ok else np.nan)
            plain_imgs, crop_imgs = [], []
        progress.update(i + 1)
    y, sources = np.asarray(labels), np.asarray(sources)
    p_plain, p_crop = np.asarray(p_plain, float), np.asarray(p_crop, float)
    out = {"colour_flags": {"scans": len(samples), "flagged": flagged, "flagged_with_calipers": flagged_calipers}}
    for source, s in per_source.items():
        cov, kept = np.asarray(s["coverage"]), np.asarray(s["area_kept"])
        sel = sources == source
        out[source] = {
            "scans": s["scans"], "masks": int(cov.size),
            "mask_coverage_at_least_99pct": float(np.mean(cov >= 0.99)) if cov.size else None,
            "mask_coverage_min": float(cov.min()) if cov.size else None,
            "area_kept": _quantiles(kept), "scans_cropped": int(np.sum(kept < 1.0)),
            "crop_on_vs_off": compare(y[sel], p_plain[sel], p_crop[sel], clf.threshold),
        }
    out["all"] = {"crop_on_vs_off": compare(y, p_plain, p_crop, clf.threshold)}
    return out


# ---------------------------------------------------------------------- colour overlays


def overlay_figures(samples: list[Sample], config: FramesConfig) -> dict:
    """Detection of synthetic overlays per kind and size, on the plain scan (region found
    on it) and on a screen (region found on the screen; elastography screens carry a
    colour bar beside the scan)."""
    progress = Progress(len(samples), "colour overlays", every=50)
    hits: dict = {}
    for i, sample in enumerate(samples):
        image = read_image(sample.path)
        for k, kind in enumerate(OVERLAYS):
            for size in OVERLAY_SIZES:
                rng = np.random.default_rng([config.seed, i, k, int(size * 1000)])
                shown = add_overlay(image, rng, kind, size)
                entry = hits.setdefault(f"{kind}|{size}", {"plain": [], "framed": [], "kind_right": []})
                reason = colour_overlay(shown, find_scan_region(shown))
                entry["plain"].append(reason is not None)
                entry["kind_right"].append(bool(reason and reason.startswith(kind)))
                layout = replace(random_layout(rng), colour_bar=kind == "elastography")
                screen = make_screen(shown, rng, layout)
                entry["framed"].append(colour_overlay(screen.image, find_scan_region(screen.image)) is not None)
        progress.update(i + 1)
    return {key: {"scans": len(v["plain"]), "detected_plain": float(np.mean(v["plain"])),
                  "detected_framed": float(np.mean(v["framed"])), "named_right_plain": float(np.mean(v["kind_right"]))}
            for key, v in hits.items()}


def framed_bmode_flags(samples: list[Sample], config: FramesConfig) -> dict:
    """Colour flags on B-mode screens (the region found on each screen): coloured text,
    logos, colour bars and yellow markers around the scan must not raise a flag."""
    flagged = []
    for i, sample in enumerate(samples):
        image = read_image(sample.path)
        rng = _screen_rng(config.seed, i, 0)
        screen = make_screen(image, rng, random_layout(rng))
        region = find_scan_region(screen.image)
        reason = colour_overlay(screen.image, region)
        if reason:
            flagged.append({"image": f"{sample.source}/{sample.relative}", "layout": 0, "reason": reason,
                            "found": list(_box(region)), "placed": list(screen.box)})
    return {"screens": len(samples), "flagged": len(flagged), "which": flagged}


# ---------------------------------------------------------------------- timing


def timing(samples: list[Sample], config: FramesConfig, n: int = 40) -> dict:
    """Milliseconds per call of the finder and the colour check on 856x606 screens (the
    issue's PNG size), on one OpenCV thread (in a folder run the other core infers), each
    the best of 3 runs, wall clock and this process's CPU time, measured in this run."""
    finder, colour, finder_cpu = [], [], []
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for i, sample in enumerate(samples[:n]):
            image = read_image(sample.path)
            rng = _screen_rng(config.seed + 1, i, 0)
            screen = make_screen(image, rng, random_layout(rng, canvas=(856, 606), jpeg_quality=None))
            f, c, fc = [], [], []
            for _ in range(3):
                t0, c0 = time.perf_counter(), time.process_time()
                region = find_scan_region(screen.image)
                t1, c1 = time.perf_counter(), time.process_time()
                colour_overlay(screen.image, region)
                t2 = time.perf_counter()
                f.append(t1 - t0)
                fc.append(c1 - c0)
                c.append(t2 - t1)
            finder.append(min(f) * 1e3)
            finder_cpu.append(min(fc) * 1e3)
            colour.append(min(c) * 1e3)
    finally:
        cv2.setNumThreads(threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"screens": len(finder), "canvas": [856, 606], "opencv_threads": 1, "load_average_1min": load,
            "finder_ms": _quantiles(np.asarray(finder)), "finder_cpu_ms": _quantiles(np.asarray(finder_cpu)),
            "colour_check_ms": _quantiles(np.asarray(colour))}


# ---------------------------------------------------------------------- report


def _f(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f} %"


def markdown(doc: dict) -> str:
    lines = ["# Images as scanners export them (issue 20)", "",
             "> Research and education only: not a diagnosis.", "",
             f"Command: `{doc['command']}`  ", f"Model: `{doc['model']}` ({doc['variant']}, {doc['engine']}), "
             f"threshold {doc['threshold']:.4f}; test split: {doc['test_scans']} scans, "
             f"{doc['layouts']} screens each (seed {doc['seed']}).", "",
             "## Calls and AUC: plain scan vs framed / marked", "",
             "Acceptance (issue 20): framed vs plain AUC within 0.01 and at most 2 % of calls changed, "
             "the same with calipers.", "",
             "Calls changed: the share, (the count) and its 95 % bootstrap interval over the scans.", "",
             "| source | comparison | n | AUC plain | AUC other | delta | calls changed | max abs dp |",
             "|---|---|---|---|---|---|---|---|"]
    for source, figures in doc["accuracy"].items():
        for title in [*COMPARISONS, *LINEAR_ONLY, *LESION_IN_FAN]:
            f = figures[title]
            ci = f.get("calls_changed_ci")
            interval = f" [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]" if ci else ""
            lines.append(f"| {source} | {title} | {f['n']} | {_f(f['auc_plain'])} | {_f(f['auc_other'])} | "
                         f"{_f(f['auc_delta'])} | {_pct(f['calls_changed'])} ({f['calls_changed_n']}){interval} | "
                         f"{_f(f['max_abs_prob_change'])} |")
    lines += ["", "Framed (finder on), calls changed per probe shape: vs the plain scan / vs the probe's plain "
              "scan (the fan on black without the screen: what the frame alone changes):", "",
              "| source | " + " | ".join(("linear", "curved", "sector")) + " |", "|---|---|---|---|"]
    for source, figures in doc["accuracy"].items():
        bp = figures["by_probe"]
        lines.append(f"| {source} | " + " | ".join(
            f"{_pct(bp[k]['calls_changed'])} / {_pct(bp[k].get('calls_changed_vs_probe_plain'))} of {bp[k]['screens']}"
            if k in bp else "-" for k in ("linear", "curved", "sector")) + " |")
    lines += ["", f"The same, split by whether the fan kept the lesion (>= {LESION_KEPT:.0%} of its mask; our scans "
              "are rectangles, and a fan cut from one can cut the lesion, which a real fan-shaped scan of it shows):",
              "", "| source | probe | screens | fan cut the lesion | calls changed: lesion kept | lesion cut |",
              "|---|---|---|---|---|---|"]
    for source, figures in doc["accuracy"].items():
        for kind in ("curved", "sector"):
            b = figures["by_probe"].get(kind)
            if b is not None and "lesion_cut" in b:
                lines.append(f"| {source} | {kind} | {b['screens']} | {b['lesion_cut']} | "
                             f"{_pct(b['calls_changed_lesion_kept'])} | {_pct(b['calls_changed_lesion_cut'])} |")
    lines += ["", "## The box found on screens", "",
              "Error: the largest distance between corresponding edges, in screen pixels; 'vs plain' compares "
              "with the box found on the scan alone (as the probe shows it), scaled and shifted to where it "
              "was placed.", "",
              "| probe | screens | vs placed: median / p95 / max | vs plain: median / p95 / max | within 4 px of plain | "
              "within 2 % of plain | mask >= 99 % kept | min mask kept |", "|---|---|---|---|---|---|---|---|"]
    for probe, b in doc["boxes"].items():
        a, p = b["error_vs_placed_px"], b["error_vs_plain_px"]
        lines.append(f"| {probe} | {b['screens']} | {_f(a['median'], 0)} / {_f(a['p95'], 0)} / {_f(a['max'], 0)} | "
                     f"{_f(p['median'], 0)} / {_f(p['p95'], 0)} / {_f(p['max'], 0)} | "
                     f"{_pct(b['share_within_4px_of_plain'])} | {_pct(b['share_within_2pct_of_plain'])} | "
                     f"{_pct(b['mask_coverage_at_least_99pct'])} | {_f(b['mask_coverage_min'])} |")
    dev = doc.get("dev_scans")
    if dev:
        lines += ["", "## Development scans (plain)", "",
                  "| source | scans | masks | mask >= 99 % inside the box | min mask kept | scans cropped | "
                  "area kept (min) | AUC crop off | AUC crop on | delta | calls changed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for source, d in dev.items():
            if source in ("all", "colour_flags"):
                continue
            c = d["crop_on_vs_off"]
            lines.append(f"| {source} | {d['scans']} | {d['masks']} | {_pct(d['mask_coverage_at_least_99pct'])} | "
                         f"{_f(d['mask_coverage_min'])} | {d['scans_cropped']} | {_f(d['area_kept']['min'])} | "
                         f"{_f(c['auc_plain'])} | {_f(c['auc_other'])} | {_f(c['auc_delta'], 4)} | "
                         f"{_pct(c['calls_changed'])} ({c['calls_changed_n']}) |")
        flags = dev["colour_flags"]
        lines += ["", f"Colour-overlay flags on the {flags['scans']} development scans: {len(flags['flagged'])}; "
                  f"with coloured calipers drawn on them: {len(flags['flagged_with_calipers'])}."]
        lines += [f"- {f['image']}: {f['reason']}" for f in flags["flagged"]]
    if "bmode_screens" in doc:
        b = doc["bmode_screens"]
        lines += ["", f"Colour flags on B-mode screens (region found on the screen): {b['flagged']} of {b['screens']}."]
        lines += [f"- {f['image']} (screen 0): {f['reason']}; box found {f['found']}, scan placed at {f['placed']}"
                  for f in b["which"]]
    if "overlays" in doc:
        lines += ["", "## Synthetic colour overlays: detection", "",
                  "| overlay | box (share of the scan) | scans | flagged (plain) | named right (plain) | flagged (framed) |",
                  "|---|---|---|---|---|---|"]
        for key, o in doc["overlays"].items():
            kind, size = key.split("|")
            lines.append(f"| {kind} | {float(size):.0%} | {o['scans']} | {_pct(o['detected_plain'])} | "
                         f"{_pct(o['named_right_plain'])} | {_pct(o['detected_framed'])} |")
    t = doc["timing"]
    lines += ["", "## Time", "",
              f"On {t['screens']} screens of {t['canvas'][0]}x{t['canvas'][1]} (best of 3 per screen, this run, "
              f"one OpenCV thread, 1-minute load average {_f(t['load_average_1min'], 1)} on this machine): finder "
              f"median {_f(t['finder_ms']['median'], 2)} ms wall (p95 {_f(t['finder_ms']['p95'], 2)}), "
              f"{_f(t['finder_cpu_ms']['median'], 2)} ms CPU; colour check median "
              f"{_f(t['colour_check_ms']['median'], 2)} ms (p95 {_f(t['colour_check_ms']['p95'], 2)}).", "",
              f"Examples: {', '.join(doc['examples'])} (green: where the scan was placed; red: the box found).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def run(config: FramesConfig, command: str = "") -> dict:
    doc_split = _split_doc(config.model)
    samples = samples_of_split(doc_split, "test", str(config.split_root) if config.split_root else None)
    if config.limit:
        samples = samples[:config.limit]
    out = Path(config.out)
    examples: list[np.ndarray] = []
    with Classifier.load(config.model, backend="onnxruntime", region="off") as clf:   # the benchmark crops itself
        started = time.perf_counter()
        test = run_test_split(clf, samples, config, examples)
        doc = {"command": command, "model": str(config.model), "variant": clf.variant, "engine": clf.engine,
               "threshold": clf.threshold, "test_scans": len(samples), "layouts": config.layouts, "seed": config.seed,
               "accuracy": accuracy_figures(test, clf.threshold, config.layouts),
               "boxes": box_figures(test["screens"])}
        if config.dev_scans:
            dev = dev_samples(doc_split, config.split_root)
            doc["dev_scans"] = dev_scan_figures(clf, dev, config)
    doc["overlays"] = overlay_figures(samples, config)
    doc["bmode_screens"] = framed_bmode_flags(samples, config)
    doc["timing"] = timing(samples, config)
    doc["seconds"] = time.perf_counter() - started
    doc["examples"] = _write_examples(out, examples, samples, config)
    atomic.write_json(out / "results.json", _plain(doc))
    atomic.write_text(out / "results.md", markdown(doc))
    atomic.write_json(out / "screens.json", test["screens"])
    return doc


def _write_examples(out: Path, examples: list[np.ndarray], samples: list[Sample], config: FramesConfig) -> list[str]:
    names = []
    for k, image in enumerate(examples):
        name = f"examples/screen-{k}.png"
        atomic.write_bytes(out / name, cv2.imencode(".png", image)[1].tobytes())
        names.append(name)
    if samples:
        image = read_image(samples[0].path)
        tiles = [cv2.resize(add_overlay(image, np.random.default_rng([config.seed, k]), kind, 0.1), (256, 256))
                 for k, kind in enumerate(OVERLAYS)]
        name = "examples/overlays.png"
        atomic.write_bytes(out / name, cv2.imencode(".png", np.hstack(tiles))[1].tobytes())
        names.append(name)
    return names


def _plain(obj):
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frames", description=__doc__.split("\n")[0])
    d = FramesConfig()
    parser.add_argument("--model", type=Path, default=d.model, help="export directory with manifest.json and split.json")
    parser.add_argument("--split-root", type=Path, default=None, help="where the split's datasets live now")
    parser.add_argument("--out", type=Path, default=d.out)
    parser.add_argument("--layouts", type=int, default=d.layouts, help="synthetic screens per test scan")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--limit", type=int, default=None, help="only the first N test scans")
    parser.add_argument("--no-dev-scans", action="store_true", help="skip the pass over every development scan")
    args = parser.parse_args(argv)
    if args.layouts < 1:
        parser.error("--layouts must be at least 1")
    config = FramesConfig(model=args.model, split_root=args.split_root, out=args.out, layouts=args.layouts,
                          seed=args.seed, limit=args.limit, dev_scans=not args.no_dev_scans)
    command = "python -m benchmarks.frames " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        doc = run(config, command.strip())
    except (FileNotFoundError, ImageReadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
