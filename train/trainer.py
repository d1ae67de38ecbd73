"""`bcd train`: data -> near-duplicate-aware split -> VGG16 fine-tuning -> evaluation.

Checkpoints after every epoch (the model with its optimizer state, plus the training
state) so an interrupted run continues with --resume; the best model by validation AUC
is kept as model.keras.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.dataset import CsvMapping, DataSource, LabelMap
from runtime.host import tool_record
from runtime.preprocessing import PreprocessSpec
from train import evaluate
from train.config import LEGACY_DEFAULTS, LESION_FREE_KINDS, TrainConfig, parent_input_settings
from train.cost import model_cost
from train.augment import ScreenView
from train.data import (BIRADS_CUTS, PAIR_OUTPUT, BiradsTargets, LesionTargets, LoadedDataset, PairViews,
                        balanced_class_weights, load_sources, make_tf_dataset, split_from_doc)
from train.dedup import DedupConfig, split_groups
from train.distribute import Cluster, lost_worker_error, make_cluster, shard_by_data, split_sha256, writes_run_dir
from train.metrics import ThresholdPolicy
from train.bn_restart import match_batch_norms
from train.model import (BIRADS_OUTPUT, CONDITIONAL_LAYER, LESION_OUTPUT, PRESENCE_LAYER, ModelConfig, build_model,
                         inference_model, set_trainable_blocks,
                         with_birads_head, with_lesion_cam, with_pair_output, with_presence_outputs,
                         without_lesion_cam)
from train.plots import plot_history
from train.precision import apply_precision, resolve_precision
from train.run_dir import RunDir
from train.split import SplitConfig, describe_split, save_split, split_indices
from train.tf_setup import keras, tf
from train.weight_average import RunningAverage

log = logging.getLogger(__name__)


LOG_NAME = "train.log"
BN_MATCH_IMAGES = 256     # training images that set restarted batch norms' statistics (train.bn_restart)


class RunExists(RuntimeError):
    pass


@dataclass(frozen=True)
class Phase:
    name: str
    start: int      # first epoch (0-based)
    end: int        # one past the last epoch
    blocks: str     # which VGG16 blocks train: none | last | all
    learning_rate: float


def plan_phases(config: TrainConfig) -> list[Phase]:
    if config.weights == "none":
        return [Phase("full", 0, config.epochs, "all", config.lr_scratch)]
    head = min(config.head_epochs, config.epochs)
    phases = [Phase("head", 0, head, "none", config.lr_head)]
    if config.epochs > head:
        # ImageNet features are generic: only block 5 adapts. A model trained on breast
        # ultrasound elsewhere adapts as a whole, gently, to the new site's scanners.
        from_run = not ModelConfig(config.image_size, config.weights, width=config.width).uses_keras_vgg16_weights
        phases.append(Phase("finetune", head, config.epochs, "all" if from_run else "last",
                            config.lr_scratch * 0.3 if from_run else config.lr_finetune))
    return phases


@dataclass(frozen=True)
class LrDecay:
    """Multiply the learning rate by `factor` after every `patience` epochs without a
    validation AUC gain (0: never). On ~500 images a from-scratch VGG16's validation AUC
    plateaus and oscillates at a constant rate; a smaller step is the usual next move.
    schedule "cosine" instead follows a half cosine over each phase, from the phase's rate
    down to min_lr in its last epoch, whatever validation does (patience then only stops)."""
    patience: int = 0
    factor: float = 0.3
    min_lr: float = 1e-6
    schedule: str = "plateau"

    def cosine_rate(self, phase: Phase, epoch: int) -> float:
        """The rate of 0-based `epoch` under the cosine schedule."""
        span = max(phase.end - phase.start - 1, 1)
        done = min(max(epoch - phase.start, 0), span) / span
        return self.min_lr + (phase.learning_rate - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * done))


class EpochCheckpoint(keras.callbacks.Callback):
    """Per epoch: record history, keep the best model, save a resumable checkpoint,
    lower the learning rate on a plateau (LrDecay), and stop early when validation AUC
    has not improved for `patience` epochs."""

    def __init__(self, run: RunDir, state: dict, phase: Phase, patience: int, decay: LrDecay = LrDecay(),
                 to_saved=None, average: "WeightAveraging | None" = None):
        super().__init__()
        self.run, self.state, self.phase, self.patience, self.decay = run, state, phase, patience, decay
        self.to_saved = to_saved or (lambda model: model)   # the trained model -> what model.keras holds
        self.average = average
        self.epoch_start = time.monotonic()

    def _maybe_decay(self) -> None:
        wait, decay = self.state["wait"], self.decay
        if decay.schedule != "plateau" or decay.patience < 1 or wait == 0 or wait % decay.patience:
            return
        lr = float(keras.backend.get_value(self.model.optimizer.learning_rate))
        new = max(lr * decay.factor, decay.min_lr)
        if new < lr:
            keras.backend.set_value(self.model.optimizer.learning_rate, new)
            log.info("no validation AUC gain for %d epochs: learning rate %g -> %g", wait, lr, new)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()
        if self.decay.schedule == "cosine":
            keras.backend.set_value(self.model.optimizer.learning_rate, self.decay.cosine_rate(self.phase, epoch))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        seconds = time.monotonic() - self.epoch_start
        state, history = self.state, self.state["history"]
        logs = _classifier_logs(logs)
        for key in ("loss", "auc", "val_loss", "val_auc", "lesion_loss", "val_lesion_loss",
                    "birads_loss", "val_birads_loss", "pair_loss"):
            if key in logs or key in history:
                history.setdefault(key, []).append(float(logs.get(key, float("nan"))))
        history.setdefault("seconds", []).append(round(seconds, 1))
        val_auc = float(logs.get("val_auc", 0.0))
        improved = val_auc > state["best_val_auc"] + 1e-6
        if improved:
            state.update(best_val_auc=val_auc, best_epoch=epoch + 1, wait=0)
            with atomic.atomic_path(self.run.model) as tmp:
                self.to_saved(self.model).save(tmp)
        else:
            state["wait"] += 1
            self._maybe_decay()
        history.setdefault("learning_rate", []).append(
            float(keras.backend.get_value(self.model.optimizer.learning_rate)))
        state.update(epochs_done=epoch + 1, phase=self.phase.name)
        if self.average is not None and epoch + 1 >= self.average.first_epoch:
            self.average.add_epoch(self.model, self.run, state)
        state["elapsed_seconds"] = state.get("elapsed_seconds", 0.0) + seconds
        if state["wait"] >= self.patience:
            state["stopped_early"] = True
            self.model.stop_training = True
        with atomic.atomic_path(self.run.last_model) as tmp:
            without_lesion_cam(self.model).save(tmp)   # the CAM branch has no weights of its own
        atomic.write_json(self.run.state, state)
        log.info(
            "epoch %d/%d [%s] %.0fs  loss %.4f  val_loss %.4f  val_auc %.4f%s",
            epoch + 1, self.params.get("epochs", 0), self.phase.name, seconds,
            logs.get("loss", float("nan")), logs.get("val_loss", float("nan")), val_auc,
            "  (best, saved)" if improved else f"  (best {state['best_val_auc']:.4f}, {state['wait']}/{self.patience})",
        )


@dataclass
class WeightAveraging:
    """--average-from: the running mean of the weights after every epoch from
    `first_epoch` (1-based), saved beside the checkpoint."""
    first_epoch: int
    running: RunningAverage

    def add_epoch(self, model, run: RunDir, state: dict) -> None:
        state.pop("weight_average", None)          # a resumed run trains on: the mean is taken again
        self.running.add(model.get_weights())
        self.running.save(run.checkpoint_dir)     # before state.json counts the epoch

    def apply(self, model, run: RunDir, state: dict, to_saved) -> None:
        """Put the mean into `model` and save it as model.keras (finish_training scores it
        on validation with the rest)."""
        if not self.running.count:
            log.warning("training stopped at epoch %d, before --average-from %d: model.keras is the best epoch",
                        state["epochs_done"], self.first_epoch)
            return
        model.set_weights(self.running.mean(model.get_weights()))
        with atomic.atomic_path(run.model) as tmp:
            to_saved(model).save(tmp)
        state["weight_average"] = {"from_epoch": self.first_epoch, "to_epoch": state["epochs_done"],
                                   "epochs": self.running.count}
        log.info("model.keras: the mean of the weights after epochs %d-%d (%d epochs); best single epoch %d: "
                 "validation AUC %.4f", self.first_epoch, state["epochs_done"], self.running.count,
                 state["best_epoch"], state["best_val_auc"])


def prepare_run_dir(run: RunDir, resume: bool, writes: bool = True, log_name: str = LOG_NAME) -> None:
    """Check (and for the writer create) the run directory; its log (`log_name`, opened
    before) may be there already. A non-chief worker only checks that there is something
    to resume: the chief may be creating the folder."""
    if resume:
        if not run.state.is_file():
            raise RunExists(f"nothing to resume in {run.root}: no checkpoint/state.json")
        return
    if not writes:
        return
    if run.root.exists() and any(p.name != log_name for p in run.root.iterdir()):
        raise RunExists(
            f"{run.root} already holds files; use --resume to continue that run or choose another --out"
        )
    run.checkpoint_dir.mkdir(parents=True, exist_ok=True)


def _check_resume_config(run: RunDir, config: TrainConfig) -> None:
    saved = run.read_json(run.run_info)["config"]
    current = config.to_dict()
    saved = {**LEGACY_DEFAULTS, **saved}      # a run from before a setting existed resumes as it was trained
    diff = [k for k in current if k not in TrainConfig.RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if diff:
        raise RunExists(f"--resume with settings that differ from the original run: {', '.join(diff)}")


def _classifier_logs(logs: dict) -> dict:
    """Keras names the classifier's metrics malignancy_auc when the lesion head is on."""
    out = dict(logs)
    for key in ("auc", "val_auc"):
        prefixed = key.replace("auc", "malignancy_auc")
        if key not in out and prefixed in out:
            out[key] = out[prefixed]
    return out


def data_sources(config: TrainConfig) -> list[DataSource]:
    """The run's datasets (config.data holds what `--data` and `--csv-map` said)."""
    labels = LabelMap(dict(config.class_labels))
    sources = []
    for d in config.data:
        mapping = CsvMapping(**d["mapping"]) if d.get("mapping") else None
        source = DataSource.parse(d["path"], mapping, labels)
        sources.append(replace(source, name=d["name"]) if d.get("name") else source)
    return sources


def load_data(config: TrainConfig, run: RunDir, spec: PreprocessSpec) -> LoadedDataset:
    """The images `config.data` names (none: the built-in synthetic set, written into the run)."""
    if config.data is None:
        from train.synthetic import write_synthetic_dataset
        root = write_synthetic_dataset(run.root / "synthetic-data")
        log.warning("no --data given: training on the built-in synthetic images in %s "
                    "(a pipeline check; its numbers mean nothing clinically)", root)
        sources = [DataSource.parse(str(root), labels=LabelMap(dict(config.class_labels)))]
    else:
        sources = data_sources(config)
    return load_sources(sources, spec, DedupConfig(max_distance=config.dedup_max_distance), region=config.region)


def _split(config: TrainConfig, run: RunDir, data: LoadedDataset, resume: bool,
           saved: RunDir | None = None) -> dict[str, np.ndarray]:
    """The split: computed (and saved in `run`), on --resume read from `saved`, or, when
    fine-tuning an earlier run on the same images, that run's split (`_parent_split`)."""
    if resume:
        saved = saved or run
        return split_from_doc(saved.read_json(saved.split), data)
    parent = _parent_split(config, data)
    if parent is not None:
        path, text, doc = parent
        atomic.write_text(run.split, text)     # byte for byte: the same split
        log.info("split: the one of the run fine-tuned from (%s): %s", path.parent, doc["counts"])
        return split_from_doc(doc, data)
    patients = [(src, p) if p is not None else None for src, p in zip(data.source_names.tolist(), data.patients)]
    groups = split_groups(data.hashes, config.dedup_max_distance, patients)
    split_cfg = SplitConfig(config.val_fraction, config.test_fraction, config.seed, config.val_source)
    indices = split_indices(data.labels, groups, split_cfg, sources=data.source_names)
    doc = describe_split(data, groups, indices, split_cfg, DedupConfig(config.dedup_max_distance))
    doc["data_root"] = str(Path(data.root).resolve())
    doc["unreadable_skipped"] = data.unreadable
    doc["bad_rows_skipped"] = data.bad_rows
    save_split(doc, run.split)
    log.info("split (images): %s; %d near-duplicate/patient groups", doc["counts"], len(doc["duplicate_groups"]))
    if len(data.sources) > 1:
        log.info("per source: %s", doc["counts_per_source"])
    return {s: np.array(v, dtype=int) for s, v in indices.items()}


def warn_input_changes(config: TrainConfig) -> list[str]:
    """Warn (and return the warnings) where a run fine-tuned from another (--weights RUN)
    prepares its images differently from that run: the model then meets inputs it did not
    learn on, which is allowed (a deliberate change) but never silent."""
    changed = [f"{key.replace('_', '-')} {theirs} -> {getattr(config, key)}"
               for key, theirs in parent_input_settings(config.weights).items() if getattr(config, key) != theirs]
    if changed:
        log.warning("--weights %s: that run prepared its images otherwise (%s); the fine-tuned model will learn "
                    "inputs its weights have not seen", config.weights, ", ".join(changed))
    return changed


def _parent_split(config: TrainConfig, data: LoadedDataset) -> tuple[Path, str, dict] | None:
    """The split.json of the run `--weights` names, when that run split the same images:
    a fine-tuned model must keep its parent's validation and test images out of training.
    A split computed afresh can differ (near-duplicate groups come from the images as read,
    and a new preprocessing step changes them) and would train on the parent's test
    images. None for other weights, or another set of images (a new site's data)."""
    weights = Path(config.weights) if config.weights not in ("none", "imagenet") else None
    if weights is None:
        return None
    path = (weights if weights.is_dir() else weights.parent) / "split.json"
    if not path.is_file():
        return None
    text = path.read_text()
    doc = json.loads(text)
    single = data.sources[0].name if len(data.sources) == 1 else None
    theirs = {(f.get("source", single), f["path"]) for files in doc.get("files", {}).values() for f in files}
    if theirs != set(data.keys()):
        if theirs & set(data.keys()):
            log.warning("--weights %s: its run split other images (%d shared with these); the split is computed "
                        "afresh, and its test images may be trained on", weights, len(theirs & set(data.keys())))
        return None
    held_out = (doc.get("config") or {}).get("val_source")
    if held_out != config.val_source:
        raise ValueError(f"--weights {weights}: that run held out {held_out or 'no source'} for validation, this one "
                         f"{config.val_source or 'none'}; fine-tuning must keep its split (give the same --val-source)")
    return path, text, doc


def _class_weights(labels: np.ndarray) -> dict[int, float]:
    weights = balanced_class_weights(labels)
    if weights is None:
        raise ValueError("the training split lacks one of the classes; add images or change the split")
    return weights


def _compile(model, learning_rate: float, lesion_weight: float = 0.0, lesion_loss: str = "head",
             birads_weight: float = 0.0, consistency: float = 0.0, presence_weight: float = 0.0) -> None:
    optimizer = keras.optimizers.Adam(learning_rate)
    if lesion_weight > 0 or birads_weight > 0 or consistency > 0 or presence_weight > 0:
        losses, weights = {"malignancy": "binary_crossentropy"}, {"malignancy": 1.0}
        if presence_weight > 0:
            # the probability is the product of its two factors; each learns on its own
            # images (data.make_tf_dataset), the product only is scored (its AUC)
            losses = {CONDITIONAL_LAYER: "binary_crossentropy", PRESENCE_LAYER: "binary_crossentropy"}
            weights = {CONDITIONAL_LAYER: 1.0, PRESENCE_LAYER: presence_weight}
        if lesion_weight > 0:
            losses[LESION_OUTPUT] = cam_lesion_loss if lesion_loss == "cam" else "binary_crossentropy"
            weights[LESION_OUTPUT] = lesion_weight
        if birads_weight > 0:    # the mean cross-entropy of the cumulative BI-RADS targets
            losses[BIRADS_OUTPUT], weights[BIRADS_OUTPUT] = "binary_crossentropy", birads_weight
        if consistency > 0:
            losses[PAIR_OUTPUT], weights[PAIR_OUTPUT] = pair_consistency_loss, consistency
        model.compile(optimizer=optimizer, loss=losses, loss_weights=weights,
                      metrics={"malignancy": [keras.metrics.AUC(name="auc")]},
                      # the sample weights (class balance, masks known) shape the loss only;
                      # the AUC is of the images as they are. [] says so, and stops Keras
                      # warning about it twice an epoch in the console and train.log.
                      weighted_metrics=[])
        return
    model.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])


def cam_lesion_loss(y_true, y_pred):
    """Cross-entropy between the lesion's share of each map cell (normalised to sum 1)
    and the spatial softmax of the Grad-CAM logits: low when the map's mass sits on the
    lesion. 0 for an image whose lesion map is empty (nothing to point at)."""
    n = tf.shape(y_pred)[0]
    target = tf.reshape(tf.cast(y_true, tf.float32), [n, -1])
    logits = tf.reshape(tf.cast(y_pred, tf.float32), [n, -1])
    total = tf.reduce_sum(target, axis=1, keepdims=True)
    ce = -tf.reduce_sum(target / tf.maximum(total, 1e-6) * tf.nn.log_softmax(logits, axis=1), axis=1)
    return tf.where(total[:, 0] > 0, ce, tf.zeros_like(ce))


def pair_consistency_loss(y_true, y_pred):
    """For a batch whose second half repeats its first as a screen shows it
    (make_tf_dataset's `pair`): the Bernoulli KL divergence of each screen view's
    probability from its plain view's, the plain view held fixed (it teaches, the screen
    view learns to agree). Zero for the plain half; doubled so that the batch mean is the
    mean over pairs."""
    p = tf.clip_by_value(tf.cast(tf.reshape(y_pred, [-1]), tf.float32), 1e-6, 1.0 - 1e-6)
    half = tf.shape(p)[0] // 2
    teacher, student = tf.stop_gradient(p[:half]), p[half:]
    kl = (teacher * tf.math.log(teacher / student)
          + (1.0 - teacher) * tf.math.log((1.0 - teacher) / (1.0 - student)))
    return 2.0 * tf.concat([tf.zeros_like(teacher), kl], 0)


def _run_info(config, spec, model_info, data, phases, status, extra=None) -> dict:
    info = {
        "tool": tool_record(),
        "status": status,
        "config": config.to_dict(),
        "preprocessing": spec.to_dict(),
        "scan_region": config.region.to_dict(),
        "labels": {"names": ["benign", "malignant"], "positive": "malignant",
                   "class_labels": dict(config.class_labels)},
        "model": model_info,
        "phases": [p.__dict__ for p in phases],
        "data": data.summary(),
        "environment": {
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "machine": platform.machine(), "processor": platform.processor() or None,
        },
    }
    info.update(extra or {})
    return info


def new_state() -> dict:
    """Training state before the first epoch (checkpoint/state.json)."""
    return {
        "epochs_done": 0, "phase": None, "best_val_auc": -1.0, "best_epoch": 0, "wait": 0,
        "stopped_early": False, "history": {}, "elapsed_seconds": 0.0,
    }


def consistency_note(pair_calipers: str, weight: float) -> str:
    """How a run's consistency pairs were made (run.json's model.consistency)."""
    return (f"each batch also as a screen shows it ({ScreenView.with_calipers(pair_calipers)}), "
            f"KL loss weight {weight:g} (training only)")


def fit_phases(model, run: RunDir, state: dict, phases: list[Phase], data: LoadedDataset,
               split: dict[str, np.ndarray], spec: PreprocessSpec, batch_size: int, seed: int,
               augment, patience: int, resume: bool, decay: LrDecay = LrDecay(),
               lesion_weight: float = 0.0, to_saved=None, lesion_loss: str = "head",
               birads_weight: float = 0.0, roi=None, roi_share: float = 0.0, consistency: float = 0.0,
               average_from: int = 0, view: ScreenView = ScreenView(), free=None,
               free_share: float = 0.0, presence_weight: float = 0.0) -> None:
    """Train `model` through `phases` on the split's train images, validating on val:
    class weights, early stopping on val AUC, best model -> run.model (through
    `to_saved`), checkpoint every epoch. Shared by `bcd train` and `bcd slim` (which
    passes a pruned model). With lesion_weight > 0 the model's lesion head learns the
    masks of the images that have one; with birads_weight > 0 its BI-RADS head learns the
    BI-RADS of the images that have one. With consistency > 0 every batch also holds its
    images as a scanner's screen shows them (train.augment.ScreenView: fans and calipers
    move from the augmentation to that second view) and a loss with this weight pays for
    any difference between the two views' probabilities (`view` says how the second view
    is made). With average_from > 0, run.model is finally the mean of the weights after
    epochs average_from..last (train.weight_average) instead of the best epoch. With
    free_share > 0 a share of the lesion images is shown as one of their lesion-free
    crops (`free`), labelled benign. With presence_weight > 0 (a presence model) the
    probability's two factors learn apart: P(a lesion) with this weight on every image
    (the normal class and the lesion-free samples show none), P(malignant | a lesion)
    on the images with a lesion."""
    tr, va = split["train"], split["val"]
    weights = _class_weights(data.labels[tr])
    pair = PairViews(view, weights) if consistency > 0 else None
    if pair is not None and augment is not None:
        augment = replace(augment, fan=0.0, calipers=0.0)
    per_sample = lesion_loss == "cam"
    no_lesion = (lambda idx: _normal_class(data)[idx]) if presence_weight > 0 else (lambda idx: None)
    lesion = (lambda idx: _lesion_targets(data, idx, weights, per_sample)) if lesion_weight > 0 else (lambda idx: None)
    birads = ((lambda idx: BiradsTargets(data.birads_levels()[idx], weights)) if birads_weight > 0
              else (lambda idx: None))
    # batch_size is per replica: under a tf.distribute strategy (the one the model was
    # built in) every step takes batch_size x replicas images, split between the replicas.
    strategy = model.distribute_strategy
    if pair is not None and strategy.num_replicas_in_sync > 1:
        # a replica would get the plain half of a batch and another its screen views
        raise ValueError("--consistency pairs each batch's two halves, which a tf.distribute strategy with several "
                         "replicas would split between them: train with --strategy none")
    global_batch = batch_size * strategy.num_replicas_in_sync
    train_ds = shard_by_data(make_tf_dataset(data.images[tr], data.labels[tr], spec, global_batch, True, seed,
                                             augment, lesion(tr), birads(tr),
                                             roi.subset(tr) if roi is not None else None, roi_share, pair,
                                             free.subset(tr) if free is not None else None, free_share,
                                             no_lesion(tr)))
    val_ds = shard_by_data(make_tf_dataset(data.images[va], data.labels[va], spec, global_batch, False,
                                           lesion=lesion(va), birads=birads(va), no_lesion=no_lesion(va)))
    verbose = 1 if _is_tty() else 2
    to_saved = to_saved or (lambda m: m)
    average = (WeightAveraging(average_from, RunningAverage.load(run.checkpoint_dir) if resume else RunningAverage())
               if average_from > 0 else None)
    for phase in phases:
        if state.get("stopped_early") or state["epochs_done"] >= phase.end:
            continue
        if state["phase"] != phase.name or not resume:
            set_trainable_blocks(model, phase.blocks)
            with strategy.scope():     # the optimizer's variables live where the model's do
                _compile(model, phase.learning_rate, lesion_weight, lesion_loss, birads_weight, consistency,
                         presence_weight)
            state["wait"] = 0   # each phase gets its own patience
        elif model.optimizer is None:   # a checkpoint saved without its optimizer (Grad-CAM lesion loss)
            set_trainable_blocks(model, phase.blocks)
            with strategy.scope():
                _compile(model, (state["history"].get("learning_rate") or [phase.learning_rate])[-1],
                         lesion_weight, lesion_loss, birads_weight, consistency, presence_weight)
        resume = False  # later phases start fresh
        log.info("phase %s: epochs %d-%d, VGG16 blocks training: %s, learning rate %g",
                 phase.name, phase.start + 1, phase.end, phase.blocks, phase.learning_rate)
        model.fit(train_ds, validation_data=val_ds, epochs=phase.end,
                  initial_epoch=max(phase.start, state["epochs_done"]),
                  # sample weights carry the class weights when there is an auxiliary target
                  class_weight=(None if lesion_weight > 0 or birads_weight > 0 or pair is not None or presence_weight > 0
                                else weights),
                  callbacks=[EpochCheckpoint(run, state, phase, patience, decay, to_saved, average)], verbose=verbose)
    if average is not None and "weight_average" not in state:
        average.apply(model, run, state, to_saved)
        atomic.write_json(run.state, state)


def _normal_class(data: LoadedDataset) -> np.ndarray:
    """Per image: True for a 'normal' class (a scan with no lesion in it)."""
    return np.array([c == "normal" for c in data.class_names], bool)


def _lesion_targets(data: LoadedDataset, idx: np.ndarray, class_weights: dict, per_sample: bool) -> LesionTargets:
    """Masks where known: a source's lesion masks, and the empty mask of a 'normal'
    image (no lesion to find)."""
    normal = _normal_class(data)[idx]
    return LesionTargets(data.masks[idx], data.has_mask[idx] | normal, class_weights, per_sample_weight=per_sample)


def finish_training(run: RunDir, state: dict, phases: list[Phase], data: LoadedDataset,
                    split: dict[str, np.ndarray], spec: PreprocessSpec, policy: ThresholdPolicy,
                    bootstrap_resamples: int) -> dict:
    """History and curves, then the best model: threshold on val, metrics on test.
    Returns the run.json fields that only exist once training is complete."""
    history = dict(state["history"])
    history["phase_boundaries"] = [p.start for p in phases[1:]]
    atomic.write_json(run.history, history)
    plot_history(history, run.plots / "training_curves.png")

    best = keras.models.load_model(run.model, compile=False)
    result = evaluate.evaluate_split_after_training(best, data, split, spec, policy, run, bootstrap_resamples)
    average = state.get("weight_average")
    if average is not None:     # model.keras is the mean: its validation AUC, from the scores just computed
        average = {**average, "val_auc": result["threshold"]["validation"]["roc_auc"]}
        log.info("the mean of the weights: validation AUC %.4f", average["val_auc"])
    return {"threshold": result["threshold"], "best_epoch": state["best_epoch"],
            "best_val_auc": state["best_val_auc"], "epochs_trained": state["epochs_done"],
            "stopped_early": state.get("stopped_early", False),
            **({"weight_average": average} if average is not None else {}),
            "training_seconds": round(state["elapsed_seconds"], 1)}


def train(config: TrainConfig, resume: bool = False) -> RunDir:
    """Train, evaluate on the test split, and return the run directory.

    Under --strategy multiworker every worker runs this; only the chief writes
    config.out (train.distribute)."""
    out = RunDir(Path(config.out))
    prepare_run_dir(out, resume, writes_run_dir(config.strategy))
    if resume:
        _check_resume_config(out, config)
    cluster = make_cluster(config.strategy)    # before any TensorFlow op: it joins the cluster
    run = out if cluster.is_chief else RunDir(cluster.scratch_dir())
    if not cluster.is_chief:
        run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    try:
        _train(config, resume, cluster, out, run)
    except Exception as err:
        clear = lost_worker_error(err) if cluster.kind == "multiworker" else None
        if clear is not None:
            raise clear from None
        raise
    finally:
        cluster.cleanup()
    cluster.wait_for_all()
    return out


def _train(config: TrainConfig, resume: bool, cluster: Cluster, out: RunDir, run: RunDir) -> None:
    """The training run itself; `out` is the run directory (read on --resume), `run` is
    where this process writes (the run directory, or a non-chief worker's scratch)."""
    spec = PreprocessSpec(image_size=config.image_size, thin_marks=config.thin_marks, grey_map=config.grey_map)
    if not resume:
        warn_input_changes(config)
    data = load_data(config, run, spec)
    split = _split(config, run, data, resume, saved=out)
    digest = split_sha256(data.keys(), data.labels, split)
    if resume and out.read_json(out.run_info).get("split_sha256") not in (None, digest):
        raise RunExists("--resume: the saved split no longer matches its hash in run.json (labels or files changed)")
    cluster.check_same_split(digest)
    phases = plan_phases(config)

    state = out.read_json(out.state) if resume else new_state()
    if resume and (state["epochs_done"] >= config.epochs or state.get("stopped_early")):
        log.info("the run had already finished training; re-evaluating")
    precision = resolve_precision(config.precision)
    apply_precision(precision)
    model_cfg = ModelConfig(config.image_size, config.weights, seed=config.seed, batch_norm=config.batch_norm,
                            width=config.width, lesion=config.lesion_loss if config.lesion_weight > 0 else "none",
                            mixstyle=config.mixstyle, presence=config.presence_weight > 0)
    with cluster.strategy.scope():    # variables (and on resume the optimizer's) mirrored per replica
        model, model_info = build_model(model_cfg)
        if resume and out.last_model.is_file():
            model = keras.models.load_model(out.last_model)
            if model_cfg.lesion == "cam":
                model = with_lesion_cam(model, model_cfg.batch_norm)
            log.info("resuming after epoch %d (the BI-RADS head, if any, restarts)", state["epochs_done"])
        elif model_info["batch_norms_restarted"]:
            match_batch_norms(model, model_info["batch_norms_restarted"],
                              _sample(data.images[split["train"]], BN_MATCH_IMAGES, config.seed), spec)
    if config.birads_weight > 0:
        with cluster.strategy.scope():
            model = with_birads_head(model, len(BIRADS_CUTS), config.seed)
        model_info["birads_head"] = (f"P(BI-RADS >= k) for k in {list(BIRADS_CUTS)}, weight {config.birads_weight:g} "
                                     f"(training only; {int((data.birads_levels() > 0).sum())} images have a BI-RADS)")
    if config.presence_weight > 0:
        model = with_presence_outputs(model)
        model_info["presence"] = (f"probability = P(malignant | a lesion) x P(a lesion); P(a lesion) learns with weight "
                                  f"{config.presence_weight:g} from every image ({int(_normal_class(data).sum())} of the "
                                  f"normal class show none), P(malignant | a lesion) from the images with a lesion")
    if config.consistency > 0:
        model = with_pair_output(model, PAIR_OUTPUT)
        model_info["consistency"] = consistency_note(config.pair_calipers, config.consistency)
    model_info["cost"] = model_cost(inference_model(model, model_cfg))
    model_info["precision"] = {"requested": config.precision, "used": precision}
    extra = {"distribution": cluster.summary(config.batch_size), "split_sha256": digest}
    atomic.write_json(run.run_info, _run_info(config, spec, model_info, data, phases, "training", extra))

    log.info("training in %s on %s", precision, ", ".join(f"{s.name} ({s.path})" for s in data.sources))
    fit_phases(model, run, state, phases, data, split, spec, config.batch_size, config.seed,
               config.augment, config.patience, resume,
               LrDecay(config.lr_decay_patience, config.lr_decay_factor, schedule=config.lr_schedule),
               lesion_weight=config.lesion_weight, to_saved=lambda m: inference_model(m, model_cfg),
               lesion_loss=config.lesion_loss, birads_weight=config.birads_weight,
               roi=lesion_crops(config, data, spec), roi_share=config.roi_share, consistency=config.consistency,
               average_from=config.average_from, view=ScreenView.with_calipers(config.pair_calipers),
               free=lesion_free_crops(config, data, spec), free_share=config.lesion_free_share,
               presence_weight=config.presence_weight)
    apply_precision("float32")
    if not cluster.is_chief:
        log.info("training done; the chief evaluates and writes %s", out.root)
        return
    policy = ThresholdPolicy(config.threshold_method, config.min_sensitivity)
    done = finish_training(run, state, phases, data, split, spec, policy, config.bootstrap_resamples)
    atomic.write_json(run.run_info, _run_info(config, spec, model_info, data, phases, "complete", {**extra, **done}))


def lesion_crops(config: TrainConfig, data: LoadedDataset, spec: PreprocessSpec):
    """The lesion-centred crops the recipe asks for (None with roi_share 0)."""
    if config.roi_share <= 0:
        return None
    from train.roi_samples import load_roi_crops
    return load_roi_crops(data, spec, config.roi_crops, config.region)


def lesion_free_crops(config: TrainConfig, data: LoadedDataset, spec: PreprocessSpec):
    """The lesion-free samples the recipe asks for (None with lesion_free_share 0): crops
    beside the lesion, or the whole scans with the lesion erased (of benign images only
    with erased-benign)."""
    if config.lesion_free_share <= 0:
        return None
    from train.roi_samples import load_roi_crops
    free = load_roi_crops(data, spec, config.roi_crops, config.region, kind=LESION_FREE_KINDS[config.lesion_free_kind])
    if config.lesion_free_kind == "erased-benign":
        free.has &= data.labels == 0
        log.info("of them, benign: %d images", int(free.has.sum()))
    return free


def _sample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to n of `images`, drawn without replacement, in a fixed order for the seed."""
    order = np.random.default_rng(seed).permutation(len(images))[:n]
    return images[np.sort(order)]


def _is_tty() -> bool:
    import sys
    return sys.stdout.isatty()
