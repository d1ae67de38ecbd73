"""Training configuration: one dataclass, saved into run.json."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from runtime.dataset import DEFAULT_CLASS_LABELS
from runtime.caliper_marks import MODES as CALIPER_MODES
from runtime.overlay_marks import MODES as MARK_MODES
from runtime.preprocessing import GREY_MAPS, THIN_MARKS
from runtime.scan_crop import region_config_from_dict
from runtime.scan_region import RegionConfig
from train.augment import PAIR_CALIPERS, AugmentConfig
from train.dedup import DEFAULT_MAX_DISTANCE

PRECISIONS = ("auto", "float32", "bfloat16")
# From scratch, Adam: the plain VGG16 learned at 3e-4, the batch-norm one at 1e-3
# (../shared/STACK-NOTES.md, and every shipped run). `lr_scratch=None` picks by `batch_norm`.
LR_SCRATCH = {"plain": 3e-4, "batch_norm": 1e-3}
STRATEGIES = ("auto", "none", "mirrored", "multiworker")   # see train.distribute
SCAN_REGIONS = ("auto", "off")
# What a lesion-free sample is: the train.roi_samples kind it is cut as ("free", "erased").
# erased-benign erases only the lesions of images labelled benign: a malignant lesion
# erased leaves its shadow and the distortion around it, which are not benign.
LESION_FREE_KINDS = {"crop": "free", "erased": "erased", "erased-benign": "erased"}
# What a run.json from before a setting existed meant: such runs load (and resume) as
# they were trained. Before the scan-region finder, images were never cropped.
LEGACY_DEFAULTS = {"scan_region": "off", "colour_marks": "keep", "white_calipers": "keep", "pair_calipers": "any",
                   "thin_marks": "keep", "grey_map": "keep"}


@dataclass(frozen=True)
class TrainConfig:
    out: str
    data: tuple | None = None        # DataSource dicts (name, path, mapping); None: the built-in synthetic set
    image_size: int = 224
    epochs: int = 30
    weights: str = "none"            # imagenet | none | path to a no-top .h5 file
    seed: int = 42
    batch_size: int = 16
    head_epochs: int = 5             # pretrained only: epochs with the VGG16 base frozen
    lr_scratch: float | None = None  # None: LR_SCRATCH for the architecture (resolved on creation)
    lr_head: float = 1e-3
    lr_finetune: float = 1e-5
    patience: int = 8                # early stopping on validation AUC
    lr_decay_patience: int = 4       # learning rate x lr_decay_factor after this many epochs without gain (0: off)
    lr_decay_factor: float = 0.3
    lr_schedule: str = "plateau"     # plateau: the decay above; cosine: a half cosine over each phase
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    class_labels: dict = field(default_factory=lambda: dict(DEFAULT_CLASS_LABELS))
    threshold_method: str = "sensitivity"
    min_sensitivity: float = 0.90
    dedup_max_distance: int = DEFAULT_MAX_DISTANCE
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bootstrap_resamples: int = 1000
    val_source: str | None = None    # hold this source out entirely as the validation split
    precision: str = "auto"          # auto: mixed bfloat16 where the CPU has native bf16
    batch_norm: bool = False
    width: float = 1.0
    lesion_weight: float = 0.0       # > 0: a lesion-mask loss with this weight (where masks exist)
    lesion_loss: str = "cam"         # cam: on the Grad-CAM map itself; head: an auxiliary segmentation head
    birads_weight: float = 0.0       # > 0: an ordinal BI-RADS head (training only) with this loss weight,
                                     # on the images whose CSV row has a BI-RADS (--csv-map birads=COLUMN)
    roi_share: float = 0.0           # share of training images shown as a lesion-centred crop (train.roi_samples)
    roi_crops: int = 2               # crops cached per lesion image, drawn like a clinician's box
    lesion_free_share: float = 0.0   # share of the other lesion images shown as a lesion-free crop of
                                     # their tissue, labelled benign (train.roi_samples, kind "free")
    lesion_free_kind: str = "crop"   # crop: a crop beside the lesion; erased: the whole scan with the
                                     # lesion replaced by tissue at its depth (kind "erased");
                                     # erased-benign: the same, of benign images only
    presence_weight: float = 0.0     # > 0: the probability is P(malignant | a lesion) x P(a lesion), the
                                     # second factor learnt with this weight from the scans with no lesion
                                     # (a normal class, the lesion-free samples) and the rest (train.model)
    consistency: float = 0.0         # > 0: each batch also as a scanner's screen shows it (fan, calipers,
                                     # the finder's box a few px off) and a loss with this weight on the
                                     # difference between the views' probabilities (train.augment.ScreenView)
    mixstyle: float = 0.0            # > 0: MixStyle after blocks 1-3 with this probability per batch
                                     # (train.model.MixStyle: other images' feature statistics, training only)
    average_from: int = 0            # > 0: model.keras is the mean of the weights after epochs
                                     # average_from..last (1-based), not the best epoch (train.weight_average)
    strategy: str = "auto"           # tf.distribute: auto | none | mirrored | multiworker (TF_CONFIG)
    # auto: every image (and its lesion mask) is cut to its scan region, as the runtime
    # does (runtime.scan_crop.apply_region: a DICOM file's tissue region, else the finder);
    # off: whole images. Runs from before it load as "off" (LEGACY_DEFAULTS).
    scan_region: str = "auto"
    # inpaint: coloured marks in the scan are erased (runtime.overlay_marks), in training
    # and at run time; keep: not (runs from before it load as "keep").
    colour_marks: str = "inpaint"
    # erase: white calipers in the scan are erased (runtime.caliper_marks), in training and
    # at run time; keep (the default, see runtime.scan_region.RegionConfig): not.
    white_calipers: str = "keep"
    # with consistency > 0, the calipers of the screen view (train.augment.ScreenView.with_calipers):
    # white: white to light grey on 80 % of the pairs; any: every colour on half (runs from
    # before it load as "any")
    pair_calipers: str = "white"
    # open: thin bright marks (calipers' strokes, dotted lines, thin text) are removed from
    # every image before it is resized to the input, in training and at run time (recorded
    # in the preprocessing: runtime.preprocessing.THIN_MARKS); keep: not (runs from before
    # it load as "keep")
    thin_marks: str = "keep"
    # equalize: each image's grey levels are equalized after augmentation, in training and
    # at run time (recorded in the preprocessing: runtime.preprocessing.GREY_MAPS), so no
    # site's gain or grey map can be learnt; keep: not (runs from before it load as "keep")
    grey_map: str = "keep"

    def __post_init__(self) -> None:
        if self.lr_scratch is None:
            object.__setattr__(self, "lr_scratch", LR_SCRATCH["batch_norm" if self.batch_norm else "plain"])
        self._check()
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.lesion_weight < 0:
            raise ValueError("the lesion loss weight must be >= 0")
        if not 0.0 <= self.roi_share <= 1.0 or self.roi_crops < 1:
            raise ValueError("the lesion-crop share must be in [0, 1] and at least one crop is kept per lesion")
        if not 0.0 <= self.lesion_free_share <= 1.0:
            raise ValueError("the lesion-free crop share must be in [0, 1]")
        if self.lesion_free_kind not in LESION_FREE_KINDS:
            raise ValueError(f"the lesion-free kind must be one of {', '.join(LESION_FREE_KINDS)}, "
                             f"got {self.lesion_free_kind!r}")
        if self.birads_weight < 0:
            raise ValueError("the BI-RADS loss weight must be >= 0")
        if self.presence_weight < 0:
            raise ValueError("the lesion-presence loss weight must be >= 0")
        if not 0.0 <= self.augment.mixup <= 1.0:
            raise ValueError("the mixup share must be in [0, 1]")
        if not 0.0 <= self.mixstyle <= 1.0:
            raise ValueError("the MixStyle probability must be in [0, 1]")
        if self.mixstyle and not self.batch_norm and self.width == 1.0:   # keras.applications' VGG16 (train.model)
            raise ValueError("--mixstyle needs the project's own VGG16 topology: --arch vgg16-bn or --width below 1")
        if self.consistency < 0:
            raise ValueError("the consistency loss weight must be >= 0")
        if not 0 <= self.average_from <= self.epochs:
            raise ValueError(f"--average-from must be between 0 (off) and the number of epochs ({self.epochs})")
        if self.lesion_loss not in ("cam", "head"):
            raise ValueError("the lesion loss must be 'cam' or 'head'")
        if self.scan_region not in SCAN_REGIONS:
            raise ValueError(f"the scan region must be one of {', '.join(SCAN_REGIONS)}, got {self.scan_region!r}")
        if self.colour_marks not in MARK_MODES:
            raise ValueError(f"colour marks must be one of {', '.join(MARK_MODES)}, got {self.colour_marks!r}")
        if self.white_calipers not in CALIPER_MODES:
            raise ValueError(f"white calipers must be one of {', '.join(CALIPER_MODES)}, got {self.white_calipers!r}")
        if self.thin_marks not in THIN_MARKS:
            raise ValueError(f"thin marks must be one of {', '.join(THIN_MARKS)}, got {self.thin_marks!r}")
        if self.grey_map not in GREY_MAPS:
            raise ValueError(f"the grey map must be one of {', '.join(GREY_MAPS)}, got {self.grey_map!r}")
        if self.pair_calipers not in PAIR_CALIPERS:
            raise ValueError(f"pair calipers must be one of {', '.join(PAIR_CALIPERS)}, got {self.pair_calipers!r}")
        if self.data is not None:
            object.__setattr__(self, "data", _as_sources(self.data))

    def _check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.head_epochs < 0:
            raise ValueError("head epochs must be >= 0")
        if self.lr_decay_patience < 0 or not 0 < self.lr_decay_factor <= 1:
            raise ValueError("learning-rate decay: patience must be >= 0 and the factor in (0, 1]")
        if self.image_size < 32:
            raise ValueError("image size must be at least 32 (VGG16 needs 32x32 inputs)")
        if self.lr_schedule not in ("plateau", "cosine"):
            raise ValueError("the learning-rate schedule must be 'plateau' or 'cosine'")
        if self.threshold_method not in ("sensitivity", "youden"):
            raise ValueError("threshold method must be 'sensitivity' or 'youden'")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data"] = list(self.data) if self.data is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict, **changes) -> "TrainConfig":
        """From run.json's "config" (older runs stored `data` as one folder path)."""
        values = {**LEGACY_DEFAULTS, **{k: v for k, v in d.items() if k in cls.__dataclass_fields__}}
        if isinstance(values.get("augment"), dict):
            known = AugmentConfig.__dataclass_fields__
            values["augment"] = AugmentConfig(**{k: v for k, v in values["augment"].items() if k in known})
        if values.get("data") is not None:
            values["data"] = _as_sources(values["data"])
        values.update(changes)
        return cls(**values)

    @property
    def region(self) -> RegionConfig:
        """The scan-region finder settings training crops with (recorded in run.json)."""
        return RegionConfig(mode=self.scan_region, colour_marks=self.colour_marks, white_calipers=self.white_calipers)

    # Settings that may change when resuming (train longer, a run directory that was
    # copied or moved, another number of workers); the rest must match.
    RESUMABLE_CHANGES = ("out", "epochs", "patience", "lr_decay_patience", "lr_decay_factor",
                         "bootstrap_resamples", "strategy")


@dataclass(frozen=True)
class ContrastiveConfig:
    """`bcd pretrain`'s own settings (train.pretrain); the images and how they are read
    come from a TrainConfig."""

    epochs: int = 30
    batch_size: int = 64          # scans per step; each gives two views (2x the images per step)
    learning_rate: float = 1e-3   # Adam, a half cosine down to 1 % of it over the epochs
    temperature: float = 0.2      # NT-Xent: lower sharpens the contrast between neighbours
    projection_units: int = 128   # the projection head's output (discarded after pretraining)
    min_crop: float = 0.35        # smallest share of the scan's area a view keeps

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("pretraining needs at least 1 epoch and 2 scans per batch (the others are the contrast)")
        if self.temperature <= 0 or self.learning_rate <= 0:
            raise ValueError("the temperature and the learning rate must be > 0")
        if not 0.05 <= self.min_crop <= 1.0:
            raise ValueError("the smallest crop must be between 0.05 and 1 of the scan's area")


def _as_sources(data) -> tuple:
    """Normalise `data` to a tuple of source dicts {"path", "name", "mapping"}."""
    items = [data] if isinstance(data, (str, dict, os.PathLike)) else list(data)
    out = []
    for item in items:
        if not isinstance(item, dict):
            item = {"path": str(item), "name": None, "mapping": None}
        out.append({"path": str(item["path"]), "name": item.get("name"), "mapping": item.get("mapping")})
    return tuple(out)


def run_scan_region(info: dict) -> RegionConfig:
    """The scan-region finder a finished run's images were cropped with, from its run.json:
    its "scan_region" record, else its config's setting, else (runs from before the
    finder) off. Evaluation, INT8 calibration data and slimming read images this way."""
    recorded = info.get("scan_region")
    if recorded is not None:
        return region_config_from_dict(recorded, "run.json scan_region")
    config = info.get("config") or {}
    return RegionConfig(mode=config.get("scan_region", LEGACY_DEFAULTS["scan_region"]),
                        colour_marks=config.get("colour_marks", LEGACY_DEFAULTS["colour_marks"]),
                        white_calipers=config.get("white_calipers", LEGACY_DEFAULTS["white_calipers"]))


# The settings that decide what a model's input looks like (the scan region, marks erased
# or opened). A run fine-tuned from another (--weights RUN) must see what its parent saw,
# so `bcd train` takes the parent's for those not given (parent_input_settings), and the
# trainer warns about any given that differ (train.trainer.warn_input_changes).
INPUT_SETTINGS = ("scan_region", "colour_marks", "white_calipers", "thin_marks", "grey_map")


def parent_input_settings(weights) -> dict:
    """The INPUT_SETTINGS of the run directory `weights` names, from its run.json (runs
    from before a setting: LEGACY_DEFAULTS); {} when `weights` is not a run directory."""
    import json
    from pathlib import Path
    if weights in (None, "none", "imagenet") or not Path(weights).is_dir():
        return {}
    try:
        config = json.loads((Path(weights) / "run.json").read_text()).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {key: config.get(key, LEGACY_DEFAULTS[key]) for key in INPUT_SETTINGS}


def saved_scan_region(run_dir) -> str:
    """The scan_region setting of the run in `run_dir` (for --resume without --scan-region)."""
    import json
    from pathlib import Path
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return TrainConfig.__dataclass_fields__["scan_region"].default
    return (info.get("config") or {}).get("scan_region", LEGACY_DEFAULTS["scan_region"])
