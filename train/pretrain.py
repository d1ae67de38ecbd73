"""`bcd pretrain`: self-supervised pretraining of the conv base on unlabelled scans
(issue 22, item 5), as an initialisation for `bcd train --weights RUN`.

The project's models learn from scratch (no ImageNet weights offline), on about 2000
labelled images. Contrastive learning (SimCLR: Chen et al., ICML 2020) lets the conv
base first learn from the images alone: two random views of each scan (a crop of
35-100 % of it, then the training augmentation with fans, calipers, marks, gain,
speckle and blur) must map close together and away from every other scan of the batch
(the NT-Xent loss on a small projection head). What the views differ in is what the
features learn to ignore: scanner looks, probe fans and marks, which is what an unseen
hospital changes.

The labels are not read for learning. They give one figure per epoch that says whether
the features separate the classes at all: the leave-one-out AUC of a k-nearest-neighbour
vote on the features of up to PROBE_IMAGES scans (a monitor; no epoch is chosen on it).

The run directory holds model.keras, the classifier `bcd train` builds (batch norms
folded into the convs, as every saved model) with the pretrained conv base and an
untrained head; run.json (kind "pretrain", the input settings a fine-tuned run inherits),
history.json, plots/pretrain_curves.png, pretrain.log, and a checkpoint per epoch for
--resume. For an honest held-out-hospital estimate, pretrain without that hospital's
images; they are what it is meant not to have seen.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.host import tool_record
from runtime.preprocessing import PreprocessSpec, normalize
from train.augment import AugmentConfig, build_augment
from train.config import ContrastiveConfig, TrainConfig
from train.model import ModelConfig, build_model, inference_model
from train.plots import plot_history
from train.precision import apply_precision, resolve_precision
from train.run_dir import PRETRAIN_KIND, RunDir
from train.tf_setup import keras, normalize_tensor, tf

log = logging.getLogger(__name__)

LOG_NAME = "pretrain.log"
PROBE_IMAGES = 600        # scans whose features the per-epoch kNN monitor reads
PROBE_NEIGHBOURS = 20
# The TrainConfig fields a pretraining uses (its images, how they are read, the model's shape);
# run.json records these only, so that none of bcd train's schedule seems to apply
DATA_FIELDS = ("data", "class_labels", "dedup_max_distance", "image_size", "batch_norm", "width", "seed",
               "precision", "augment", "scan_region", "colour_marks", "white_calipers", "thin_marks",
               "grey_map")


def nt_xent(z, temperature: float):
    """SimCLR's loss on (2B, d) embeddings whose rows i and i+B are two views of one scan:
    cross-entropy of each row's similarities (cosine / temperature, itself excluded)
    with its other view as the class."""
    z = tf.math.l2_normalize(tf.cast(z, tf.float32), axis=1)
    n = tf.shape(z)[0]
    half = n // 2
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    logits = logits - tf.eye(n) * 1e9
    positives = tf.concat([tf.range(half, n), tf.range(0, half)], axis=0)
    loss = tf.keras.losses.sparse_categorical_crossentropy(positives, logits, from_logits=True)
    return tf.reduce_mean(loss)


def random_crops(images, masks, min_crop: float):
    """Each image (and its mask) cut to a random box of min_crop..1 of its area, aspect
    3/4..4/3, and resized back to the input size."""
    n, size = tf.shape(images)[0], images.shape[1]
    area = tf.random.uniform([n], min_crop, 1.0)
    aspect = tf.exp(tf.random.uniform([n], np.log(3 / 4), np.log(4 / 3)))
    h = tf.minimum(tf.sqrt(area / aspect), 1.0)
    w = tf.minimum(tf.sqrt(area * aspect), 1.0)
    y0 = tf.random.uniform([n]) * (1.0 - h)
    x0 = tf.random.uniform([n]) * (1.0 - w)
    boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
    both = tf.concat([images, masks], axis=-1)
    out = tf.image.crop_and_resize(both, boxes, tf.range(n), [size, size])
    return out[..., :3], tf.cast(out[..., 3:] >= 0.5, tf.float32)


def view_pairs(images: np.ndarray, masks: np.ndarray, spec: PreprocessSpec, config: ContrastiveConfig,
               augment: AugmentConfig, seed: int):
    """tf.data of (2B, size, size, 3) normalized batches: B scans' first views, then their
    second views in the same order."""
    aug = build_augment(augment, spec.image_size, seed, open_marks=spec.thin_marks == "open")

    def one_view(x, m):
        x, m = random_crops(x, m, config.min_crop)
        x, _ = aug(x, m)
        return x

    def pair(x, m):
        x, m = tf.cast(x, tf.float32), tf.cast(m, tf.float32)[..., None]
        return normalize_tensor(tf.concat([one_view(x, m), one_view(x, m)], axis=0), spec)

    ds = tf.data.Dataset.from_tensor_slices((images, masks)).shuffle(len(images), seed=seed,
                                                                     reshuffle_each_iteration=True)
    # drop_remainder: a last batch of one scan would have no other scan to contrast with
    return ds.batch(config.batch_size, drop_remainder=True).map(pair, num_parallel_calls=tf.data.AUTOTUNE) \
             .prefetch(tf.data.AUTOTUNE)


class Contrastive(keras.Model):
    """The classifier's conv base and pooling, then a two-layer projection head; its
    train_step takes a batch of view pairs and minimises nt_xent."""

    def __init__(self, classifier, config: ContrastiveConfig, **kwargs):
        super().__init__(**kwargs)
        self.features = keras.Model(classifier.inputs, classifier.get_layer("gap").output, name="pretrain_features")
        self.project = keras.Sequential([keras.layers.Dense(classifier.get_layer("gap").output.shape[-1],
                                                            activation="relu", name="ssl_projection_1"),
                                         keras.layers.Dense(config.projection_units, dtype="float32",
                                                            name="ssl_projection_2")], name="ssl_projection")
        self.temperature = config.temperature

    def get_config(self):
        # only its weights are saved (checkpoint/); said so that Keras does not warn each epoch
        return {"temperature": self.temperature}

    def call(self, x, training=False):
        return self.project(self.features(x, training=training), training=training)

    def train_step(self, views):
        with tf.GradientTape() as tape:
            loss = nt_xent(self(views, training=True), self.temperature)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"loss": loss}


def knn_auc(features: np.ndarray, labels: np.ndarray, k: int = PROBE_NEIGHBOURS) -> float:
    """Leave-one-out AUC of the malignant share among each scan's k nearest others
    (cosine similarity): do the features, unsupervised, put like with like?"""
    from sklearn.metrics import roc_auc_score
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(f) - 1)
    nearest = np.argpartition(-sim, k, axis=1)[:, :k]
    score = labels[nearest].mean(axis=1)
    return float(roc_auc_score(labels, score)) if len(set(labels.tolist())) == 2 else float("nan")


class PretrainCheckpoint(keras.callbacks.Callback):
    """Per epoch: the cosine learning rate, the kNN monitor, history, and a checkpoint
    (weights and state) that --resume continues from."""

    def __init__(self, run: RunDir, state: dict, config: ContrastiveConfig, probe: tuple[np.ndarray, np.ndarray]):
        super().__init__()
        self.run, self.state, self.config, self.probe = run, state, config, probe
        self.started = time.monotonic()

    def rate(self, epoch: int) -> float:
        done = epoch / max(self.config.epochs - 1, 1)
        low = self.config.learning_rate * 0.01
        return low + (self.config.learning_rate - low) * 0.5 * (1.0 + np.cos(np.pi * done))

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()
        keras.backend.set_value(self.model.optimizer.learning_rate, self.rate(epoch))

    def on_epoch_end(self, epoch, logs=None):
        images, labels = self.probe
        auc = knn_auc(self.model.features.predict(images, batch_size=64, verbose=0).astype(np.float32), labels)
        seconds = time.monotonic() - self.started
        history = self.state["history"]
        for key, value in (("loss", float(logs["loss"])), ("knn_auc", auc),
                           ("learning_rate", self.rate(epoch)), ("seconds", seconds)):
            history.setdefault(key, []).append(value)
        self.state.update(epochs_done=epoch + 1, elapsed_seconds=self.state["elapsed_seconds"] + seconds)
        self.model.save_weights(str(_weights_path(self.run)))
        atomic.write_json(self.run.state, self.state)
        log.info("epoch %d/%d: contrastive loss %.4f, kNN AUC of the features %.3f (%.0f s)",
                 epoch + 1, self.config.epochs, logs["loss"], auc, seconds)


def _weights_path(run: RunDir) -> Path:
    return run.checkpoint_dir / "pretrain.weights.h5"


def pretrain(data_config: TrainConfig, config: ContrastiveConfig, resume: bool = False) -> RunDir:
    """Pretrain the conv base that `data_config` (data, input settings, image size,
    architecture, width, seed, precision) describes on its images; return the run. Its
    `augment` makes the views after their crop (`bcd pretrain`: the scanner preset)."""
    from train.trainer import load_data, prepare_run_dir     # the images read as `bcd train` reads them

    run = RunDir(Path(data_config.out))
    prepare_run_dir(run, resume, log_name=LOG_NAME)
    spec = PreprocessSpec(image_size=data_config.image_size, thin_marks=data_config.thin_marks,
                          grey_map=data_config.grey_map)
    data = load_data(data_config, run, spec)
    if len(data.labels) < config.batch_size:
        raise ValueError(f"{len(data.labels)} images, fewer than one batch of {config.batch_size}: "
                         "give more images or a smaller --batch-size")
    precision = resolve_precision(data_config.precision)
    apply_precision(precision)
    model_config = ModelConfig(data_config.image_size, "none", seed=data_config.seed,
                               batch_norm=data_config.batch_norm, width=data_config.width)
    classifier, model_info = build_model(model_config)
    model = Contrastive(classifier, config)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    model(tf.zeros([2, data_config.image_size, data_config.image_size, 3]))    # builds the projection head
    state = run.read_json(run.state) if resume else {"epochs_done": 0, "history": {}, "elapsed_seconds": 0.0}
    if state["epochs_done"]:
        model.load_weights(str(_weights_path(run)))
        log.info("resuming after epoch %d (the optimizer's moments restart)", state["epochs_done"])
    used = {k: v for k, v in data_config.to_dict().items() if k in DATA_FIELDS}
    info = {"tool": tool_record(), "kind": PRETRAIN_KIND, "status": "pretraining", "config": used,
            "pretrain": asdict(config), "preprocessing": spec.to_dict(), "scan_region": data_config.region.to_dict(),
            "model": {**model_info, "precision": {"requested": data_config.precision, "used": precision},
                      "head": "untrained: `bcd train --weights` this run to train it"},
            "data": data.summary()}
    atomic.write_json(run.run_info, info)

    pick = np.sort(np.random.default_rng(data_config.seed).permutation(len(data.labels))[:PROBE_IMAGES])
    probe = (normalize(data.images[pick].astype(np.float32), spec).astype(np.float32), data.labels[pick])
    views = view_pairs(data.images, data.masks, spec, config, data_config.augment, data_config.seed)
    log.info("pretraining in %s on %d unlabelled scans of %s: %d epochs of %d steps", precision, len(data.labels),
             ", ".join(s.name for s in data.sources), config.epochs, len(data.labels) // config.batch_size)
    if state["epochs_done"] < config.epochs:
        model.fit(views, epochs=config.epochs, initial_epoch=state["epochs_done"],
                  callbacks=[PretrainCheckpoint(run, state, config, probe)], verbose=2)
    apply_precision("float32")
    atomic.write_json(run.history, state["history"])
    plot_history(state["history"], run.plots / "pretrain_curves.png",
                 title=f"Contrastive pretraining: NT-Xent loss, and the kNN ({PROBE_NEIGHBOURS}) AUC of the features "
                       "(a monitor only)")
    keras_model = inference_model(classifier, model_config)
    with atomic.atomic_path(run.model) as tmp:
        keras_model.save(tmp)
    info.update(status="complete", epochs_trained=state["epochs_done"],
                training_seconds=round(state["elapsed_seconds"], 1),
                final={"loss": state["history"]["loss"][-1], "knn_auc": state["history"]["knn_auc"][-1]})
    atomic.write_json(run.run_info, info)
    return run
