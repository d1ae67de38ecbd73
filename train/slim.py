"""`bcd slim`: prune a finished run's VGG16 to fewer filters, fine-tune it, evaluate it.

The result is an ordinary run directory (model.keras, run.json, split.json, metrics,
plots, checkpoint/) so export, evaluate, benchmark and predict accept it unchanged. To
stay comparable with the parent it reuses everything the parent fixed: the same images
and train/val/test split, preprocessing, labels, augmentation, batch size and threshold
policy. Only the network is thinner and fine-tuning starts from the parent's kept
weights at a lower learning rate (the filters are already trained; a scratch-sized step
would throw that away).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.model_files import sha256_file
from runtime.preprocessing import PreprocessSpec
from train import prune, trainer
from train.augment import ScreenView
from train.config import TrainConfig, run_scan_region
from train.cost import count_macs, model_cost
from train.data import PAIR_OUTPUT, LoadedDataset, load_saved_split, to_model_input
from train.dedup import DedupConfig
from train.evaluate import predict_probabilities
from train.metrics import ThresholdPolicy, binary_metrics
from train.model import with_lesion_cam, with_pair_output, with_presence_outputs, without_lesion_cam
from train.run_dir import PRETRAIN_KIND, RunDir, unfinished
from train.tf_setup import keras

log = logging.getLogger(__name__)

PHASE_NAME = "slim"


class NotARun(ValueError):
    """The parent directory is not a finished `bcd train` (or `bcd slim`) run."""


@dataclass(frozen=True)
class SlimConfig:
    parent: str                      # finished run directory to prune
    out: str                         # new run directory
    ratio: float | None = None       # share of each conv layer's filters to remove
    target_macs: float | None = None  # or: prune just enough to fit this many MACs per image
    criterion: str = "l1"
    min_filters: int = prune.MIN_FILTERS
    epochs: int = 30
    patience: int = 8                # early stopping on validation AUC
    learning_rate: float = 1e-4      # Adam; below the scratch 3e-4, above the 1e-5 block-5 fine-tune
    lr_decay_patience: int = 3       # learning rate x0.3 after this many epochs without val AUC gain (0: off)
    batch_size: int | None = None    # None: the parent's
    data: str | None = None          # where the parent's dataset lives now (default: split.json data_root)
    bootstrap_resamples: int = 1000

    DEFAULT_RATIO = 0.5
    # may differ when resuming (train longer, or a run directory that was moved)
    RESUMABLE_CHANGES = ("out", "epochs", "patience", "lr_decay_patience", "data", "bootstrap_resamples")

    def __post_init__(self) -> None:
        if self.ratio is not None and self.target_macs is not None:
            raise ValueError("give either a pruning ratio or a MACs target, not both")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise ValueError(f"pruning ratio must be between 0 and 1 (exclusive), got {self.ratio}")
        if self.target_macs is not None and self.target_macs <= 0:
            raise ValueError(f"MACs target must be positive, got {self.target_macs}")
        if self.criterion not in prune.CRITERIA:
            raise ValueError(f"unknown pruning criterion {self.criterion!r}; choose from {', '.join(prune.CRITERIA)}")
        if self.lr_decay_patience < 0:
            raise ValueError("learning-rate decay patience must be >= 0")
        if self.epochs < 1 or self.patience < 1 or self.min_filters < 1:
            raise ValueError("epochs, patience and min filters must be at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.learning_rate <= 0:
            raise ValueError("learning rate must be positive")

    @property
    def effective_ratio(self) -> float | None:
        """The ratio to prune with, or None when a MACs target decides it."""
        if self.target_macs is not None:
            return None
        return self.DEFAULT_RATIO if self.ratio is None else self.ratio

    def to_dict(self) -> dict:
        return asdict(self)


def open_parent(path: str | Path) -> tuple[RunDir, dict, dict]:
    """(run, run.json, split.json) of a finished run, or NotARun saying what is missing."""
    run = RunDir(Path(path))
    if not run.root.is_dir():
        raise NotARun(f"{run.root}: no such run directory")
    info = run.read_json(run.run_info) if run.run_info.is_file() else {}
    if info.get("kind") != PRETRAIN_KIND:      # a pretraining run has no split: told below what it is for
        for needed in (run.run_info, run.split, run.model):
            if not needed.is_file():
                raise NotARun(f"{run.root} is not a run directory from `bcd train`: {needed.name} is missing")
    reason = unfinished(run.root, info)
    if reason:
        raise NotARun(reason)
    return run, info, run.read_json(run.split)


def _load_parent_data(config: SlimConfig, train_cfg: TrainConfig, info: dict, split_doc: dict,
                      spec: PreprocessSpec) -> tuple[LoadedDataset, dict[str, np.ndarray]]:
    # The trainer's way (every source, then the saved split by source and path) so the
    # data summary in run.json and the split indices match the parent exactly.
    try:
        return load_saved_split(split_doc, spec, config.data, info["labels"]["class_labels"],
                                DedupConfig(max_distance=train_cfg.dedup_max_distance), region=run_scan_region(info))
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(f"the parent run's data cannot be read ({err}): pass --data DIR if it moved") from None


def _choose_ratio(config: SlimConfig, model) -> float:
    if config.effective_ratio is not None:
        return config.effective_ratio
    shapes = prune.conv_shapes(model)
    units = prune.first_dense_after_convs(model).units
    full_chain = prune.chain_macs(shapes, [s.filters for s in shapes], units)
    ratio = prune.ratio_for_target(shapes, units, count_macs(model) - full_chain, config.target_macs,
                                   config.min_filters)
    log.info("pruning ratio %.4f fits the target of %.4g MACs per image", ratio, config.target_macs)
    return ratio


def _val_auc(model, data: LoadedDataset, split: dict, spec: PreprocessSpec) -> float | None:
    val = split["val"]
    return binary_metrics(data.labels[val], predict_probabilities(model, data.images[val], spec), 0.5)["roc_auc"]


def _keras_val_auc(model, data: LoadedDataset, split: dict, spec: PreprocessSpec) -> float:
    """Validation AUC as the training loop measures it (Keras' AUC metric, 200 thresholds),
    so the pruned model is compared with the fine-tuned epochs on the same scale; the
    exact (rank) AUC in the run record can differ from it by a few thousandths."""
    val = split["val"]
    metric = keras.metrics.AUC()
    metric.update_state(data.labels[val], predict_probabilities(model, data.images[val], spec))
    return float(metric.result())


IMPORTANCE_IMAGES = 128   # training images the activation criterion is measured on


def _importance_images(config: SlimConfig, data: LoadedDataset, split: dict, spec: PreprocessSpec):
    """Training images (never validation: the pruning choice must not see it)."""
    if config.criterion != "activation":
        return None
    rng = np.random.default_rng(0)
    train = np.asarray(split["train"])
    picked = np.sort(rng.choice(train, size=min(IMPORTANCE_IMAGES, len(train)), replace=False))
    return to_model_input(data.images[picked], spec)


def _prune_parent(config: SlimConfig, parent: RunDir, parent_info: dict, data: LoadedDataset,
                  split: dict, spec: PreprocessSpec):
    """The pruned model and the run.json "pruning" record."""
    full = keras.models.load_model(parent.model, compile=False)
    ratio = _choose_ratio(config, full)
    keep = prune.plan_keep(full, ratio, config.criterion, config.min_filters,
                           _importance_images(config, data, split, spec))
    thin = prune.prune_model(full, keep)
    before, after = model_cost(full), model_cost(thin)
    filters = {name: [int(full.get_layer(name).filters), int(len(idx))] for name, idx in keep.items()}
    log.info("pruned %s (%s criterion, ratio %.3f): filters kept per conv layer %s",
             parent.root, config.criterion, ratio, ", ".join(f"{n} {a}->{b}" for n, (a, b) in filters.items()))
    log.info("MACs per image %.4g -> %.4g (%.1f%%), parameters %d -> %d (%.1f%%)",
             before["macs"], after["macs"], 100 * after["macs"] / before["macs"],
             before["params"], after["params"], 100 * after["params"] / before["params"])
    auc_full, auc_thin = _val_auc(full, data, split, spec), _val_auc(thin, data, split, spec)
    log.info("validation AUC before fine-tuning: parent %s, pruned %s",
             _fmt(auc_full), _fmt(auc_thin))
    record = {
        "parent_run": str(parent.root.resolve()),
        "parent_model_sha256": sha256_file(parent.model),
        "parent_best_val_auc": parent_info.get("best_val_auc"),
        "criterion": config.criterion,
        "ratio": ratio,
        "target_macs": config.target_macs,
        "min_filters": config.min_filters,
        "filters": filters,   # conv layer -> [parent filters, kept filters]
        "kept_filter_indices": {name: [int(i) for i in idx] for name, idx in keep.items()},
        "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "val_auc_parent": auc_full, "val_auc_pruned_before_finetune": auc_thin,
    }
    return thin, record


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _check_resume(run: RunDir, config: SlimConfig) -> dict:
    saved = run.read_json(run.run_info)
    if "slim" not in saved or "pruning" not in saved:
        raise trainer.RunExists(f"{run.root} is not a `bcd slim` run; nothing to resume")
    current = config.to_dict()
    diff = [k for k in current if k not in SlimConfig.RESUMABLE_CHANGES and saved["slim"].get(k) != current[k]]
    if diff:
        raise trainer.RunExists(f"--resume with settings that differ from the original slim run: {', '.join(diff)}")
    return saved


def _pruned_model_is_epoch_zero(model, run: RunDir, state: dict, val_auc: float | None) -> None:
    """The pruned model, before any fine-tuning, is the first candidate: fine-tuning must
    beat its validation AUC to replace it (a gentle pruning step can already be within
    budget, and the first fine-tuning epochs can make it worse)."""
    if val_auc is None:
        return
    with atomic.atomic_path(run.model) as tmp:
        model.save(tmp)
    state.update(best_val_auc=float(val_auc), best_epoch=0)
    log.info("epoch 0 (pruned, before fine-tuning): val_auc %.4f (saved; fine-tuning must beat it)", val_auc)


def slim(config: SlimConfig, resume: bool = False) -> RunDir:
    """Prune the parent run's model, fine-tune it, evaluate it; return the new run."""
    parent, parent_info, split_doc = open_parent(config.parent)
    run = RunDir(Path(config.out))
    if run.root.resolve() == parent.root.resolve():
        raise ValueError("--out must be a new directory, not the parent run")
    trainer.prepare_run_dir(run, resume)
    saved = _check_resume(run, config) if resume else None

    # run.json "config" stays the parent's TrainConfig (readers find image size, seed,
    # labels where they always are); what slim itself did goes under "slim" and "pruning".
    train_cfg = TrainConfig.from_dict(parent_info["config"], out=config.out)
    if config.batch_size is not None:
        train_cfg = replace(train_cfg, batch_size=config.batch_size)
    spec = PreprocessSpec.from_dict(parent_info["preprocessing"])
    data, split = _load_parent_data(config, train_cfg, parent_info, split_doc, spec)
    phases = [trainer.Phase(PHASE_NAME, 0, config.epochs, "all", config.learning_rate)]

    if resume:
        state = run.read_json(run.state)
        model = keras.models.load_model(run.last_model)
        pruning, model_info = saved["pruning"], saved["model"]
        log.info("resuming the slim run after epoch %d", state["epochs_done"])
    else:
        atomic.write_json(run.split, split_doc)   # the parent's split, unchanged
        state = trainer.new_state()
        model, pruning = _prune_parent(config, parent, parent_info, data, split, spec)
        model_info = {**parent_info.get("model", {}), "cost": model_cost(model),
                      "precision": {"requested": "float32", "used": "float32"},   # the pruned model trains in float32
                      "pruned": f"{pruning['ratio']:.3f} of the filters of every conv layer removed "
                                f"({config.criterion} criterion), then fine-tuned"}
        _pruned_model_is_epoch_zero(model, run, state, _keras_val_auc(model, data, split, spec))
    if train_cfg.consistency > 0:   # the pairs as this child makes them (the parent's may predate a change)
        model_info["consistency"] = trainer.consistency_note(train_cfg.pair_calipers, train_cfg.consistency)
    # the parent's images were cut to their scan region this way: so are the child's
    extra = {"slim": config.to_dict(), "pruning": pruning, "scan_region": run_scan_region(parent_info).to_dict()}
    atomic.write_json(run.run_info, trainer._run_info(train_cfg, spec, model_info, data, phases, "training", extra))

    # the parent's Grad-CAM lesion loss keeps the thinner model looking at the lesion too
    cam = train_cfg.lesion_weight > 0 and train_cfg.lesion_loss == "cam"
    model = with_lesion_cam(model, batch_norm=False) if cam else model
    if train_cfg.presence_weight > 0:  # a presence parent's two factors go on learning apart
        model = with_presence_outputs(model)
    if train_cfg.consistency > 0:     # and the parent's consistency pairs keep it reading screens as scans
        model = with_pair_output(model, PAIR_OUTPUT)
    trainer.fit_phases(model, run, state, phases, data, split,
                       spec, train_cfg.batch_size, train_cfg.seed, train_cfg.augment, config.patience, resume,
                       trainer.LrDecay(config.lr_decay_patience), lesion_weight=train_cfg.lesion_weight if cam else 0.0,
                       to_saved=without_lesion_cam, lesion_loss="cam",
                       roi=trainer.lesion_crops(train_cfg, data, spec), roi_share=train_cfg.roi_share,
                       consistency=train_cfg.consistency, view=ScreenView.with_calipers(train_cfg.pair_calipers),
                       free=trainer.lesion_free_crops(train_cfg, data, spec), free_share=train_cfg.lesion_free_share,
                       presence_weight=train_cfg.presence_weight)
    policy = ThresholdPolicy(train_cfg.threshold_method, train_cfg.min_sensitivity)
    done = trainer.finish_training(run, state, phases, data, split, spec, policy, config.bootstrap_resamples)
    atomic.write_json(run.run_info, trainer._run_info(train_cfg, spec, model_info, data, phases, "complete",
                                                      {**extra, **done}))
    return run
