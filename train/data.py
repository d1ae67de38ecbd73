"""Load a labelled image folder into memory and feed it to Keras.

Images are decoded once (runtime.images), hashed for near-duplicate grouping at full
resolution, then resized with the shared preprocessing and kept as uint8. Augmentation
runs on 0..255 pixels in tf.data; `runtime.preprocessing.normalize` runs last, the same
function the runtime applies at inference.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.dataset import LabelMap, scan_folder
from runtime.images import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from runtime.preprocessing import PreprocessSpec, normalize, resize
from runtime.progress import Progress
from train.dedup import DedupConfig, image_hash

log = logging.getLogger(__name__)


@dataclass
class LoadedDataset:
    root: Path
    relative_paths: list[str]
    class_names: list[str]
    labels: np.ndarray            # (n,) int 0/1
    images: np.ndarray            # (n, size, size, 3) uint8 BGR, already resized
    hashes: np.ndarray            # (n, bits) bool perceptual hashes of the full images
    unreadable: list[dict] = field(default_factory=list)   # {"path", "reason"}
    masks_skipped: int = 0
    unlabelled: int = 0

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "images": len(self.labels),
            "benign": int((self.labels == 0).sum()),
            "malignant": int((self.labels == 1).sum()),
            "per_class_folder": {c: self.class_names.count(c) for c in sorted(set(self.class_names))},
            "masks_skipped": self.masks_skipped,
            "unlabelled_skipped": self.unlabelled,
            "unreadable_skipped": len(self.unreadable),
        }


def load_folder(
    root: str | Path,
    spec: PreprocessSpec,
    label_map: LabelMap | None = None,
    dedup: DedupConfig = DedupConfig(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedDataset:
    """Read every labelled image below `root`; unreadable files are skipped and listed."""
    root = Path(root)
    scan = scan_folder(root, label_map)
    entries = scan.labelled
    if not entries:
        raise ValueError(
            f"no labelled images found in {root}: expected class folders such as "
            f"{', '.join(sorted((label_map or LabelMap()).classes))}"
        )
    paths, classes, labels, images, hashes, unreadable = [], [], [], [], [], []
    progress = Progress(len(entries), f"reading images from {root}")
    for i, entry in enumerate(entries, 1):
        try:
            full = read_image(entry.path, max_pixels=max_pixels)
        except ImageReadError as err:
            unreadable.append({"path": entry.path.relative_to(root).as_posix(), "reason": str(err)})
        else:
            paths.append(entry.path.relative_to(root).as_posix())
            classes.append(entry.class_name)
            labels.append(entry.label)
            images.append(resize(full, spec))
            hashes.append(image_hash(full, dedup))
        progress.update(i)
    if unreadable:
        log.warning(
            "skipped %d unreadable file(s):\n%s", len(unreadable),
            "\n".join(f"  {u['path']}: {u['reason']}" for u in unreadable),
        )
    if not paths:
        raise ValueError(f"none of the {len(entries)} images in {root} could be read")
    return LoadedDataset(
        root=root, relative_paths=paths, class_names=classes,
        labels=np.array(labels, dtype=np.int64), images=np.stack(images),
        hashes=np.stack(hashes), unreadable=unreadable,
        masks_skipped=scan.masks_skipped, unlabelled=len(scan.unlabelled),
    )


def load_files(root: Path, relative_paths: list[str], spec: PreprocessSpec,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Resized uint8 images for a known list of files (e.g. a saved split)."""
    progress = Progress(len(relative_paths), "reading images")
    out = []
    for i, rel in enumerate(relative_paths, 1):
        path = root / rel
        try:
            out.append(resize(read_image(path, max_pixels=max_pixels), spec))
        except ImageReadError as err:
            raise ValueError(f"a file of the saved split cannot be read: {err}") from None
        progress.update(i)
    return np.stack(out)


@dataclass(frozen=True)
class AugmentConfig:
    """Ultrasound-plausible augmentation: the probe sits at the top of the image, so
    only left-right flips; small rotations and zoom; gain (brightness) and contrast,
    which vary between scanners and operators."""

    flip: bool = True
    rotation_degrees: float = 10.0
    zoom: float = 0.10
    brightness: float = 0.10
    contrast: float = 0.20


def augmenter(config: AugmentConfig, seed: int):
    from train.tf_setup import keras

    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation_degrees:
        layers.append(keras.layers.RandomRotation(config.rotation_degrees / 360, fill_mode="reflect", seed=seed + 1))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2))
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed + 3))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, seed=seed + 4))
    return keras.Sequential(layers, name="augment")


def make_tf_dataset(images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec,
                    batch_size: int, training: bool, seed: int = 0,
                    augment: AugmentConfig | None = None):
    """A batched tf.data pipeline of (normalized float32 images, float32 labels)."""
    from train.tf_setup import tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    aug = augmenter(augment or AugmentConfig(), seed) if training else None

    def to_input(x, y):
        x = tf.cast(x, tf.float32)
        if aug is not None:
            x = tf.clip_by_value(aug(x, training=True), 0.0, 255.0)
        return normalize(x, spec), y

    return ds.map(to_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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
