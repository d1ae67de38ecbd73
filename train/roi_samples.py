"""Lesion-centred crops for training (issue 21): the model also learns to read the box a
clinician draws around a lesion.

For every image with a lesion mask, `crops` boxes are drawn as a clinician might draw
them (runtime.lesion_box.clinician_box: a margin of 10-40 % of the lesion's box on each
side, each edge moved by up to 10 %), cut from the full-resolution scan region (the
same crop the runtime takes for `--roi`: runtime.scan_crop then Box.crop) and resized
with the shared preprocessing. Cropping the full-resolution image matters: a lesion of
60 px on a 500 px scan is 15 px at the 128 px input, and upsampling that would teach
the model blurred lesions the runtime never shows it.

Training shows a crop instead of the whole image for a share of the samples
(TrainConfig.roi_share); validation, the threshold and every metric stay on whole
images. Images without a lesion (BUSI's normal class) have no crop. Crops are seeded
per image and cached beside the decoded dataset (train.cache).

The same images also give lesion-free crops (kind "free", TrainConfig.lesion_free_share):
a box of tissue beside the lesion, clear of it by a margin, shown as a benign sample. A
model trained on BUS-BRA alone (which has no lesion-free scans) scored BUSI's normal scans
as more suspicious than its benign lesions (docs/results.md); these crops show it tissue
with nothing in it. Kind "erased" shows instead the whole scan with its lesion replaced by
tissue from beside it at the same depth (`erase_lesion`): a whole scan with nothing in it,
which is what a normal scan is, where a crop is a zoomed patch.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from runtime.dataset import read_source
from runtime.images import DEFAULT_MAX_PIXELS, ImageReadError
from runtime.lesion_box import Box, clinician_box, mask_box
from runtime.preprocessing import PreprocessSpec, resize
from runtime.progress import Progress
from runtime.scan_region import RegionConfig
from train.cache import DecodeCache

log = logging.getLogger(__name__)
MIN_LESION_PIXELS = 20

# A lesion-free crop stays clear of the lesion's box by this share of its side plus a few
# pixels (a mask traces the lesion's core, not its halo or shadow). Each side of the crop
# is at least FREE_MIN_SIDE of the scan's, and the ratio of its height share to its width
# share lies in FREE_ASPECT, so it is squashed to the square input about as the whole
# scan is.
FREE_MARGIN, FREE_MARGIN_PX = 0.15, 4
FREE_MIN_SIDE = 0.3
FREE_ASPECT = (0.6, 1.6)
# An erased lesion's patch covers the mask grown by this share of the lesion's box side
# (at least a few pixels: the halo a mask leaves out), and fades into the scan beyond it.
ERASE_GROW, ERASE_GROW_PX = 0.1, 4
ERASE_CHOICES = 3      # the patch is one of the shifts whose copy best continues the tissue
KINDS = {"lesion": "clinician 10-40 % margin, 10 % jitter",
         "free": f"lesion-free: margin {FREE_MARGIN} + {FREE_MARGIN_PX} px, sides >= {FREE_MIN_SIDE}, "
                 f"aspect {FREE_ASPECT}",
         "erased": f"whole scan, lesion replaced by tissue at its depth (mirrored at the edges): grown "
                   f"{ERASE_GROW} + {ERASE_GROW_PX} px, feathered, of the near shifts one of the {ERASE_CHOICES} best-matching"}

KIND_NAMES = {"lesion": "lesion-centred crops", "free": "lesion-free crops", "erased": "scans with the lesion erased"}


@dataclass
class RoiCrops:
    """Per image of a LoadedDataset: `crops` lesion-centred crops (zeros where none)."""

    images: np.ndarray     # (n, crops, size, size, 3) uint8 BGR
    masks: np.ndarray      # (n, crops, size, size) uint8 0/1, the lesion mask cut the same way
    has: np.ndarray        # (n,) bool: the image has a lesion, so its crops are real

    def subset(self, idx: np.ndarray) -> "RoiCrops":
        return RoiCrops(self.images[idx], self.masks[idx], self.has[idx])


def lesion_free_box(lesion: Box, width: int, height: int, rng: np.random.Generator) -> Box | None:
    """A box of a width x height scan clear of `lesion` (with the margin above), in one of
    the four bands beside it, or None when no band is wide enough."""
    mx = int(FREE_MARGIN * lesion.width) + FREE_MARGIN_PX
    my = int(FREE_MARGIN * lesion.height) + FREE_MARGIN_PX
    x0, x1 = max(0, lesion.x - mx), min(width, lesion.right + mx)
    y0, y1 = max(0, lesion.y - my), min(height, lesion.bottom + my)
    bands = [(0, 0, x0, height), (x1, 0, width - x1, height), (0, 0, width, y0), (0, y1, width, height - y1)]
    min_w, min_h = max(1, round(FREE_MIN_SIDE * width)), max(1, round(FREE_MIN_SIDE * height))
    usable = [b for b in bands if b[2] >= min_w and b[3] >= min_h]
    if not usable:
        return None
    bx, by, bw, bh = usable[rng.integers(len(usable))]
    crop_w = int(rng.integers(min_w, bw + 1))
    wanted_h = round(crop_w / width * rng.uniform(*FREE_ASPECT) * height)
    crop_h = int(np.clip(wanted_h, min_h, bh))
    return Box(bx + int(rng.integers(0, bw - crop_w + 1)), by + int(rng.integers(0, bh - crop_h + 1)), crop_w, crop_h)


def erase_lesion(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 count: int = 1) -> list[np.ndarray] | None:
    """`count` copies of the scan (HxWx3 uint8) with its lesion (mask HxW, nonzero inside)
    replaced by the tissue beside it at the same depth, each from a shift drawn anew; None
    where there is no such tissue.

    The grown lesion, feathered, is filled from the same rows shifted sideways: speckle
    and brightness change with depth, not across, so a sideways copy looks like the scan.
    The scan is mirrored at its left and right edges first, so that a lesion as wide as
    half the scan still has tissue beside it. Of the shifts that copy none of the lesion and
    lie within a quarter of the scan's width of the nearest such, one of the few whose
    copy best continues the tissue around the lesion (the feathered ring, where both
    show) is taken: that keeps rulers, marks and a fan's black corners out of the patch
    where it can. A smooth inpainting instead would teach the model that a smear is
    benign."""
    lesion = mask_box(mask > 0)
    w = mask.shape[1]
    grow = max(ERASE_GROW_PX, int(ERASE_GROW * max(lesion.width, lesion.height)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    core = cv2.dilate((mask > 0).astype(np.uint8), kernel)
    alpha = np.maximum(cv2.GaussianBlur(core.astype(np.float32), (0, 0), grow / 2), core)
    ys, xs = np.nonzero(alpha > 0.01)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = alpha[y0:y1, x0:x1]
    support, ring = a > 0.01, (a > 0.01) & (core[y0:y1, x0:x1] == 0)
    mirrored = cv2.copyMakeBorder(image, 0, 0, w, w, cv2.BORDER_REFLECT_101)[y0:y1]
    taken = cv2.copyMakeBorder(core, 0, 0, w, w, cv2.BORDER_REFLECT_101)[y0:y1]
    grey = mirrored.mean(axis=2, dtype=np.float32)
    around = image[y0:y1, x0:x1].mean(axis=2, dtype=np.float32)[ring]
    step = max(1, w // 200)              # shifts a few pixels apart differ little
    costs = {dx: float(np.abs(grey[:, x0 + w + dx:x1 + w + dx][ring] - around).mean())
             for dx in range(-x0 - w, 2 * w - x1 + 1, step)
             if not (taken[:, x0 + w + dx:x1 + w + dx] & support).any()}
    if not costs:
        return None
    nearest = min(abs(dx) for dx in costs)       # tissue nearby looks most like the lesion's place
    near = [dx for dx in costs if abs(dx) <= nearest + w // 4]
    best = sorted(near, key=costs.get)[:ERASE_CHOICES]
    a = a[..., None]
    erased = []
    for dx in (best[i] for i in rng.integers(len(best), size=count)):
        out = image.copy()
        patch = a * mirrored[:, x0 + w + dx:x1 + w + dx] + (1 - a) * image[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
        erased.append(out)
    return erased


def crops_of_image(image: np.ndarray, mask: np.ndarray, spec: PreprocessSpec, crops: int,
                   rng: np.random.Generator, kind: str = "lesion") -> tuple[np.ndarray, np.ndarray] | None:
    """`crops` crops of one scan region (image HxWx3, mask HxW) resized to the model input:
    clinician-like boxes around the lesion (kind "lesion"), lesion-free boxes beside it
    ("free"), or the whole scan with the lesion erased, each from its own place ("erased").
    None without a lesion, or without room beside it for a lesion-free box or tissue to
    erase it with."""
    from train.data import _mask_to_input        # one mask resize for whole images and crops
    lesion = mask_box(mask > 0) if np.count_nonzero(mask) >= MIN_LESION_PIXELS else None
    if lesion is None:
        return None
    h, w = mask.shape[:2]
    size = (spec.image_size, spec.image_size)
    if kind == "erased":
        erased = erase_lesion(image, mask, rng, crops)
        if erased is None:
            return None
        return np.stack([resize(e, spec) for e in erased]), np.zeros((crops, *size), np.uint8)
    if kind == "free":
        boxes = [lesion_free_box(lesion, w, h, rng) for _ in range(crops)]
        if any(b is None for b in boxes):
            return None
    else:
        boxes = [clinician_box(lesion, w, h, rng) for _ in range(crops)]
    return (np.stack([resize(b.crop(image), spec) for b in boxes]),
            np.stack([_mask_to_input(b.crop(mask), size) for b in boxes]))


def _source_crops(source, spec: PreprocessSpec, crops: int, region: RegionConfig, max_pixels: int,
                  cache: DecodeCache, kind: str) -> dict:
    """{relative path: (images, masks)} for one source's lesion images (cached)."""
    from train.data import read_sample
    scan = read_source(source)
    key = cache.key(scan, {"roi_crops": crops, "spec": spec.to_dict(), "scan_region": region.to_dict(),
                           "max_pixels": max_pixels, "box": KINDS[kind]})
    cached = cache.get(key)
    if cached is not None:
        return {r: (i, m) for r, i, m in zip(cached["relative"].tolist(), cached["images"], cached["masks"])}
    out = {}
    with_masks = [s for s in scan.labelled if s.mask is not None]
    progress = Progress(len(with_masks), f"{KIND_NAMES[kind]} of {source.name}")
    for i, sample in enumerate(with_masks, 1):
        try:
            image, mask = read_sample(sample.path, sample.mask, region, max_pixels)
        except ImageReadError:
            pass             # listed as unreadable by the whole-image load
        else:
            if mask is not None:
                rng = np.random.default_rng(zlib.crc32(f"{source.name}:{sample.relative}".encode()))
                made = crops_of_image(image, mask, spec, crops, rng, kind)
                if made is not None:
                    out[sample.relative] = made
        progress.update(i)
    size = spec.image_size
    arrays = {"relative": np.array(list(out), dtype=str),
              "images": np.stack([v[0] for v in out.values()]) if out else np.zeros((0, crops, size, size, 3), np.uint8),
              "masks": np.stack([v[1] for v in out.values()]) if out else np.zeros((0, crops, size, size), np.uint8)}
    cache.put(key, arrays)
    return out


def load_roi_crops(data, spec: PreprocessSpec, crops: int, region: RegionConfig,
                   max_pixels: int = DEFAULT_MAX_PIXELS, cache: DecodeCache | None = None,
                   kind: str = "lesion") -> RoiCrops:
    """Lesion-centred (or, kind "free", lesion-free) crops aligned with `data` (a
    train.data.LoadedDataset)."""
    if kind not in KINDS:
        raise ValueError(f"crop kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cache = cache if cache is not None else DecodeCache.default()
    size, n = spec.image_size, len(data.labels)
    images = np.zeros((n, crops, size, size, 3), np.uint8)
    masks = np.zeros((n, crops, size, size), np.uint8)
    has = np.zeros(n, bool)
    for source in data.sources:
        made = _source_crops(source, spec, crops, region, max_pixels, cache, kind)
        for i in np.flatnonzero(data.source_names == source.name):
            found = made.get(data.relative_paths[i])
            if found is not None:
                images[i], masks[i], has[i] = found[0], found[1], True
    log.info("%s: %d images x %d", KIND_NAMES[kind], int(has.sum()), crops)
    return RoiCrops(images, masks, has)
