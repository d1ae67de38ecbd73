"""Load labelled datasets (class folders or CSV indexes) into memory and feed them to Keras.

Images are decoded once (runtime.images), hashed for near-duplicate grouping at full
resolution, then resized with the shared preprocessing and kept as uint8, with their
lesion masks where the source has them. The result of decoding a source is cached per
source and image size (train.cache), so --resume, `bcd slim` and `bcd export` do not
decode thousands of images again. With a scan-region setting (TrainConfig.scan_region)
every image and its lesion mask are first cut to the scan region by
runtime.scan_crop.apply_region, the step the runtime applies before it classifies.
Augmentation
runs on 0..255 pixels in tf.data; `runtime.preprocessing.normalize` runs last, the same
function the runtime applies at inference.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from runtime.dataset import DataSource, DatasetError, LabelMap, SourceScan, read_source, sources_of_split, unique_names
from runtime.images import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from runtime.overlay_marks import apply_marks
from runtime.preprocessing import PreprocessSpec, normalize, resize
from runtime.scan_crop import RegionSetting, apply_region, colour_refusal
from runtime.scan_input import read_scan
from runtime.scan_region import RegionConfig
from runtime.progress import Progress
from train.augment import AugmentConfig, ScreenView, blend, build_augment, build_screen_view, mixup_weights
from train.cache import DecodeCache
from train.dedup import DedupConfig, image_hash

log = logging.getLogger(__name__)


@dataclass
class LoadedDataset:
    """Every readable labelled image of one or more sources, decoded and resized."""

    sources: list[DataSource]
    source_names: np.ndarray      # (n,) str: which source each image came from
    relative_paths: list[str]     # relative to its source's root
    class_names: list[str]
    labels: np.ndarray            # (n,) int 0/1
    images: np.ndarray            # (n, size, size, 3) uint8 BGR, already resized
    hashes: np.ndarray            # (n, bits) bool perceptual hashes of the full images
    patients: list[str | None]    # patient/study id within its source, if the source has one
    masks: np.ndarray             # (n, size, size) uint8 0/1 lesion masks (zeros where none)
    has_mask: np.ndarray          # (n,) bool
    birads: np.ndarray | None = None   # (n,) int BI-RADS category, 0 where unknown (None: all unknown)
    unreadable: list[dict] = field(default_factory=list)   # {"source", "path", "reason"}
    bad_rows: list[dict] = field(default_factory=list)     # {"source", "row", "path", "reason"}
    masks_skipped: int = 0
    unlabelled: int = 0

    @property
    def root(self) -> Path:
        """The single source's root (older code paths and messages)."""
        return self.sources[0].root

    def source(self, name: str) -> DataSource:
        return next(s for s in self.sources if s.name == name)

    def keys(self) -> list[tuple[str, str]]:
        """(source, relative path) per image: how split.json names an image."""
        return list(zip(self.source_names.tolist(), self.relative_paths))

    def summary(self) -> dict:
        per_source = {}
        for src in self.sources:
            sel = self.source_names == src.name
            per_source[src.name] = {
                "path": str(Path(src.path).resolve()), "images": int(sel.sum()),
                "benign": int((self.labels[sel] == 0).sum()), "malignant": int((self.labels[sel] == 1).sum()),
                "with_mask": int(self.has_mask[sel].sum()),
                "patients": len({p for p, ok in zip(self.patients, sel) if ok and p is not None}) or None,
            }
        return {
            "root": str(self.root), "images": len(self.labels),
            "benign": int((self.labels == 0).sum()), "malignant": int((self.labels == 1).sum()),
            "per_class_folder": {c: self.class_names.count(c) for c in sorted(set(self.class_names))},
            "per_source": per_source,
            "masks_skipped": self.masks_skipped, "unlabelled_skipped": self.unlabelled,
            "unreadable_skipped": len(self.unreadable), "bad_rows_skipped": len(self.bad_rows),
        }

    def subset(self, index: np.ndarray) -> "LoadedDataset":
        idx = np.asarray(index, dtype=int)
        pick = idx.tolist()
        return replace(self, source_names=self.source_names[idx],
                       relative_paths=[self.relative_paths[i] for i in pick],
                       class_names=[self.class_names[i] for i in pick], labels=self.labels[idx],
                       images=self.images[idx], hashes=self.hashes[idx],
                       patients=[self.patients[i] for i in pick], masks=self.masks[idx],
                       has_mask=self.has_mask[idx], birads=None if self.birads is None else self.birads[idx])

    def birads_levels(self) -> np.ndarray:
        """(n,) int BI-RADS category per image, 0 where unknown."""
        return np.zeros(len(self.labels), np.int64) if self.birads is None else self.birads


NO_REGION = RegionConfig(mode="off", colour_marks="keep", white_calipers="keep")


def _mask_to_input(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A lesion mask resized to the model input: 1 inside the lesion, 0 outside."""
    return (cv2.resize(mask, size, interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8)


def read_sample(path: Path, mask_path: Path | None, region: RegionConfig = NO_REGION,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (a cine loop's middle frame) and its lesion mask (None: none, or
    unreadable: logged), both cut to the scan region. ImageReadError for the image (with
    the scan region on, also for a colour Doppler or elastography screen)."""
    scan = read_scan(path, max_pixels)
    mask = None
    if mask_path is not None:
        try:
            mask = read_image(mask_path, max_pixels=max_pixels)[..., 0]
        except ImageReadError as err:
            log.warning("lesion mask ignored: %s", err)
    cropped = apply_region(scan.display, mask, RegionSetting(region.mode), region, scan.dicom)
    if region.mode != "off":     # as the runtime sees images: a colour overlay is refused, not learnt from
        reason = colour_refusal(scan.display, cropped.region, scan.dicom)
        if reason is not None:
            raise ImageReadError(f"{path}: {reason}")
    return apply_marks(cropped.image, region.colour_marks, region.white_calipers), cropped.mask


def _decode_source(scan: SourceScan, spec: PreprocessSpec, dedup: DedupConfig, max_pixels: int,
                   region: RegionConfig = NO_REGION) -> dict:
    """Decode, crop to the scan region, hash and resize every sample of one source (the
    expensive part)."""
    out = {k: [] for k in ("relative", "classes", "labels", "images", "hashes", "patients", "masks", "has_mask",
                           "birads")}
    unreadable = []
    samples = scan.labelled
    size = (spec.image_size, spec.image_size)
    progress = Progress(len(samples), f"reading {scan.source.name} ({scan.source.path})")
    for i, sample in enumerate(samples, 1):
        try:
            full, full_mask = read_sample(sample.path, sample.mask, region, max_pixels)
        except ImageReadError as err:
            unreadable.append({"source": scan.source.name, "path": sample.relative, "reason": str(err)})
        else:
            has = full_mask is not None
            mask = _mask_to_input(full_mask, size) if has else np.zeros(size, np.uint8)
            for key, value in (("relative", sample.relative), ("classes", sample.class_name),
                               ("labels", sample.label), ("images", resize(full, spec)),
                               ("hashes", image_hash(full, dedup)), ("patients", sample.group),
                               ("masks", mask), ("has_mask", has), ("birads", sample.birads or 0)):
                out[key].append(value)
        progress.update(i)
    out["unreadable"] = unreadable
    return out


def _as_arrays(decoded: dict, spec: PreprocessSpec, dedup: DedupConfig) -> dict:
    n, size = len(decoded["labels"]), spec.image_size
    return {
        "relative": np.array(decoded["relative"], dtype=str), "classes": np.array(decoded["classes"], dtype=str),
        "labels": np.array(decoded["labels"], dtype=np.int64),
        "images": np.stack(decoded["images"]) if n else np.zeros((0, size, size, 3), np.uint8),
        "hashes": np.stack(decoded["hashes"]) if n else np.zeros((0, dedup.hash_size ** 2), bool),
        "patients": np.array(["" if p is None else p for p in decoded["patients"]], dtype=str),
        "masks": np.stack(decoded["masks"]) if n else np.zeros((0, size, size), np.uint8),
        "has_mask": np.array(decoded["has_mask"], dtype=bool),
        "birads": np.array(decoded["birads"], dtype=np.int64),
        "unreadable": np.array(json.dumps(decoded["unreadable"])),
    }


def load_source(scan: SourceScan, spec: PreprocessSpec, dedup: DedupConfig = DedupConfig(),
                max_pixels: int = DEFAULT_MAX_PIXELS, cache: DecodeCache | None = None,
                region: RegionConfig = NO_REGION) -> dict:
    """Arrays of one source, from the decode cache when its files have not changed."""
    cache = cache if cache is not None else DecodeCache.default()
    settings = {"spec": spec.to_dict(), "dedup": asdict(dedup), "max_pixels": max_pixels}
    if region.mode != "off":     # whole images: the same key as before the finder existed
        settings["scan_region"] = region.to_dict()
        settings["colour_overlays"] = "refused inside the scan region"
    else:
        if region.colour_marks != "keep":
            settings["colour_marks"] = region.colour_marks
        if region.white_calipers != "keep":
            settings["white_calipers"] = region.white_calipers
    key = cache.key(scan, settings)
    arrays = cache.get(key)
    if arrays is None:
        arrays = _as_arrays(_decode_source(scan, spec, dedup, max_pixels, region), spec, dedup)
        cache.put(key, arrays)
    else:
        log.info("%s: %d decoded images from the cache", scan.source.name, len(arrays["labels"]))
    return arrays


def load_sources(sources: list[DataSource], spec: PreprocessSpec, dedup: DedupConfig = DedupConfig(),
                 max_pixels: int = DEFAULT_MAX_PIXELS, cache: DecodeCache | None = None,
                 region: RegionConfig = NO_REGION) -> LoadedDataset:
    """Read every labelled image of every source (cut to its scan region unless `region`
    is off); unreadable files and bad CSV rows are skipped and listed."""
    sources = unique_names(list(sources))
    parts, bad_rows, masks_skipped, unlabelled = [], [], 0, 0
    for source in sources:
        scan = read_source(source)
        bad_rows += [{"source": source.name, **row} for row in scan.bad_rows]
        masks_skipped += scan.masks_skipped
        unlabelled += scan.unlabelled
        if not scan.labelled:
            raise DatasetError(
                f"no labelled images found in {source.path}: expected class folders such as "
                f"{', '.join(sorted(source.labels.classes))}" if not source.is_csv else
                f"no usable rows in {source.path} ({len(scan.bad_rows)} bad rows)")
        arrays = load_source(scan, spec, dedup, max_pixels, cache, region)
        if len(arrays["labels"]) == 0:
            raise DatasetError(f"none of the {len(scan.labelled)} images of {source.path} could be read")
        parts.append((source, arrays))
    unreadable = [u for _, a in parts for u in json.loads(str(a["unreadable"]))]
    if unreadable:
        log.warning("skipped %d unreadable file(s):\n%s", len(unreadable),
                    "\n".join(f"  {u['source']}: {u['path']}: {u['reason']}" for u in unreadable[:20]))
    cat = lambda key: np.concatenate([a[key] for _, a in parts])  # noqa: E731
    return LoadedDataset(
        sources=sources,
        source_names=np.concatenate([np.full(len(a["labels"]), s.name, dtype=object) for s, a in parts]).astype(str),
        relative_paths=cat("relative").tolist(), class_names=cat("classes").tolist(), labels=cat("labels"),
        images=cat("images"), hashes=cat("hashes"),
        patients=[p or None for p in cat("patients").tolist()], masks=cat("masks"), has_mask=cat("has_mask"),
        birads=cat("birads"),
        unreadable=unreadable, bad_rows=bad_rows, masks_skipped=masks_skipped, unlabelled=unlabelled,
    )


def load_folder(root: str | Path, spec: PreprocessSpec, label_map: LabelMap | None = None,
                dedup: DedupConfig = DedupConfig(), max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedDataset:
    """One folder-per-class dataset (or a CSV index with the canonical columns)."""
    source = DataSource.parse(str(root), labels=label_map)
    return load_sources([source], spec, dedup, max_pixels)


def split_from_doc(doc: dict, data: LoadedDataset) -> dict[str, np.ndarray]:
    """Indices into `data` of a saved split.json (resume, and `bcd slim` reusing its
    parent's split)."""
    single = data.sources[0].name if len(data.sources) == 1 else None
    index = {key: i for i, key in enumerate(data.keys())}
    key = lambda f: (f.get("source", single), f["path"])  # noqa: E731
    missing = [f["path"] for s in doc["files"].values() for f in s if key(f) not in index]
    if missing:
        raise ValueError(f"{len(missing)} file(s) of the saved split are no longer readable, e.g. {missing[0]}")
    return {s: np.array([index[key(f)] for f in doc["files"][s]], dtype=int) for s in doc["files"]}


def load_saved_split(doc: dict, spec: PreprocessSpec, data_override: str | None = None,
                     class_labels: dict | None = None, dedup: DedupConfig = DedupConfig(),
                     region: RegionConfig = NO_REGION) -> tuple[LoadedDataset, dict]:
    """The data of a saved split.json (from the decode cache when possible) and its
    indices per split; `region`: the run's scan-region setting (train.config.run_scan_region)."""
    data = load_sources(sources_of_split(doc, data_override, class_labels), spec, dedup, region=region)
    return data, split_from_doc(doc, data)


def load_files(root: Path, relative_paths: list[str], spec: PreprocessSpec,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Resized uint8 images for a known list of files (e.g. a saved split)."""
    progress = Progress(len(relative_paths), "reading images")
    out = []
    for i, rel in enumerate(relative_paths, 1):
        path = Path(root) / rel
        try:
            out.append(resize(read_image(path, max_pixels=max_pixels), spec))
        except ImageReadError as err:
            raise ValueError(f"a file of the saved split cannot be read: {err}") from None
        progress.update(i)
    return np.stack(out)


def make_tf_dataset(images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec,
                    batch_size: int, training: bool, seed: int = 0,
                    augment: AugmentConfig | None = None, lesion: LesionTargets | None = None,
                    birads: BiradsTargets | None = None, roi=None, roi_share: float = 0.0,
                    pair: "PairViews | None" = None, free=None, free_share: float = 0.0,
                    no_lesion: np.ndarray | None = None):
    """A batched tf.data pipeline of (normalized float32 images, float32 labels).

    With `lesion` (the lesion head is on) it yields (images, {"malignancy": labels,
    "lesion": lesion maps}, {"malignancy": class weight, "lesion": 1 where a mask is
    known, else 0}); masks follow every geometric augmentation. With `birads` the
    targets and weights also hold "birads": the cumulative targets [BI-RADS >= k for k in
    BIRADS_CUTS], weighted 1 where the image's BI-RADS is known, else 0. With `roi`
    (train.roi_samples.RoiCrops) a share `roi_share` of the images that have a lesion is
    replaced, each time it is drawn, by one of its lesion-centred crops (and its mask).
    With `free` (RoiCrops of kind "free") a share `free_share` of the lesion images not
    shown as a lesion crop is replaced by one of its lesion-free crops, labelled benign,
    with an empty mask and no BI-RADS (the radiologist's category is the lesion's).
    With `pair` (training only) every batch of B images becomes 2B: the B augmented
    images, then the same B as a scanner's screen shows them (train.augment.ScreenView),
    with their labels, masks and weights repeated and a "pair" target (zeros) that the
    consistency loss reads as "the second half repeats the first".
    With `no_lesion` (the presence model, ModelConfig.presence: per image, True where it
    shows no lesion, such as a normal class) the targets also hold the probability's two
    factors: PRESENCE_LAYER, 0 for those images and for the lesion-free samples, else 1,
    on every image; CONDITIONAL_LAYER, the label, on the images with a lesion only."""
    from train.model import CONDITIONAL_LAYER, PRESENCE_LAYER
    from train.tf_setup import normalize_tensor, tf

    n = len(images)
    if lesion is None:
        masks, known = np.zeros((n, 1, 1), np.uint8), np.zeros(n, np.float32)
    else:
        masks, known = lesion.masks, lesion.has_mask.astype(np.float32)
    levels = birads.levels if birads is not None else np.zeros(n, np.int64)
    pair = pair if training else None
    auxiliary = lesion or birads or pair
    class_weights = auxiliary.class_weights if auxiliary is not None else None
    if no_lesion is not None and class_weights is None:
        class_weights = balanced_class_weights(labels) or {0: 1.0, 1: 1.0}
    absent = np.zeros(n, bool) if no_lesion is None else np.asarray(no_lesion, bool)
    cuts = tf.constant(BIRADS_CUTS, tf.int64)
    columns = (images, labels.astype(np.float32), masks, known, levels, absent)
    use_roi = training and roi is not None and roi_share > 0 and bool(roi.has.any())
    if use_roi:
        columns += (roi.images, roi.masks if lesion is not None else np.zeros((n, 1, 1, 1), np.uint8), roi.has)
    use_free = training and free is not None and free_share > 0 and bool(free.has.any())
    if use_free:
        columns += (free.images, free.has)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    open_marks = spec.thin_marks == "open"    # drawn calipers reach the model as the runtime's opening leaves them
    aug = build_augment(augment or AugmentConfig(), spec.image_size, seed, open_marks) if training else None
    mixup = (augment or AugmentConfig()).mixup if training else 0.0
    screen = build_screen_view(pair.view, spec.image_size, seed, open_marks) if pair is not None else None

    def lesion_crop(x, m, crops, crop_masks, has):
        """Swap a share of the batch for one of each image's lesion crops."""
        count = tf.shape(x)[0]
        pick = tf.random.uniform([count], 0, tf.shape(crops)[1], dtype=tf.int32)
        use = (tf.random.uniform([count]) < roi_share) & has
        crop = tf.gather(crops, pick, batch_dims=1)
        if lesion is not None:
            m = tf.where(use[:, None, None], tf.gather(crop_masks, pick, batch_dims=1), m)
        return tf.where(use[:, None, None, None], crop, x), m, use

    def lesion_free_crop(x, y, m, b, cropped, crops, has):
        """Swap a share of the rest of the batch for a lesion-free crop, labelled benign."""
        count = tf.shape(x)[0]
        pick = tf.random.uniform([count], 0, tf.shape(crops)[1], dtype=tf.int32)
        use = (tf.random.uniform([count]) < free_share) & has & tf.logical_not(cropped)
        x = tf.where(use[:, None, None, None], tf.gather(crops, pick, batch_dims=1), x)
        m = tf.where(use[:, None, None], tf.zeros_like(m), m)
        return x, tf.where(use, tf.zeros_like(y), y), m, tf.where(use, tf.zeros_like(b), b), cropped | use, use

    def to_input(x, y, m, k, b, a, *crop_columns):
        cropped = tf.zeros_like(y, tf.bool)
        if use_roi:
            x, m, cropped = lesion_crop(x, m, *crop_columns[:3])
        if use_free:
            x, y, m, b, cropped, freed = lesion_free_crop(x, y, m, b, cropped, *crop_columns[-2:])
            a = a | freed
        x = tf.cast(x, tf.float32)
        m = tf.cast(m, tf.float32)[..., None]
        if aug is not None:
            x, m = aug(x, m if lesion is not None else tf.zeros_like(x[..., :1]))
        if mixup:     # images and masks blended here; the targets below, with the same weights
            lam, other = mixup_weights(tf.shape(x)[0], mixup)
            x, m = blend(x, lam, other), blend(m, lam, other)
        if screen is not None:
            x2, m2 = screen(x, m, whole=tf.logical_not(cropped))
            x, m = tf.concat([x, x2], 0), tf.concat([m, m2], 0)
            y, k, b, a = tf.concat([y, y], 0), tf.concat([k, k], 0), tf.concat([b, b], 0), tf.concat([a, a], 0)
            if mixup:     # the screen views blend as their plain views did
                lam, other = tf.concat([lam, lam], 0), tf.concat([other, other + tf.size(other)], 0)
        x = normalize_tensor(x, spec)
        soft = (lambda t: blend(t, lam, other)) if mixup else (lambda t: t)  # noqa: E731
        if class_weights is None:
            return x, soft(y)
        targets = {"malignancy": soft(y)}
        weights = {"malignancy": tf.where(y > 0.5, class_weights[1], class_weights[0])}   # the image's own class
        both_known = (lambda w: w * tf.gather(w, other)) if mixup else (lambda w: w)  # noqa: E731
        if lesion is not None:
            targets["lesion"] = tf.nn.avg_pool2d(m, lesion.cell, lesion.cell, "VALID")  # lesion share of each map cell
            k = both_known(k)
            weights["lesion"] = k if lesion.per_sample_weight else k[:, None, None]   # per image, or per map cell
        if birads is not None:
            targets["birads"] = soft(tf.cast(b[:, None] >= cuts[None, :], tf.float32))
            weights["birads"] = both_known(tf.cast(b > 0, tf.float32))
        if screen is not None:
            targets[PAIR_OUTPUT], weights[PAIR_OUTPUT] = tf.zeros_like(y), tf.ones_like(y)
        if no_lesion is not None:
            lesioned = 1.0 - tf.cast(a, tf.float32)
            targets[CONDITIONAL_LAYER] = targets["malignancy"]
            weights[CONDITIONAL_LAYER] = weights["malignancy"] * both_known(lesioned)
            targets[PRESENCE_LAYER], weights[PRESENCE_LAYER] = soft(lesioned), tf.ones_like(lesioned)
        return x, targets, weights

    return ds.map(to_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


@dataclass
class LesionTargets:
    """Masks for the auxiliary lesion head: (n, size, size) 0/1 and whether each image's
    mask is known (an image without a lesion, such as BUSI's normal class, has a known
    empty mask). `cell`: input pixels per lesion-map cell (16 for VGG16's block5)."""

    masks: np.ndarray
    has_mask: np.ndarray
    class_weights: dict[int, float]
    cell: int = 16
    per_sample_weight: bool = False     # the lesion loss gives one value per image (Grad-CAM loss)


# The ordinal BI-RADS head predicts P(BI-RADS >= k) for each cut: 3 (not benign-appearing),
# 4 (suspicious: the biopsy threshold), 5 (highly suggestive of malignancy).
BIRADS_CUTS = (3, 4, 5)


@dataclass
class BiradsTargets:
    """The radiologists' BI-RADS category per image (0 where unknown: such images add
    nothing to the BI-RADS loss) for the auxiliary ordinal head."""

    levels: np.ndarray
    class_weights: dict[int, float]


@dataclass
class PairViews:
    """Consistency pairs (TrainConfig.consistency): how the second view of each image is
    made, and the class weights of the classifier's loss (which then takes sample weights)."""

    view: ScreenView
    class_weights: dict[int, float]


# The training-only output that repeats the classifier's; the consistency loss reads it.
PAIR_OUTPUT = "pair"


def to_model_input(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 resized images -> normalized float32 batch (no augmentation)."""
    return normalize(images.astype(np.float32), spec).astype(np.float32)


def balanced_class_weights(labels: np.ndarray) -> dict[int, float] | None:
    """Keras class weights that give both classes equal total weight; None when a class
    is missing (no weighting can balance it)."""
    counts = np.bincount(np.asarray(labels).astype(int), minlength=2)
    if counts.min() == 0:
        return None
    return {c: float(len(labels) / (2 * counts[c])) for c in (0, 1)}
