"""Training configuration: one dataclass, saved into run.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from runtime.dataset import DEFAULT_CLASS_LABELS
from train.data import AugmentConfig
from train.dedup import DEFAULT_MAX_DISTANCE


@dataclass(frozen=True)
class TrainConfig:
    out: str
    data: str | None = None          # None: the built-in synthetic dataset
    image_size: int = 224
    epochs: int = 30
    weights: str = "none"            # imagenet | none | path to a no-top .h5 file
    seed: int = 42
    batch_size: int = 16
    head_epochs: int = 5             # pretrained only: epochs with the VGG16 base frozen
    lr_scratch: float = 3e-4
    lr_head: float = 1e-3
    lr_finetune: float = 1e-5
    patience: int = 8                # early stopping on validation AUC
    lr_decay_patience: int = 4       # learning rate x lr_decay_factor after this many epochs without gain (0: off)
    lr_decay_factor: float = 0.3
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    class_labels: dict = field(default_factory=lambda: dict(DEFAULT_CLASS_LABELS))
    threshold_method: str = "sensitivity"
    min_sensitivity: float = 0.90
    dedup_max_distance: int = DEFAULT_MAX_DISTANCE
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bootstrap_resamples: int = 1000

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.lr_decay_patience < 0 or not 0 < self.lr_decay_factor <= 1:
            raise ValueError("learning-rate decay: patience must be >= 0 and the factor in (0, 1]")
        if self.image_size < 32:
            raise ValueError("image size must be at least 32 (VGG16 needs 32x32 inputs)")
        if self.threshold_method not in ("sensitivity", "youden"):
            raise ValueError("threshold method must be 'sensitivity' or 'youden'")

    def to_dict(self) -> dict:
        return asdict(self)

    # Settings that may change when resuming (train longer, or a run directory that was
    # copied or moved); the rest must match.
    RESUMABLE_CHANGES = ("out", "epochs", "patience", "lr_decay_patience", "lr_decay_factor",
                         "bootstrap_resamples")
