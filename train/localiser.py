"""`bcd localiser RUN`: train the lesion localiser (issue 21) on a finished run's data.

A small fully convolutional network (a compact U-Net: a stride-2 stem, `levels` encoder
levels of two 3x3 conv + batch norm + ReLU, bilinear upsampling with skip connections)
maps the classifier's own input (the image cut to its scan region, prepared by
runtime.preprocessing at the run's image size) to a lesion probability map at
1/`output_stride` of that size. It is separate from the classifier, whose export chain
stays untouched, and ships as its own ONNX file (export/localiser.py).

Data: the run's saved split (split.json) over the run's sources, read as `bcd slim` and
`bcd export` read them (train.data.load_saved_split, from the decode cache). It learns
from the TRAINING split only; the validation split picks the best epoch and the map
threshold of the proposed box (runtime.lesion_scores.choose_threshold); the test split
is scored once, at the end. Images without a lesion (BUSI's "normal" class: an empty
mask) are learnt as "no lesion", a map with nothing above the threshold. Images whose
source has no mask are left out.

Loss: binary cross-entropy + Dice (over the batch, so a batch of lesion-free images has
a defined Dice term) against the lesion share of each map cell. Augmentation: left-right
flips, small zooms and shifts (train.augment; the mask follows), gain and contrast.
Mixed bfloat16 where the CPU computes it natively (train.precision); the saved model is
float32. Checkpoint every epoch (checkpoint/last.keras + state.json) for --resume.

Output (default RUN/localiser/): localiser.keras (float32), metrics.json and metrics.md
(the box figures per source on the validation and test splits), history.json, train.log.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.host import DISCLAIMER, tool_record
from runtime.roi import PROPOSAL_MARGIN
from runtime.lesion_scores import THRESHOLDS, choose_threshold, score_map, summary_by
from runtime.localiser import map_to_image
from runtime.model_files import sha256_file
from runtime.preprocessing import PreprocessSpec, normalize
from train.augment import AugmentConfig, build_augment
from train.config import run_scan_region
from train.data import LoadedDataset, load_saved_split
from train.dedup import DedupConfig
from train.precision import apply_precision, resolve_precision
from train.run_dir import RunDir
from train.slim import open_parent
from train.tf_setup import keras, normalize_tensor, tf

log = logging.getLogger(__name__)

LOCALISER_DIR = "localiser"      # inside the run directory, unless --out says otherwise
LOG_NAME = "train.log"
OUTPUT_NAME = "lesion"
INPUT_NAME = "image"


# roi.ROI_MIN_SIDE (16 px) is a floor in the original image's pixels (~500 px a side
# here); on the model's 128 px input it would be ~4 px, below any box a map gives: the
# figures at the input size apply none.
MIN_SIDE_AT_INPUT = 0
# Each epoch is judged at its own best map threshold among these (coarser than the final
# choice's runtime.lesion_scores.THRESHOLDS: it runs every epoch).
EPOCH_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class LocaliserError(ValueError):
    """The localiser cannot be trained on this run (no masks, no lesions, ...)."""


@dataclass(frozen=True)
class LocaliserConfig:
    run: str                         # finished run directory (its split.json and data)
    out: str | None = None           # default: RUN/localiser
    data: str | None = None          # where the run's dataset lives now, if it moved
    epochs: int = 20
    patience: int = 8                # early stopping: epochs without a gain in lesions found on val
    batch_size: int = 16
    learning_rate: float = 2e-3      # Adam, cosine decay to min_learning_rate over `epochs`
    min_learning_rate: float = 2e-5
    base_filters: int = 16           # filters of the first level; doubled per level
    levels: int = 4                  # encoder levels (output_stride 2, 128 px input: 64 -> 8 px at the bottom)
    output_stride: int = 2           # the lesion map is 1/output_stride of the input (1, 2 or 4)
    dice_weight: float = 1.0         # loss = BCE + dice_weight * (1 - soft Dice)
    flip: bool = True                # left-right only: the probe is at the top
    zoom: float = 0.10
    translate: float = 0.06
    brightness: float = 0.10
    contrast: float = 0.20
    margin: float = PROPOSAL_MARGIN  # the proposed box's margin: roi="auto"'s (runtime.roi), none
    precision: str = "auto"          # auto | float32 | bfloat16 (train.precision)
    seed: int = 0
    max_minutes: float | None = None  # stop after the epoch that passes this wall time

    RESUMABLE_CHANGES = ("out", "data", "epochs", "patience", "max_minutes")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError("epochs, patience and batch size must be at least 1")
        if self.base_filters < 4 or not 2 <= self.levels <= 6:
            raise ValueError("base filters must be at least 4 and levels between 2 and 6")
        if self.output_stride not in (1, 2, 4):
            raise ValueError(f"output stride must be 1, 2 or 4, got {self.output_stride}")
        if self.learning_rate <= 0 or self.min_learning_rate <= 0 or self.dice_weight < 0:
            raise ValueError("learning rates must be positive and the Dice weight not negative")
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"margin must be a share in 0..1, got {self.margin}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError("max minutes must be positive")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, got {self.precision!r}")

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(flip=self.flip, rotation_degrees=0.0, zoom=self.zoom, translate=self.translate,
                             brightness=self.brightness, contrast=self.contrast)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LocaliserDir:
    """Where things live in a localiser directory."""

    root: Path

    @classmethod
    def of(cls, config: LocaliserConfig) -> "LocaliserDir":
        return cls(Path(config.out) if config.out else Path(config.run) / LOCALISER_DIR)

    @property
    def model(self) -> Path:            # float32, best epoch by lesions found on val
        return self.root / "localiser.keras"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def metrics_md(self) -> Path:
        return self.root / "metrics.md"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def log(self) -> Path:
        return self.root / LOG_NAME

    @property
    def last(self) -> Path:             # every epoch, with optimizer state, for --resume
        return self.root / "checkpoint" / "last.keras"

    @property
    def best(self) -> Path:             # the best epoch's weights while training
        return self.root / "checkpoint" / "best.h5"

    @property
    def state(self) -> Path:
        return self.root / "checkpoint" / "state.json"

    @property
    def finished(self) -> bool:
        return self.model.is_file() and self.metrics.is_file()


# --------------------------------------------------------------------------- the network

def build_localiser(image_size: int, base_filters: int = 16, levels: int = 4, output_stride: int = 2):
    """The compact U-Net: (batch, s, s, 3) prepared images -> (batch, s/stride, s/stride, 1)
    lesion probabilities. The last layers are float32 under a mixed policy."""
    layers = keras.layers
    bottom = output_stride * 2 ** (levels - 1)
    if image_size % bottom:
        raise ValueError(f"image size {image_size} is not a multiple of {bottom} ({levels} levels, "
                         f"output stride {output_stride})")

    def block(x, filters: int, name: str, stride: int = 1):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    image = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = block(image, base_filters, "stem", stride=2 if output_stride >= 2 else 1)
    if output_stride == 4:
        x = layers.MaxPool2D(name="stem_pool")(x)
    skips = []
    for level in range(levels):
        filters = base_filters * 2 ** level
        if level:
            x = layers.MaxPool2D(name=f"down{level}_pool")(x)
        x = block(x, filters, f"down{level}_a")
        x = block(x, filters, f"down{level}_b")
        skips.append(x)
    for level in reversed(range(levels - 1)):
        filters = base_filters * 2 ** level
        x = layers.UpSampling2D(interpolation="bilinear", name=f"up{level}_resize")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = block(x, filters, f"up{level}_a")
        x = block(x, filters, f"up{level}_b")
    logits = layers.Conv2D(1, 1, name="logits", dtype="float32")(x)
    lesion = layers.Activation("sigmoid", dtype="float32", name=OUTPUT_NAME)(logits)
    return keras.Model(image, lesion, name="localiser")


@keras.utils.register_keras_serializable(package="bcd")
class BceDice(keras.losses.Loss):
    """Binary cross-entropy per map cell + `dice_weight` x (1 - soft Dice over the batch)."""

    def __init__(self, dice_weight: float = 1.0, name: str = "bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-6, 1.0 - 1e-6)
        bce = -tf.reduce_mean(y_true * tf.math.log(y_pred) + (1.0 - y_true) * tf.math.log(1.0 - y_pred))
        overlap = tf.reduce_sum(y_true * y_pred)
        dice = (2.0 * overlap + 1.0) / (tf.reduce_sum(y_true) + tf.reduce_sum(y_pred) + 1.0)
        return bce + self.dice_weight * (1.0 - dice)

    def get_config(self) -> dict:
        return {**super().get_config(), "dice_weight": self.dice_weight}


def float32_copy(model, config: LocaliserConfig, image_size: int):
    """The same network with every layer float32 (what is saved and exported)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        plain = build_localiser(image_size, config.base_filters, config.levels, config.output_stride)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    plain.set_weights(model.get_weights())
    return plain


# --------------------------------------------------------------------------- data

@dataclass
class Part:
    """The images of one split that have a mask: uint8 crops, 0/1 masks, sources."""

    images: np.ndarray
    masks: np.ndarray
    sources: np.ndarray

    @classmethod
    def of(cls, data: LoadedDataset, index: np.ndarray) -> "Part":
        keep = np.asarray(index, dtype=int)
        keep = keep[data.has_mask[keep]]
        return cls(data.images[keep], data.masks[keep], data.source_names[keep])

    def __len__(self) -> int:
        return len(self.images)

    @property
    def lesions(self) -> int:
        return int((self.masks.reshape(len(self), -1).max(axis=1) > 0).sum()) if len(self) else 0

    def describe(self) -> dict:
        out = {}
        for source in sorted(set(self.sources.tolist())):
            sel = self.sources == source
            sub = Part(self.images[sel], self.masks[sel], self.sources[sel])
            out[source] = {"images": len(sub), "lesion_images": sub.lesions}
        return out


def load_run_data(config: LocaliserConfig, info: dict, split_doc: dict,
                  spec: PreprocessSpec) -> tuple[LoadedDataset, dict[str, np.ndarray]]:
    """The run's images and split, the way `bcd slim` reads them (same cache key)."""
    dedup = DedupConfig(max_distance=(info.get("config") or {}).get("dedup_max_distance", DedupConfig().max_distance))
    try:
        return load_saved_split(split_doc, spec, config.data, info["labels"]["class_labels"], dedup,
                                region=run_scan_region(info))
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(f"the run's data cannot be read ({err}): pass --data DIR if it moved") from None


def training_dataset(part: Part, spec: PreprocessSpec, config: LocaliserConfig):
    """Batches of (prepared images, lesion share of each map cell), augmented, reshuffled
    every epoch."""
    augment = build_augment(config.augment, spec.image_size, config.seed)
    stride = config.output_stride
    ds = tf.data.Dataset.from_tensor_slices((part.images, part.masks))
    ds = ds.shuffle(len(part), seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)

    def prepared(x, m):
        x, m = augment(tf.cast(x, tf.float32), tf.cast(m, tf.float32)[..., None])
        target = tf.nn.avg_pool2d(m, stride, stride, "VALID") if stride > 1 else m
        return normalize_tensor(x, spec), target

    return ds.map(prepared, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def predict_maps(model, images: np.ndarray, spec: PreprocessSpec, batch_size: int = 64) -> np.ndarray:
    """(n, h, w) lesion maps at the network's output size."""
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size].astype(np.float32), spec).astype(np.float32)
        out.append(np.asarray(model(x, training=False), dtype=np.float32)[..., 0])
    return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)


def maps_at_mask_size(raw: np.ndarray, masks: np.ndarray) -> list[np.ndarray]:
    """Each map brought to its mask's size, as the runtime brings it to the image's."""
    return [map_to_image(r, *m.shape[:2]) for r, m in zip(raw, masks)]


def figures(maps: list[np.ndarray], part: Part, threshold: float, margin: float) -> dict:
    """The box figures per source (runtime.lesion_scores.summary_by) at one threshold."""
    scores = [score_map(m, k, threshold, margin, MIN_SIDE_AT_INPUT) for m, k in zip(maps, part.masks)]
    return summary_by(scores, part.sources.tolist())


# --------------------------------------------------------------------------- training

class _Progress(keras.callbacks.Callback):
    """A line every `every` batches: long epochs on a shared 2-core PC show they move."""

    def __init__(self, epoch: int, epochs: int, steps: int, every: int = 25):
        super().__init__()
        self.epoch, self.epochs, self.steps, self.every = epoch, epochs, steps, every
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        done = batch + 1
        if done % self.every == 0 and done < self.steps:
            log.info("  epoch %d/%d: batch %d/%d, loss %.4f (%.0fs)", self.epoch, self.epochs, done, self.steps,
                     float((logs or {}).get("loss", float("nan"))), time.monotonic() - self.start)


def _cosine(config: LocaliserConfig, epoch: int) -> float:
    done = min(epoch, config.epochs - 1) / max(config.epochs - 1, 1)
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * 0.5 * (1 + math.cos(math.pi * done))


def _new_state(config: LocaliserConfig) -> dict:
    return {"config": config.to_dict(), "epochs_done": 0, "best_found": -1.0, "best_epoch": 0, "wait": 0,
            "seconds": 0.0, "history": {}}


def _resumed_state(out: LocaliserDir, config: LocaliserConfig) -> dict:
    if not out.state.is_file() or not out.last.is_file():
        raise LocaliserError(f"nothing to resume in {out.root}: no checkpoint/state.json (start without --resume)")
    state = json.loads(out.state.read_text())
    saved = state["config"]
    changed = [f.name for f in fields(LocaliserConfig)
               if f.name not in LocaliserConfig.RESUMABLE_CHANGES and saved.get(f.name) != getattr(config, f.name)]
    if changed:
        raise LocaliserError(f"--resume with other settings than the interrupted training ({', '.join(changed)}); "
                             "resume with the same ones, or train into another --out")
    return state


def _compiled(model, config: LocaliserConfig):
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=BceDice(config.dice_weight))
    return model


@dataclass(frozen=True)
class Provenance:
    """Where a localiser's images came from (recorded in metrics.json and the manifest)."""

    source_run: str
    split_sha256: str | None
    scan_region: dict


def train_localiser(config: LocaliserConfig, resume: bool = False) -> LocaliserDir:
    """Train on a finished run's training split, choose the threshold on val, score val
    and test; see the module docstring."""
    run, info, split_doc = open_parent(config.run)
    out = LocaliserDir.of(config)
    if out.finished and not resume:
        raise LocaliserError(f"{out.root} already holds a trained localiser; choose another --out "
                             "(or remove it to train again)")
    if resume:
        _resumed_state(out, config)     # refuse a resume that cannot work before reading the data
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    data, index = load_run_data(config, info, split_doc, spec)
    train, val, test = (Part.of(data, index.get(name, np.zeros(0, int))) for name in ("train", "val", "test"))
    _check_parts(run, train, val)
    log.info("localiser for run %s: %d training images (%d with a lesion), %d validation, %d test; %d px input, "
             "map 1/%d", run.root.name, len(train), train.lesions, len(val), len(test), spec.image_size,
             config.output_stride)
    provenance = Provenance(run.root.name, sha256_file(run.split), run_scan_region(info).to_dict())
    return fit_localiser(config, out, train, val, test, spec, provenance, resume)


def fit_localiser(config: LocaliserConfig, out: LocaliserDir, train: Part, val: Part, test: Part,
                  spec: PreprocessSpec, provenance: Provenance, resume: bool = False) -> LocaliserDir:
    """The training itself, on images already in memory (uint8 crops at spec's size)."""
    started = time.monotonic()
    state = _resumed_state(out, config) if resume else _new_state(config)
    precision = resolve_precision(config.precision)
    apply_precision(precision)
    try:
        if resume:
            model = keras.models.load_model(out.last, custom_objects={"BceDice": BceDice})
            log.info("resuming after epoch %d (best so far: epoch %d)", state["epochs_done"], state["best_epoch"])
        else:
            model = _compiled(build_localiser(spec.image_size, config.base_filters, config.levels,
                                              config.output_stride), config)
        log.info("network: %d parameters, %s precision", model.count_params(), precision)
        _fit(model, config, out, state, train, val, spec, started)
        plain = float32_copy(model, config, spec.image_size)
    finally:
        apply_precision("float32")
    plain.load_weights(out.best)
    with atomic.atomic_path(out.model) as tmp:
        plain.save(tmp)
    _final_figures(plain, config, out, state, provenance, spec, train, val, test, precision)
    return out


def rescore_localiser(config: LocaliserConfig) -> LocaliserDir:
    """No training: choose the map threshold again on the validation split and score
    val and test, with the trained model and `config.margin` (after a change of the box
    rule). Everything else stays as trained; metrics.json records the new choice."""
    run, info, split_doc = open_parent(config.run)
    out = LocaliserDir.of(config)
    spec = PreprocessSpec.from_dict(read_metrics(out.root)["preprocessing"])
    data, index = load_run_data(config, info, split_doc, spec)
    train, val, test = (Part.of(data, index.get(name, np.zeros(0, int))) for name in ("train", "val", "test"))
    _check_parts(run, train, val)
    provenance = Provenance(run.root.name, sha256_file(run.split), run_scan_region(info).to_dict())
    return rescore(out, config.margin, train, val, test, spec, provenance)


def rescore(out: LocaliserDir, margin: float, train: Part, val: Part, test: Part, spec: PreprocessSpec,
            provenance: Provenance) -> LocaliserDir:
    """rescore_localiser on images already in memory."""
    trained = read_metrics(out.root)
    state = json.loads(out.state.read_text()) if out.state.is_file() else {}
    settings = LocaliserConfig(**{**trained["config"], "margin": margin})
    state = {**state, "best_epoch": trained["best_epoch"], "epochs_done": trained["epochs_trained"],
             "stopped": trained["stopped"], "seconds": trained["training_seconds"], "history": state.get("history", {})}
    model = keras.models.load_model(out.model, compile=False)
    log.info("choosing the map threshold again with a %.0f%% box margin (was %.0f%%, threshold %.2f)",
             100 * margin, 100 * trained["margin"], trained["threshold"])
    _final_figures(model, settings, out, state, provenance, spec, train, val, test, trained["precision"])
    return out


def _check_parts(run: RunDir, train: Part, val: Part) -> None:
    if not len(train):
        raise LocaliserError(f"the training split of {run.root} has no images with a lesion mask: a localiser learns "
                             "from masks (BUSI's <name>_mask.png, BUS-BRA's Masks/; a CSV index needs a mask column)")
    if not train.lesions:
        raise LocaliserError(f"every lesion mask of {run.root}'s training split is empty: nothing to localise")
    if not val.lesions:
        raise LocaliserError(f"the validation split of {run.root} has no lesion masks: the threshold and the best "
                             "epoch are chosen on them")


def _fit(model, config: LocaliserConfig, out: LocaliserDir, state: dict, train: Part, val: Part,
         spec: PreprocessSpec, started: float) -> None:
    dataset = training_dataset(train, spec, config)
    steps = math.ceil(len(train) / config.batch_size)
    history = state["history"]
    budget = None if config.max_minutes is None else config.max_minutes * 60.0
    already = float(state.get("seconds", 0.0))
    for epoch in range(state["epochs_done"], config.epochs):
        t0 = time.monotonic()
        keras.backend.set_value(model.optimizer.learning_rate, _cosine(config, epoch))
        result = model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                           callbacks=[_Progress(epoch + 1, config.epochs, steps)])
        fit_seconds = time.monotonic() - t0
        maps = maps_at_mask_size(predict_maps(model, val.images, spec), val.masks)
        threshold, table = choose_threshold(maps, val.masks, val.sources.tolist(), EPOCH_THRESHOLDS, config.margin,
                                            MIN_SIDE_AT_INPUT)
        best_row = next(r for r in table if r["threshold"] == threshold)
        seconds = time.monotonic() - t0
        for key, value in (("loss", float(result.history["loss"][-1])), ("val_found", best_row["found"]),
                           ("val_mean_iou", best_row["mean_iou"]), ("val_threshold", threshold),
                           ("learning_rate", _cosine(config, epoch)), ("seconds", round(seconds, 1))):
            history.setdefault(key, []).append(value)
        improved = best_row["found"] > state["best_found"] + 1e-6
        if improved:
            state.update(best_found=best_row["found"], best_epoch=epoch + 1, wait=0)
            with atomic.atomic_path(out.best) as tmp:
                model.save_weights(tmp)
        else:
            state["wait"] += 1
        state.update(epochs_done=epoch + 1, seconds=already + time.monotonic() - started)
        with atomic.atomic_path(out.last) as tmp:
            model.save(tmp)
        atomic.write_json(out.state, state)
        log.info("epoch %d/%d: loss %.4f; validation: %.1f%% of lesions found (box IoU >= 0.5, mean over sources), "
                 "mean IoU %.3f at map threshold %.2f%s (%.0fs, %.0fs of them training)", epoch + 1, config.epochs,
                 history["loss"][-1], 100 * best_row["found"], best_row["mean_iou"], threshold,
                 " *best*" if improved else "", seconds, fit_seconds)
        if state["wait"] >= config.patience:
            log.info("no gain for %d epochs: stopping early", config.patience)
            state["stopped"] = "early stopping"
            break
        if budget is not None and time.monotonic() - started >= budget:
            log.info("time budget of %g minutes reached: stopping", config.max_minutes)
            state["stopped"] = "time budget"
            break
    else:
        state["stopped"] = "all epochs"
    atomic.write_json(out.state, state)


def _final_figures(model, config: LocaliserConfig, out: LocaliserDir, state: dict, provenance: Provenance,
                   spec: PreprocessSpec, train: Part, val: Part, test: Part, precision: str) -> None:
    """The threshold chosen on val with the best epoch's float32 model, then the figures
    of val and (once, here) test."""
    val_maps = maps_at_mask_size(predict_maps(model, val.images, spec), val.masks)
    threshold, table = choose_threshold(val_maps, val.masks, val.sources.tolist(), THRESHOLDS, config.margin,
                                        MIN_SIDE_AT_INPUT)
    result = {"val": figures(val_maps, val, threshold, config.margin)}
    if len(test):
        test_maps = maps_at_mask_size(predict_maps(model, test.images, spec), test.masks)
        result["test"] = figures(test_maps, test, threshold, config.margin)
    raw = predict_maps(model, val.images[:1], spec)
    doc = {
        "tool": tool_record(),
        "source_run": provenance.source_run,
        "split_sha256": provenance.split_sha256,
        "config": config.to_dict(),
        "preprocessing": spec.to_dict(),
        "scan_region": dict(provenance.scan_region),
        "output_size": list(raw.shape[1:]),
        "params": int(model.count_params()),
        "precision": precision,
        "threshold": threshold,
        "margin": config.margin,
        "threshold_chosen_on": "validation split (best share of lesions found, mean over sources)",
        "threshold_table": table,
        "best_epoch": state["best_epoch"],
        "epochs_trained": state["epochs_done"],
        "stopped": state.get("stopped"),
        "training_seconds": round(float(state.get("seconds", 0.0)), 1),
        "data": {"train": train.describe(), "val": val.describe(), "test": test.describe()},
        "figures": result,
        "figures_note": ("Keras, float32, on the run's images as training reads them (cut to the scan region, "
                         f"{spec.image_size} px); boxes vs the mask's box at that size"),
    }
    atomic.write_json(out.metrics, doc)
    atomic.write_json(out.history, state["history"])
    atomic.write_text(out.metrics_md, metrics_markdown(doc))
    log.info("threshold %.2f chosen on the validation split\n%s", threshold, metrics_markdown(doc))


def metrics_markdown(doc: dict) -> str:
    """metrics.md: the box figures per split and source."""
    lines = [f"# Lesion localiser of run {doc['source_run']}", "",
             f"Map threshold {doc['threshold']:.2f} (chosen on the {doc['threshold_chosen_on']}), box margin "
             f"{doc['margin']:.0%} per side; best epoch {doc['best_epoch']} of {doc['epochs_trained']}; "
             f"{doc['params']:,} parameters; {doc['figures_note']}.", "",
             figures_table(doc["figures"]), "", DISCLAIMER]
    return "\n".join(lines) + "\n"


def figures_table(result: dict) -> str:
    """A Markdown table of {split: {source: summary}}."""
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    num = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| split | source | lesion images | IoU ≥ 0.5 | centre inside | mean IoU | no box | "
             "box on a lesion-free image |", "|---|---|---|---|---|---|---|---|"]
    for split, per in result.items():
        for source, r in per.items():
            lines.append(f"| {split} | {source} | {r['lesion_images']} | {pct(r['found'])} | "
                         f"{pct(r['centre_inside'])} | {num(r['mean_iou'])} | {pct(r['no_box'])} | "
                         f"{pct(r['box_without_lesion'])} of {r['images_without_lesion']} |")
    return "\n".join(lines)


def read_metrics(localiser_dir: str | Path) -> dict:
    """metrics.json of a trained localiser; LocaliserError when it is not one."""
    out = LocaliserDir(Path(localiser_dir))
    if not out.finished:
        raise LocaliserError(f"{out.root}: no trained localiser (localiser.keras and metrics.json); train it first "
                             "with `bcd localiser RUN`")
    return json.loads(out.metrics.read_text())
