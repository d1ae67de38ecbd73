"""`bcd` command line: a thin layer over the library APIs.

Heavy packages (TensorFlow via train/export, Gradio via demo) are imported inside the
subcommand that needs them, so `bcd predict` on a runtime-only install never loads them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from pathlib import Path

from bcd.cli_options import LibraryDefault, field_default, given, is_default, library
from runtime.engines import BACKENDS
from runtime.host import DISCLAIMER, tool_version

log = logging.getLogger("bcd")



class UsageError(Exception):
    """A problem with what the user asked for; printed without a traceback."""


def _setup_logging(log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)


def _missing_extra(extra: str, err: ImportError) -> UsageError:
    return UsageError(f"this command needs the '{extra}' extra ({err.name or err} is not installed): "
                      f"pip install 'breast-cancer-edge[{extra}]'")


# ---- datasets ----------------------------------------------------------------------

_CSV_MAP_HELP = ("how a CSV index's columns map to image path, label, group (patient) and lesion mask; applies to "
                 "the --data given just before it. BUS-BRA's bus_data.csv: "
                 "'path=Images/{ID}.png,label=Pathology,group=Case,mask=Masks/mask_{ID#bus_}.png' "
                 "({COL#PREFIX} drops PREFIX from the value); birads=COLUMN adds the BI-RADS category (for "
                 "--birads-weight). Default: the columns path,label[,group][,mask][,birads]")


class _DataAction(argparse.Action):
    """--data PATH or NAME=PATH, repeatable; a following --csv-map attaches to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append({"text": values, "mapping": None})
        setattr(namespace, self.dest, items)
        namespace._last_data = (self.dest, len(items) - 1)


class _CsvMapAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        last = getattr(namespace, "_last_data", None)
        if last is None:
            parser.error("--csv-map must follow the --data (CSV file) it describes")
        dest, index = last
        getattr(namespace, dest)[index]["mapping"] = values


def _add_data_options(p, dest: str = "data", flag: str = "--data", help_text: str = "", multiple: bool = True) -> None:
    p.add_argument(flag, dest=dest, action=_DataAction, metavar="[NAME=]PATH",
                   help=help_text + (" (repeat it for several datasets)" if multiple else ""))
    if not any(a.dest == "_csv_map" for a in p._actions):
        p.add_argument("--csv-map", dest="_csv_map", action=_CsvMapAction, metavar="MAPPING", help=_CSV_MAP_HELP)


def _sources(items, labels=None, single: str | None = None):
    """DataSource objects for the --data items (errors become usage errors)."""
    from runtime.dataset import CsvMapping, DatasetError, DataSource
    if not items:
        return []
    if single and len(items) > 1:
        raise UsageError(f"{single} takes one dataset")
    try:
        return [DataSource.parse(i["text"], CsvMapping.parse(i["mapping"]) if i["mapping"] else None, labels)
                for i in items]
    except DatasetError as err:
        raise UsageError(str(err)) from None




def _source_dicts(sources) -> tuple:
    """DataSource objects as the config's `data` holds them (saved in run.json)."""
    return tuple({"path": str(s.path), "name": s.name, "mapping": s.mapping.to_dict() if s.mapping else None}
                 for s in sources)


def _add_backend(p, prefix: str = "") -> None:
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help=prefix + "inference engine (default auto: OpenVINO for an .onnx variant when it is installed, "
                        "passed the parity check recorded in the export's backends.json and is the faster engine on "
                        "this CPU by that file's speed record (no record: CPUs with AMX); else ONNX Runtime; LiteRT "
                        "for .tflite)")


# ---- train -------------------------------------------------------------------------

ARCHS = ("vgg16", "vgg16-bn")


def _train(name: str, show=None) -> LibraryDefault:
    return library("train.config:TrainConfig", name, show)


def _arch_name(batch_norm: bool) -> str:
    return ARCHS[1] if batch_norm else ARCHS[0]


PRESETS = ("basic", "ultrasound", "scanner")   # train.augment.PRESETS (not imported here: it loads OpenCV)


def _preset_name(augment) -> str:
    from train.augment import AugmentConfig
    return next((name for name in PRESETS if AugmentConfig.preset(name) == augment), "custom")


def _lr_scratch_text() -> str:
    from train.config import LR_SCRATCH
    return f"{LR_SCRATCH['plain']:g}, or {LR_SCRATCH['batch_norm']:g} with --arch vgg16-bn"


# option dest -> TrainConfig field, for the options passed through as they are
_TRAIN_FIELDS = {"image_size": "image_size", "epochs": "epochs", "weights": "weights", "seed": "seed",
                 "batch_size": "batch_size", "patience": "patience", "lr_decay_patience": "lr_decay_patience",
                 "threshold": "threshold_method", "min_sensitivity": "min_sensitivity", "val_source": "val_source",
                 "precision": "precision", "width": "width", "lesion_weight": "lesion_weight",
                 "lesion_loss": "lesion_loss", "strategy": "strategy", "lr": "lr_scratch",
                 "scan_region": "scan_region", "birads_weight": "birads_weight", "lr_schedule": "lr_schedule",
                 "roi_share": "roi_share", "colour_marks": "colour_marks", "white_calipers": "white_calipers",
                 "pair_calipers": "pair_calipers", "lesion_free_share": "lesion_free_share",
                 "lesion_free_kind": "lesion_free_kind", "presence_weight": "presence_weight",
                 "thin_marks": "thin_marks", "grey_map": "grey_map", "mixstyle": "mixstyle",
                 "consistency": "consistency",
                 "head_epochs": "head_epochs", "average_from": "average_from"}


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train VGG16 on one or more datasets (class folders or CSV indexes) and evaluate it")
    _add_data_options(p, help_text="dataset: a folder of class folders (benign/, malignant/, normal/ ...) or a CSV "
                      "index; NAME= names the source (default: the folder's name, or the CSV's folder's); "
                      "omitted: a small built-in synthetic set, to check the pipeline")
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument("--image-size", type=int, default=_train("image_size"), help="input size (default %(default)s)")
    p.add_argument("--epochs", type=int, default=_train("epochs"), help="epochs at most (default %(default)s)")
    p.add_argument("--weights", default=_train("weights"),
                   help="imagenet | none | PATH to a no-top VGG16 .h5 file | an earlier RUN directory or .keras model "
                        "of the same architecture (fine-tuning from it, offline) (default %(default)s)")
    p.add_argument("--head-epochs", type=int, default=_train("head_epochs"),
                   help="with --weights: epochs with the VGG16 base frozen before it all trains (0: none, e.g. "
                        "to fine-tune an earlier run whose head already fits) (default %(default)s)")
    p.add_argument("--arch", choices=ARCHS, default=_train("batch_norm", _arch_name),
                   help="vgg16 (plain; the only one ImageNet weights fit) or vgg16-bn (batch norm after every "
                        "conv, from scratch; folded into the convs in the saved model) (default %(default)s)")
    p.add_argument("--width", type=float, default=_train("width"),
                   help="share of VGG16's filters per conv layer, e.g. 0.5 (from scratch; default %(default)s)")
    p.add_argument("--augment", choices=PRESETS, default=_train("augment", _preset_name),
                   help="augmentation preset: basic (flips, rotation, zoom, gain, contrast), ultrasound "
                        "(adds gamma, speckle, blur, aspect-ratio crops and pasted burned-in marks) or scanner "
                        "(ultrasound plus calipers on the lesion and curved/sector probe fans) (default %(default)s)")
    p.add_argument("--tgc", type=float, metavar="T", default=library("train.augment:AugmentConfig", "tgc"),
                   help="also vary the gain by depth, as another sonographer's time-gain sliders would: log gain "
                        "drawn in [-T, T] at 5 depths, smooth between, e.g. 0.4 (default %(default)s: off)")
    p.add_argument("--texture", type=float, metavar="P", default=library("train.augment:AugmentConfig", "texture"),
                   help="also filter a share P of the images with a random point-spread filter that keeps each "
                        "region's mean brightness: another scanner's speckle grain, edge enhancement or smoothing, "
                        "e.g. 0.5 (default %(default)s: off)")
    p.add_argument("--mixup", type=float, metavar="S", default=library("train.augment:AugmentConfig", "mixup"),
                   help="also blend a share S of each batch's images with another image of the batch, their labels, "
                        "lesion masks and BI-RADS alike (mixup; weight drawn from Beta(0.4, 0.4), the image's own "
                        "at least half), e.g. 0.5 (default %(default)s: off)")
    p.add_argument("--lesion-weight", type=float, default=_train("lesion_weight"),
                   help="> 0: a loss on the lesion masks (where a source has them) with this weight, e.g. 0.5, so "
                        "that the model looks at the lesion (default %(default)s: off; see --lesion-loss)")
    p.add_argument("--lesion-loss", choices=["cam", "head"], default=_train("lesion_loss"),
                   help="with --lesion-weight: cam pulls the model's own Grad-CAM map toward the lesion; "
                        "head trains an auxiliary segmentation head instead (default %(default)s)")
    p.add_argument("--colour-marks", choices=["inpaint", "keep"], default=_train("colour_marks"),
                   help="coloured marks in the scan (calipers, measurement text): inpaint erases them from every "
                        "image before the model, in training and at run time (runtime/overlay_marks.py); keep "
                        "leaves them (default %(default)s)")
    p.add_argument("--white-calipers", choices=["erase", "keep"], default=_train("white_calipers"),
                   help="white calipers in the scan ('+' or 'x' marks, their dotted line and number): erase finds "
                        "them by their shape and fills them in from the tissue around, in training and at run time "
                        "(runtime/caliper_marks.py); keep leaves them (default %(default)s)")
    p.add_argument("--thin-marks", choices=["open", "keep"], default=_train("thin_marks"),
                   help="thin bright marks in the scan (calipers' strokes, dotted lines, thin text): open removes "
                        "every bright detail under about a third of an input pixel wide before the resize "
                        "(microcalcifications too), in training and at run time (recorded in the model's "
                        "preprocessing); keep leaves them (default %(default)s; docs/scanner-images.md)")
    p.add_argument("--grey-map", choices=["equalize", "keep"], default=_train("grey_map"),
                   help="equalize: equalize each image's grey levels after augmentation, in training and at run time "
                        "(recorded in the model's preprocessing), so that no site's gain or grey map can be learnt; "
                        "keep leaves them (default %(default)s)")
    p.add_argument("--roi-share", type=float, default=_train("roi_share"),
                   help="share of training images shown, each time, as a lesion-centred crop (a box drawn like a "
                        "clinician's around the lesion mask, from the full-resolution scan) so that the model also "
                        "reads `bcd predict --roi` boxes, e.g. 0.3 (default %(default)s: whole images only)")
    p.add_argument("--lesion-free-share", type=float, default=_train("lesion_free_share"),
                   help="share of the lesion images (those not shown as a lesion crop) shown, each time, as a crop "
                        "of their tissue clear of the lesion, labelled benign, so that the model also learns "
                        "scans with nothing in them, e.g. 0.25 (default %(default)s: off)")
    p.add_argument("--lesion-free-kind", choices=["crop", "erased", "erased-benign"], default=_train("lesion_free_kind"),
                   help="what --lesion-free-share shows: crop, a crop of the tissue beside the lesion; erased, the "
                        "whole scan with its lesion replaced by the tissue beside it at the same depth; "
                        "erased-benign, the same for images labelled benign only (default %(default)s)")
    p.add_argument("--presence-weight", type=float, default=_train("presence_weight"),
                   help="> 0: the probability becomes P(malignant | a lesion) x P(a lesion); the second factor learns "
                        "with this loss weight, e.g. 0.5, from the scans with no lesion (a class folder named normal, "
                        "--lesion-free-share samples) against the rest, the first from the scans with a lesion only, "
                        "so that empty tissue can be rated low without benign lesions paying for it "
                        "(default %(default)s: off)")
    p.add_argument("--mixstyle", type=float, metavar="P", default=_train("mixstyle"),
                   help="> 0: MixStyle in training, on a share P of the batches (e.g. 0.5): after VGG16's blocks 1-3 "
                        "each image's feature statistics are mixed with another image's, so that the model meets "
                        "scanner looks the training set does not hold. Needs --arch vgg16-bn or --width below 1; "
                        "the saved model is unchanged at inference (default %(default)s: off)")
    p.add_argument("--consistency", type=float, default=_train("consistency"),
                   help="> 0: every batch also shows its images as a scanner's screen does (a curved or sector "
                        "fan, calipers on the lesion, the scan's box a few pixels off) and a loss with this weight, "
                        "e.g. 1, pays for any change in the probability; fans and calipers then leave the "
                        "augmentation for that second view. About twice the time per epoch (default %(default)s: off)")
    p.add_argument("--pair-calipers", choices=["any", "white"], default=_train("pair_calipers"),
                   help="with --consistency: the calipers of the screen view. white: white to light grey on 80 %% "
                        "of the pairs, as what is left once coloured marks are erased (--colour-marks inpaint); "
                        "any: every colour on half, as runs before it (default %(default)s)")
    p.add_argument("--average-from", type=int, metavar="EPOCH", default=_train("average_from"),
                   help="> 0: the saved model is the mean of the weights after each epoch from EPOCH (1-based) to "
                        "the last, instead of the epoch with the best validation AUC: no epoch is chosen on the "
                        "validation images (an honest --val-source estimate). Set --patience so that training "
                        "reaches EPOCH (default %(default)s: off)")
    p.add_argument("--birads-weight", type=float, default=_train("birads_weight"),
                   help="> 0: also learn the radiologists' BI-RADS category (an ordinal head, training only) with "
                        "this loss weight, on the CSV rows that have one (--csv-map ...,birads=COLUMN) "
                        "(default %(default)s: off)")
    p.add_argument("--val-source", metavar="NAME", default=_train("val_source"),
                   help="hold this source out entirely as the validation split (early stopping, threshold): an honest "
                        "estimate of a hospital the model has not seen")
    p.add_argument("--scan-region", choices=["auto", "off"], default=_train("scan_region"),
                   help="auto: cut every image and its lesion mask to its scan region (a DICOM file's tissue region, "
                        "else the scan-region finder), as `bcd predict` does; off: whole images. Recorded in the run "
                        "and its exports. With --resume and no --scan-region: the run's own setting (default %(default)s)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default=_train("precision"),
                   help="auto: mixed bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX), "
                        "else float32. The saved model is float32 either way (default %(default)s)")
    p.add_argument("--seed", type=int, default=_train("seed"), help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=_train("batch_size"),
                   help="images per step and replica (default %(default)s); with several replicas a step takes "
                        "batch size x replicas images")
    p.add_argument("--strategy", choices=["auto", "none", "mirrored", "multiworker"], default=_train("strategy"),
                   help="tf.distribute: auto (all GPUs when there are several, else one device), none, "
                        "mirrored (this machine's GPUs), multiworker (several machines, one process each, "
                        "described by the TF_CONFIG environment variable; see docs/training.md) (default %(default)s)")
    p.add_argument("--patience", type=int, default=_train("patience"),
                   help="early stopping: epochs without validation AUC gain (default %(default)s)")
    p.add_argument("--lr", type=float, default=LibraryDefault(_lr_scratch_text),
                   help="learning rate from scratch (Adam; default %(default)s)")
    p.add_argument("--lr-decay-patience", type=int, default=_train("lr_decay_patience"),
                   help="multiply the learning rate by 0.3 after this many epochs without validation AUC gain "
                        "(default %(default)s; 0 turns it off)")
    p.add_argument("--lr-schedule", choices=["plateau", "cosine"], default=_train("lr_schedule"),
                   help="plateau: lower the rate after --lr-decay-patience epochs without gain; cosine: a half "
                        "cosine from --lr down to 1e-6 over each phase's epochs (default %(default)s)")
    p.add_argument("--labels", default=_train("class_labels", lambda d: ",".join(f"{k}={v}" for k, v in d.items())),
                   help="class folder / label value to label map (default %(default)s)")
    p.add_argument("--threshold", choices=["sensitivity", "youden"], default=_train("threshold_method"),
                   help="operating threshold chosen on validation: best specificity at sensitivity >= "
                        "--min-sensitivity, or Youden's J (default %(default)s)")
    p.add_argument("--min-sensitivity", type=float, default=_train("min_sensitivity"), help="default %(default)s")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=_cmd_train)


def train_config(args, sources=(), labels=None):
    """The TrainConfig that `bcd train` ARGS ask for (only the given options are set)."""
    from dataclasses import replace

    from train.augment import AugmentConfig
    from train.config import TrainConfig, parent_input_settings, saved_scan_region

    options = given(args, _TRAIN_FIELDS)
    if is_default(args.scan_region) and args.resume:     # resuming keeps the run's own setting
        options["scan_region"] = saved_scan_region(args.out)
    elif not args.resume:     # fine-tuning keeps its parent's input settings unless given
        for key, value in parent_input_settings(options.get("weights")).items():
            options.setdefault(key, value)
    if not isinstance(args.arch, LibraryDefault):
        options["batch_norm"] = args.arch == "vgg16-bn"
    if not isinstance(args.augment, LibraryDefault):
        options["augment"] = AugmentConfig.preset(args.augment)
    for name in ("tgc", "texture", "mixup"):   # added to the preset given, else to the config's default
        if not isinstance(getattr(args, name), LibraryDefault):
            augment = options.get("augment", field_default(TrainConfig, "augment"))
            options["augment"] = replace(augment, **{name: getattr(args, name)})
    if labels is not None:
        options["class_labels"] = labels.to_dict()
    if sources:
        options["data"] = _source_dicts(sources)
    try:
        return TrainConfig(out=str(args.out), **options)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _cmd_train(args) -> int:
    try:
        from runtime.dataset import LabelMap
        from train.distribute import writes_run_dir
        from train.trainer import LOG_NAME, train
    except ImportError as err:
        raise _missing_extra("train", err)
    labels = None if isinstance(args.labels, LibraryDefault) else LabelMap.parse(args.labels)
    sources = _sources(args.data, labels)
    config = train_config(args, sources, labels)
    if config.val_source and config.val_source not in {s.name for s in sources}:
        raise UsageError(f"--val-source {config.val_source}: not one of the sources "
                         f"({', '.join(s.name for s in sources) or 'none given'})")
    chief = writes_run_dir(config.strategy)     # a non-chief worker logs to stderr only
    _setup_logging(args.out / LOG_NAME if chief else None)
    run = train(config, resume=args.resume)
    if not chief:
        print(f"\nworker done: the chief wrote the run directory {run.root}")
        return 0
    print(f"\nrun written to {run.root}: model.keras, split.json, metrics.json, metrics.md, plots/")
    print((run.root / "metrics.md").read_text())
    return 0


# ---- pretrain -----------------------------------------------------------------------

def _pretrain(name: str) -> LibraryDefault:
    return library("train.config:ContrastiveConfig", name)


# option dest -> TrainConfig field (what the images are and how they are read)
_PRETRAIN_DATA_FIELDS = {"image_size": "image_size", "seed": "seed", "precision": "precision", "width": "width",
                         "scan_region": "scan_region", "colour_marks": "colour_marks",
                         "white_calipers": "white_calipers", "thin_marks": "thin_marks", "grey_map": "grey_map"}
# option dest -> ContrastiveConfig field
_PRETRAIN_FIELDS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "learning_rate",
                    "temperature": "temperature", "min_crop": "min_crop"}


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pretraining of the conv base on unlabelled scans "
                                        "(contrastive, SimCLR), to start `bcd train --weights RUN` from")
    _add_data_options(p, help_text="scans to learn from, read as `bcd train` reads them (their labels only feed a "
                      "monitor); for an honest held-out-hospital estimate leave that hospital out")
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument("--image-size", type=int, default=_train("image_size"), help="input size (default %(default)s)")
    p.add_argument("--arch", choices=ARCHS, default="vgg16-bn",
                   help="as `bcd train --arch`; the fine-tuning run must use the same (default %(default)s)")
    p.add_argument("--width", type=float, default=_train("width"),
                   help="share of VGG16's filters per conv layer; the fine-tuning run must use the same "
                        "(default %(default)s)")
    p.add_argument("--epochs", type=int, default=_pretrain("epochs"), help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=_pretrain("batch_size"),
                   help="scans per step, each seen as two views; the other scans of the batch are the contrast "
                        "(default %(default)s)")
    p.add_argument("--lr", type=float, default=_pretrain("learning_rate"),
                   help="Adam learning rate, a half cosine down to 1 %% of it (default %(default)s)")
    p.add_argument("--temperature", type=float, default=_pretrain("temperature"),
                   help="of the contrastive loss (default %(default)s)")
    p.add_argument("--min-crop", type=float, default=_pretrain("min_crop"),
                   help="smallest share of a scan's area that a view keeps (default %(default)s)")
    p.add_argument("--colour-marks", choices=["inpaint", "keep"], default=_train("colour_marks"),
                   help="as `bcd train`; a run fine-tuned from this one inherits it (default %(default)s)")
    p.add_argument("--white-calipers", choices=["erase", "keep"], default=_train("white_calipers"),
                   help="as `bcd train`; inherited likewise (default %(default)s)")
    p.add_argument("--thin-marks", choices=["open", "keep"], default=_train("thin_marks"),
                   help="as `bcd train`; inherited likewise (default %(default)s)")
    p.add_argument("--grey-map", choices=["equalize", "keep"], default=_train("grey_map"),
                   help="as `bcd train`; inherited likewise (default %(default)s)")
    p.add_argument("--scan-region", choices=["auto", "off"], default=_train("scan_region"),
                   help="as `bcd train`; inherited likewise (default %(default)s)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default=_train("precision"),
                   help="as `bcd train` (default %(default)s)")
    p.add_argument("--seed", type=int, default=_train("seed"), help="default %(default)s")
    p.add_argument("--resume", action="store_true", help="continue an interrupted pretraining in --out")
    p.set_defaults(func=_cmd_pretrain)


def pretrain_configs(args, sources=()):
    """The (TrainConfig for the images, ContrastiveConfig) that `bcd pretrain` ARGS ask for."""
    from train.augment import AugmentConfig
    from train.config import ContrastiveConfig, TrainConfig

    options = given(args, _PRETRAIN_DATA_FIELDS)
    if sources:
        options["data"] = _source_dicts(sources)
    try:
        # the views' augmentation: the scanner preset, so that the features learn to ignore what a
        # scanner's screen adds (fans, calipers, marks) and what differs between sites (gain, speckle, blur)
        return (TrainConfig(out=str(args.out), batch_norm=args.arch == "vgg16-bn",
                            augment=AugmentConfig.preset("scanner"), **options),
                ContrastiveConfig(**given(args, _PRETRAIN_FIELDS)))
    except ValueError as err:
        raise UsageError(str(err)) from None


def _cmd_pretrain(args) -> int:
    try:
        from train.pretrain import LOG_NAME, pretrain
    except ImportError as err:
        raise _missing_extra("train", err)
    data_config, config = pretrain_configs(args, _sources(args.data))
    _setup_logging(args.out / LOG_NAME)
    run = pretrain(data_config, config, resume=args.resume)
    print(f"\npretrained conv base written to {run.root}: model.keras (its head untrained), history.json, plots/\n"
          f"fine-tune it: bcd train --weights {run.root} --arch {args.arch} --width {data_config.width:g} "
          f"--image-size {data_config.image_size} ...")
    return 0


# ---- slim --------------------------------------------------------------------------

def _macs(text: str) -> float:
    """'2.5e9', '2500M' or '2.5G' multiply-accumulates per image."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of MACs: {text!r} (e.g. 2.5e9 or 2.5G)") from None


def _slim(name: str) -> LibraryDefault:
    return library("train.slim:SlimConfig", name)


_SLIM_FIELDS = {"ratio": "ratio", "target_macs": "target_macs", "criterion": "criterion", "min_filters": "min_filters",
                "epochs": "epochs", "patience": "patience", "lr": "learning_rate",
                "lr_decay_patience": "lr_decay_patience", "batch_size": "batch_size"}


def _add_slim(sub) -> None:
    p = sub.add_parser("slim", help="prune a finished run's VGG16 to fewer conv filters (faster on CPU), "
                                    "fine-tune and evaluate it as a new run")
    p.add_argument("run", type=Path, help="finished run directory from `bcd train` (or `bcd slim`)")
    p.add_argument("--out", type=Path, required=True, help="new run directory to create")
    # not an argparse mutually exclusive group: both given is reported like every other usage error
    p.add_argument("--ratio", type=float, help="share of every conv layer's filters to remove, in (0, 1) "
                     "(default 0.5: about a quarter of the MACs remain)")
    p.add_argument("--target-macs", type=_macs, metavar="MACS",
                     help="instead of --ratio: remove just enough filters (the same share in every layer) to fit "
                          "this many multiply-accumulates per image, e.g. 1.5G")
    p.add_argument("--epochs", type=int, default=_slim("epochs"), help="fine-tuning epochs at most (default %(default)s)")
    p.add_argument("--patience", type=int, default=_slim("patience"),
                   help="early stopping: epochs without validation AUC gain (default %(default)s)")
    p.add_argument("--lr", type=float, default=_slim("learning_rate"),
                   help="fine-tuning learning rate, Adam (default %(default)s)")
    p.add_argument("--lr-decay-patience", type=int, default=_slim("lr_decay_patience"),
                   help="multiply the learning rate by 0.3 after this many epochs without validation AUC gain "
                        "(default %(default)s; 0 turns it off)")
    p.add_argument("--batch-size", type=int, help="default: the parent run's")
    p.add_argument("--criterion", choices=["l1", "activation"], default=_slim("criterion"),
                   help="filter importance: l1, the L1 norm of the filter's weights; activation, its mean "
                        "output on 128 training images (default %(default)s)")
    p.add_argument("--min-filters", type=int, default=_slim("min_filters"),
                   help="never keep fewer filters in a layer (default %(default)s)")
    p.add_argument("--data", type=Path, help="where the parent run's dataset lives now, if it moved")
    p.add_argument("--resume", action="store_true", help="continue an interrupted slim run in --out")
    p.set_defaults(func=_cmd_slim)


def _cmd_slim(args) -> int:
    try:
        from train.slim import SlimConfig, open_parent, slim
        from train.trainer import LOG_NAME
    except ImportError as err:
        raise _missing_extra("train", err)
    if args.ratio is not None and args.target_macs is not None:
        raise UsageError("give either --ratio or --target-macs, not both")
    try:
        config = SlimConfig(parent=str(args.run), out=str(args.out), data=str(args.data) if args.data else None,
                            **{k: v for k, v in given(args, _SLIM_FIELDS).items() if v is not None})
        open_parent(args.run)
    except ValueError as err:   # bad numbers, or RUN is not a finished run
        raise UsageError(str(err)) from None
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    if not args.resume and args.out.exists() and any(p.name != LOG_NAME for p in args.out.iterdir()):
        raise UsageError(f"--out {args.out} already holds files; choose another directory "
                         "(or --resume to continue a slim run there)")
    _setup_logging(args.out / LOG_NAME)
    run = slim(config, resume=args.resume)
    print(f"\nslim run written to {run.root}: model.keras, split.json, metrics.json, metrics.md, plots/")
    print((run.root / "metrics.md").read_text())
    return 0


# ---- adapt -------------------------------------------------------------------------

def _adapt(name: str) -> LibraryDefault:
    return library("train.site_adapt:AdaptConfig", name)


def _add_adapt(sub) -> None:
    p = sub.add_parser("adapt", help="try fitting a model to a new site's scanner from the site's own unlabelled "
                                     "scans (its conv layers' statistics): an export (runtime install + onnx) "
                                     "or a finished run (TensorFlow)")
    p.add_argument("source", type=Path, metavar="EXPORT_OR_RUN",
                   help="export directory from `bcd export`, a shipped model's name (bus-vgg16-w50-128), or "
                        "finished run directory from `bcd train` / `bcd slim`")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="the site's scans: folders (searched recursively) or image files; labels are not read")
    p.add_argument("--out", type=Path, required=True,
                   help="new directory to create: an export for an export, a run for a run")
    p.add_argument("--max-images", type=int, default=_adapt("max_images"),
                   help="use a random subset of this many of the site's scans, if there are more (default %(default)s)")
    p.add_argument("--layers", choices=["early", "all"], default=_adapt("layers"),
                   help="conv layers to align: early (blocks 1-3, the 7 nearest the pixels) or all 13 "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=_adapt("seed"), help="for the random subsets (default %(default)s)")
    p.set_defaults(func=_cmd_adapt)


def _cmd_adapt(args) -> int:
    if args.out.exists():
        raise UsageError(f"--out {args.out} already exists; choose a new directory")
    source = _shipped_or_path(args.source)
    if (source / "manifest.json").is_file():
        return _adapt_export(args, source)
    try:
        from train.site_adapt import AdaptConfig, adapt_run
    except ImportError as err:
        raise _missing_extra("train", err)
    _setup_logging()
    run = adapt_run(_adapt_config(AdaptConfig, args, run_dir=str(source)))
    return _adapted(f"run written to {run.root}: model.keras, run.json, split.json", args.source, "RUN",
                    "; then bcd export it")


def _adapt_config(cls, args, **source):
    """AdaptConfig or ExportAdaptConfig from the command line; a bad value is a usage error."""
    try:
        return cls(**source, data=tuple(str(d) for d in args.data), out=str(args.out),
                   **given(args, {"max_images": "max_images", "layers": "layers", "seed": "seed"}))
    except ValueError as err:
        raise UsageError(str(err)) from None


def _shipped_or_path(path: Path) -> Path:
    """A directory as given, or a shipped model named by its folder name (bus-vgg16-w50-128)."""
    if path.exists():
        return path
    from runtime.shipped import shipped_models
    named = [m for m in shipped_models() if m.name == str(path)]
    if not named:
        raise UsageError(f"{path}: no such directory, nor a shipped model of that name")
    return named[0]


def _adapt_export(args, source: Path) -> int:
    from runtime.site_adapt import ExportAdaptConfig, adapt_export
    _setup_logging()
    out = adapt_export(_adapt_config(ExportAdaptConfig, args, export_dir=str(source)))
    return _adapted(f"export written to {out}", args.source, "EXPORT")


def _adapted(written: str, parent: Path, kind: str, then: str = "") -> int:
    print(f"\nadapted {written}. It is not a sure gain: score it and {parent} on labelled scans of the site "
          f"(bcd evaluate {kind} --data SITE_DATA) and keep the better{then}. The threshold is the parent's (set the "
          f"site's own with bcd calibrate).")
    return 0


# ---- evaluate ----------------------------------------------------------------------

def _evaluate(name: str) -> LibraryDefault:
    return library("train.evaluate:EvaluateConfig", name)


_EVALUATE_FIELDS = {"model": "model", "split": "split", "flip_tta": "flip_tta", "variant": "variant",
                    "backend": "backend", "split_root": "split_root", "out": "out", "bootstrap": "bootstrap"}


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run's or an export's test split, or a labelled folder with --data")
    p.add_argument("model", type=Path, nargs="?",
                   help="run directory (or its model.keras), or an export directory (scored through the runtime, "
                        "as a clinic runs it; default: the shipped reference model)")
    _add_data_options(p, help_text="score every labelled image of this dataset (class folders or a CSV index) "
                      "instead of the test split")
    p.add_argument("--split", choices=["val", "test"], default=_evaluate("split"),
                   help="which part of the saved split to score (default %(default)s; a run's other splits and flip "
                        "averaging are written to RUN/eval-<split>[-flip]/)")
    p.add_argument("--flip-tta", action="store_true",
                   help="run directory only: average each probability with the left-right mirrored image's "
                        "(test-time augmentation; measure it on --split val)")
    p.add_argument("--variant", help="export directory only: variant to score (default as `bcd predict`)")
    _add_backend(p, "export directory only: ")
    p.add_argument("--split-root", type=Path, help="where the run's dataset lives now, if it moved")
    p.add_argument("--out", type=Path, help="output folder (default: with --data RUN/eval-<folder name>; for an "
                   "export EXPORT/eval-<variant>-<split or folder>)")
    p.add_argument("--bootstrap", type=int, default=_evaluate("bootstrap"),
                   help="bootstrap resamples for the 95%% CIs (default %(default)s)")
    _add_site_flags(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    try:
        from train import evaluate
    except ImportError as err:
        raise _missing_extra("train", err)
    try:
        if args.site and args.no_site:
            raise ValueError("give either --site or --no-site, not both")
        config = evaluate.EvaluateConfig(data=tuple(_sources(args.data)), site=args.site, no_site=args.no_site,
                                         **given(args, _EVALUATE_FIELDS))
    except ValueError as err:
        raise UsageError(str(err)) from None
    _setup_logging()
    print(evaluate.metrics_markdown(evaluate.evaluate(config)))
    return 0


# ---- calibrate ---------------------------------------------------------------------

def _site_profile(name: str) -> LibraryDefault:
    return library("train.fit_site_profile:SiteProfileConfig", name)


_SITE_PROFILE_FIELDS = {"method": "method", "min_per_class": "min_per_class", "max_ci_width": "max_ci_width",
                        "bootstrap": "n_resamples", "force": "force", "name": "name"}


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="set a site's own operating point for an export on its labelled images: "
                                         "writes a site profile for --site (the model file is not changed)")
    p.add_argument("model", type=Path, nargs="?", metavar="EXPORT_DIR",
                   help="export directory (default: $BCD_MODEL, else the shipped reference model)")
    _add_data_options(p, multiple=False, help_text="SITE_DATA (required): the site's labelled images, a folder "
                      "with benign/, malignant/ (normal/) sub-folders or a CSV index")
    p.add_argument("--out", type=Path, required=True, metavar="SITE_PROFILE",
                   help="site profile to write (JSON; a Markdown report is written beside it)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-sensitivity", type=float, metavar="S", default=_site_profile("target_value"),
                        help="best specificity at sensitivity >= S (the default target, S = %(default)s)")
    target.add_argument("--target-specificity", type=float, metavar="S", help="best sensitivity at specificity >= S")
    target.add_argument("--youden", action="store_true", help="maximise sensitivity + specificity - 1")
    p.add_argument("--method", choices=["threshold", "platt", "isotonic"], default=_site_profile("method"),
                   help="threshold only, or also recalibrate the probabilities first: platt (2 numbers) "
                        "or isotonic (a lookup table) (default %(default)s)")
    p.add_argument("--variant", help="variant to calibrate (default as `bcd predict`); the profile applies to it only")
    p.add_argument("--name", help="the profile's name shown in reports and the demo (default: the file's stem)")
    p.add_argument("--min-per-class", type=int, default=_site_profile("min_per_class"),
                   help="refuse with fewer malignant or benign images than this (default %(default)s)")
    p.add_argument("--max-ci-width", type=float, default=_site_profile("max_ci_width"),
                   help="refuse when the 95%% CI of the target metric is wider than this (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=_site_profile("n_resamples"),
                   help="bootstrap resamples for the 95%% CIs (default %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="write the profile even when the data is too small for the target (recorded in it)")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args) -> int:
    try:
        from train.fit_site_profile import SiteProfileConfig, write_site_profile
    except ImportError as err:
        raise _missing_extra("train", err)
    from runtime.shipped import default_model_path
    model = args.model or default_model_path()
    if model is None or not Path(model).is_dir():
        raise UsageError(f"{model or 'EXPORT_DIR'}: give an export directory from `bcd export` to calibrate")
    if not args.data:
        raise UsageError("--data SITE_DATA is required: the site's labelled images (class folders or a CSV index)")
    source = _sources(args.data, single="--data")[0]
    if args.out.exists():
        raise UsageError(f"--out {args.out} already exists; choose another name (or delete it first)")
    options = given(args, _SITE_PROFILE_FIELDS)
    if args.target_specificity is not None:
        options.update(target="specificity", target_value=args.target_specificity)
    elif args.youden:
        options["target"] = "youden"
    elif not is_default(args.target_sensitivity):
        options.update(target="sensitivity", target_value=args.target_sensitivity)
    try:
        config = SiteProfileConfig(**options)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _setup_logging()
    result = write_site_profile(model, source, args.out, config, variant=args.variant)
    print(result.report)
    print(f"site profile written to {result.profile_path} (report: {result.report_path.name}); "
          f"use it with --site {result.profile_path} or BCD_SITE={result.profile_path}")
    return 0


# ---- site profiles (predict, evaluate, demo) -------------------------------------------

def _add_site_flags(p) -> None:
    p.add_argument("--site", type=Path, metavar="SITE_PROFILE",
                   help="use a site profile from `bcd calibrate`: the site's own threshold (and recalibration) "
                        "instead of the export's (default: $BCD_SITE if set)")
    p.add_argument("--no-site", action="store_true", help="ignore $BCD_SITE: use the export's own threshold")


def _site(args) -> Path | None:
    from runtime.site_profile import site_path
    if args.site and args.no_site:
        raise UsageError("give either --site or --no-site, not both")
    return site_path(args.site, args.no_site)


# ---- export ------------------------------------------------------------------------

def _export(name: str, show=None) -> LibraryDefault:
    return library("export.config:ExportConfig", name, show)


_EXPORT_FIELDS = {"calib_size": "calib_size", "calib_method": "calib_method", "int8_weights": "int8_weights",
                  "qat": "qat_epochs",
                  "max_auc_drop": "max_auc_drop", "max_flip_rate": "max_flip_rate", "opset": "onnx_opset",
                  "sparsity": "sparsity", "sparsity_epochs": "sparsity_epochs", "ood_quantile": "ood_quantile"}


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run to ONNX/TFLite variants, check each against the Keras model, "
                                      "write manifest.json")
    p.add_argument("run", type=Path, help="run directory from `bcd train`")
    p.add_argument("--out", type=Path, required=True, help="export directory to write")
    p.add_argument("--formats", default=None,
                   help="comma-separated variants (default: all but QAT): onnx-fp32, onnx-int8, onnx-fp16, "
                        "tflite-fp32, tflite-fp16, tflite-dynamic, tflite-int8; with --qat also onnx-int8-qat, "
                        "tflite-int8-qat")
    _add_data_options(p, dest="calib_data", flag="--calib-data", multiple=False,
                      help_text="labelled dataset (class folders or CSV index) of calibration images (default: the "
                                "run's training split)")
    p.add_argument("--calib-size", type=int, default=_export("calib_size"),
                   help="INT8 calibration images, at most (default %(default)s)")
    p.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"], default=_export("calib_method"),
                   help="ONNX Runtime calibration method for onnx-int8 (default %(default)s)")
    p.add_argument("--int8-weights", choices=["auto", "7bit", "uint8"], default=_export("int8_weights"),
                   help="how onnx-int8 stores its weights: 7bit (the fastest), uint8 (8-bit precision on every "
                        "CPU, slower), auto (default: 7bit, and uint8 when the 7-bit file fails the parity checks)")
    p.add_argument("--qat", type=int, default=_export("qat_epochs"), metavar="EPOCHS",
                   help="also export quantization-aware-trained INT8 variants, fine-tuned EPOCHS epochs")
    _add_data_options(p, multiple=False, help_text="labelled dataset (class folders or CSV index) for the parity "
                      "checks (default: the run's validation split)")
    p.add_argument("--max-auc-drop", type=float, default=_export("max_auc_drop"),
                   help="tolerated AUC drop vs Keras (default %(default)s)")
    p.add_argument("--max-flip-rate", type=float, default=_export("max_flip_rate"),
                   help="tolerated share of changed decisions at the operating threshold (default %(default)s)")
    p.add_argument("--opset", type=int, default=_export("onnx_opset"), help="ONNX opset (default %(default)s)")
    p.add_argument("--sparsity", type=float, default=_export("sparsity"), metavar="FRACTION",
                   help="also export magnitude-pruned variants (onnx-fp32-sparseNN, onnx-int8-sparseNN) with this "
                        "share of zero weights, e.g. 0.5: a smaller COMPRESSED download, NOT faster in ONNX Runtime")
    p.add_argument("--sparsity-epochs", type=int, default=_export("sparsity_epochs"),
                   help="fine-tuning epochs on the training split while pruning (default %(default)s)")
    p.add_argument("--ood-quantile", type=float, default=_export("ood_quantile"),
                   help="out-of-distribution flag threshold: this quantile of each variant's scores on the "
                        "validation split (default %(default)s: about 1%% of validation images flagged)")
    p.add_argument("--ood-layers", default=_export("ood_layers", ",".join),
                   help="comma-separated layers whose pooled activations the out-of-distribution score uses "
                        "(default %(default)s; see export/README.md for the measured trade-offs)")
    p.add_argument("--no-ood", action="store_true",
                   help="leave out the out-of-distribution score (no image is ever flagged)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    try:
        from export import ExportConfig, export_run
        from export.summary import summary_table
    except ImportError as err:
        raise _missing_extra("export", err)
    if not args.run.is_dir():
        raise UsageError(f"{args.run}: no such run directory")
    calib = (_sources(args.calib_data, single="--calib-data") or [None])[0]
    parity = (_sources(args.data, single="--data") or [None])[0]
    options = given(args, _EXPORT_FIELDS)
    if args.formats:
        options["formats"] = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    if not is_default(args.ood_layers):
        options["ood_layers"] = tuple(x.strip() for x in args.ood_layers.split(",") if x.strip())
    config = ExportConfig(run_dir=str(args.run), out=str(args.out), calib_data=calib, parity_data=parity,
                          ood=not args.no_ood, **options)
    _setup_logging()
    result = export_run(config)
    print(summary_table(result.manifest, result.seconds))
    print(f"\nexport written to {result.export_dir} (manifest: {result.manifest_path.name})")
    return 0 if result.ok else 1


# ---- localiser (issue 21: the proposed lesion box) -----------------------------------

def _localiser(name: str) -> LibraryDefault:
    return library("train.localiser:LocaliserConfig", name)


_LOCALISER_FIELDS = {"epochs": "epochs", "patience": "patience", "batch_size": "batch_size", "lr": "learning_rate",
                     "max_minutes": "max_minutes", "seed": "seed", "margin": "margin"}


def _add_localiser(sub) -> None:
    p = sub.add_parser("localiser", help="train the lesion localiser (proposes the lesion box) on a finished run's "
                                         "masks, or add a trained one to an export with --export")
    p.add_argument("run", type=Path, help="finished run directory from `bcd train` (its split and data)")
    p.add_argument("--out", type=Path, help="localiser directory (default RUN/localiser; `bcd export RUN` includes "
                                            "RUN/localiser when it is there)")
    p.add_argument("--export", type=Path, metavar="EXPORT_DIR",
                   help="instead of training: add the trained localiser to this export directory (its manifest "
                        "gets a 'localiser' section; the classifier's files are not touched)")
    p.add_argument("--epochs", type=int, default=_localiser("epochs"), help="epochs at most (default %(default)s)")
    p.add_argument("--patience", type=int, default=_localiser("patience"),
                   help="early stopping: epochs without a gain in lesions found on the validation split "
                        "(default %(default)s)")
    p.add_argument("--max-minutes", type=float, default=_localiser("max_minutes"),
                   help="stop after the epoch that passes this much wall time (default: no limit)")
    p.add_argument("--batch-size", type=int, default=_localiser("batch_size"), help="default %(default)s")
    p.add_argument("--lr", type=float, default=_localiser("learning_rate"),
                   help="Adam learning rate, cosine decay over the epochs (default %(default)s)")
    p.add_argument("--seed", type=int, default=_localiser("seed"), help="default %(default)s")
    p.add_argument("--margin", type=float, default=_localiser("margin"),
                   help="share of the proposed box's side added on each side (default %(default)s: predict "
                        "--roi auto's)")
    p.add_argument("--data", type=Path, help="where the run's dataset lives now, if it moved")
    p.add_argument("--resume", action="store_true", help="continue an interrupted localiser training")
    p.add_argument("--rescore", action="store_true",
                   help="no training: choose the map threshold again on the validation split (e.g. with another "
                        "--margin) and score val and test with the trained localiser")
    p.set_defaults(func=_cmd_localiser)


def localiser_config(args):
    """The LocaliserConfig of `bcd localiser` options (the library fills in what is not given)."""
    from train.localiser import LocaliserConfig
    return LocaliserConfig(run=str(args.run), out=str(args.out) if args.out else None,
                           data=str(args.data) if args.data else None, **given(args, _LOCALISER_FIELDS))


def _cmd_localiser(args) -> int:
    try:
        from train.localiser import LocaliserDir, LocaliserError, rescore_localiser, train_localiser
        from train.slim import open_parent
    except ImportError as err:
        raise _missing_extra("train", err)
    try:
        config = localiser_config(args)
        open_parent(args.run)
    except ValueError as err:   # bad numbers, or RUN is not a finished run
        raise UsageError(str(err)) from None
    folder = LocaliserDir.of(config)
    try:
        if args.export is not None:
            return _add_localiser_to(folder, args.export)
        if args.rescore:
            _setup_logging(folder.log)
            rescore_localiser(config)
            print(folder.metrics_md.read_text())
            return 0
        if folder.finished and not args.resume:
            raise UsageError(f"{folder.root} already holds a trained localiser: add it to an export with --export "
                             "DIR, or choose another --out to train again")
        _setup_logging(folder.log)
        train_localiser(config, resume=args.resume)
    except LocaliserError as err:
        raise UsageError(str(err)) from None
    print(f"\nlocaliser written to {folder.root}: localiser.keras, metrics.json, metrics.md, history.json")
    print(folder.metrics_md.read_text())
    print(f"`bcd export {args.run} --out DIR` now includes it; or: bcd localiser {args.run} --export EXPORT_DIR")
    return 0


def _add_localiser_to(folder, export_dir: Path) -> int:
    try:
        from export.localiser import add_localiser, describe
    except ImportError as err:
        raise _missing_extra("export", err)
    if not (export_dir / "manifest.json").is_file():
        raise UsageError(f"--export {export_dir}: not an export directory (no manifest.json)")
    _setup_logging()
    entry = add_localiser(folder.root, export_dir)
    print(f"{describe(entry)}\nadded to {export_dir} (manifest.json updated)")
    return 0


# ---- predict -----------------------------------------------------------------------

_PROGRESS_MIN = 20  # report progress on stderr from this many images on


def _predict(name: str) -> LibraryDefault:
    return library("runtime.predict_files:PredictConfig", name)


_PREDICT_FIELDS = {"model": "model", "variant": "variant", "threads": "threads", "backend": "backend",
                   "max_pixels": "max_pixels", "batch_size": "batch_size", "force": "force",
                   "heatmap": "heatmap_dir", "partial_every": "partial_every", "region": "region",
                   "frames": "frames", "roi": "roi", "rois": "rois"}


def predict_config(args):
    """The PredictConfig that `bcd predict` ARGS ask for."""
    from runtime.predict_files import PredictConfig
    _check_roi_flags(args)
    try:
        return PredictConfig(**given(args, _PREDICT_FIELDS))
    except ValueError as err:
        raise UsageError(str(err)) from None


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify images with an exported model (ONNX Runtime/LiteRT, no TensorFlow)")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files, folders (searched recursively, lesion masks skipped) or glob patterns "
                        "(none with --rois, whose file names the images)")
    p.add_argument("--model", type=Path, help="export directory from `bcd export`, its manifest.json, or an .onnx "
                   "file with embedded metadata (default: $BCD_MODEL, else the shipped reference model)")
    p.add_argument("--variant", help="variant to run, e.g. onnx-fp32 (default: onnx-int8 if it passed the export "
                   "checks, else onnx-fp32)")
    p.add_argument("--json", type=Path, dest="json_out", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--csv", type=Path, dest="csv_out", metavar="FILE", help="also write the results as CSV")
    p.add_argument("--heatmap", type=Path, metavar="DIR", help="write a Grad-CAM overlay <stem>_gradcam.png per image")
    p.add_argument("--threads", type=int, help="CPU threads for inference (default: physical cores)")
    _add_backend(p)
    p.add_argument("--max-pixels", type=int, default=_predict("max_pixels"),
                   help="refuse images with more pixels than this (default %(default)s; decompression-bomb guard)")
    p.add_argument("--batch-size", type=int, default=_predict("batch_size"),
                   help="images per inference batch (default %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="run a variant that failed the export's checks against the original model (investigation only)")
    _add_site_flags(p)
    _add_region_flags(p)
    _add_roi_flags(p)
    p.add_argument("--partial-every", type=float, default=_predict("partial_every"), metavar="SECONDS",
                   help="with --json/--csv, keep FILE.partial.json up to date with the results so far at most every "
                        "SECONDS (default %(default)s), so an interrupted run loses nothing; removed when FILE is written")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from runtime import predict_files
    from runtime.progress import Progress
    from runtime.site_profile import load_for

    config = predict_config(args)
    classifier = config.load_classifier()     # no model at all: a clear error naming what to pass
    site = load_for(classifier, _site(args))
    if args.heatmap is not None and not classifier.has_cam:
        raise UsageError(f"variant {classifier.variant} has no Grad-CAM output; use --variant onnx-fp32 or onnx-int8 "
                         "for --heatmap")
    print(f"model: {classifier.info.file} (variant {classifier.variant}, threshold {classifier.threshold:.4f}, "
          f"{classifier.engine}, {classifier.threads} thread(s))", file=sys.stderr)
    _say_if_adapted(classifier)
    if site is not None:
        print(f"operating point: {site.describe()}", file=sys.stderr)
    print(f"scan region: {classifier.region}, cine frames: {classifier.frames}"
          + (f", lesion box: {config.roi}" if config.roi is not None else "")
          + (f", lesion boxes: {config.rois}" if config.rois is not None else ""), file=sys.stderr)

    reporter: list[Progress] = []

    def progress(done: int, total: int) -> None:
        if total >= _PROGRESS_MIN:
            if not reporter:
                reporter.append(Progress(total, "predicted images", every=1))
            reporter[0].update(done)

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        # decoder warnings (e.g. DICOM burned-in patient data) stay visible, without source lines
        print(f"warning: {message}", file=sys.stderr)

    # The reports are written atomically at the end; meanwhile one partial file (next to
    # the first of them) keeps the results so far.
    target = args.json_out or args.csv_out
    partial = predict_files.PartialResults(target, config.partial_every) if target is not None else None
    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning
        if config.rois is not None:
            results = predict_files.predict_rois(classifier, config.rois, heatmap_dir=config.heatmap_dir,
                                                 batch_size=config.batch_size, progress=progress, partial=partial)
        else:
            results = predict_files.predict_paths(classifier, [str(i) for i in args.inputs],
                                                  heatmap_dir=config.heatmap_dir, batch_size=config.batch_size,
                                                  progress=progress, partial=partial, roi=config.roi)
    print(predict_files.format_table(results))
    if site is not None:
        print(f"\nLabels at the operating point of site profile '{site.name}' ({site.path}), not the export's.")
    print(f"\n{DISCLAIMER}")
    site_name = site.name if site is not None else None
    if args.json_out is not None:
        predict_files.write_json(args.json_out, results, site=site_name)
    if args.csv_out is not None:
        predict_files.write_csv(args.csv_out, results, site=site_name)
    if partial is not None:
        partial.finish()
    flagged = sum(bool(r.ok and r.out_of_distribution) for r in results)
    if flagged:
        print(f"{flagged} image(s) flagged out-of-distribution: they look unlike the ultrasound images the model "
              "was trained on (e.g. a photograph, another modality), so their predictions mean nothing",
              file=sys.stderr)
    elif not classifier.has_ood:
        print(f"note: variant {classifier.variant} has no out-of-distribution score (an export from before it "
              "existed, or --no-ood): images unlike the training data are not flagged", file=sys.stderr)
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"{failed} of {len(results)} input(s) could not be classified (see the ERROR rows)", file=sys.stderr)
    return 1 if failed else 0


# ---- report ------------------------------------------------------------------------

_REPORT_FIELDS = {"model": "model", "variant": "variant", "threads": "threads", "backend": "backend",
                  "max_pixels": "max_pixels", "region": "region", "frames": "frames", "roi": "roi"}


def report_config(args):
    """The ReportConfig that `bcd report` ARGS ask for (the site profile: --site, else $BCD_SITE)."""
    from runtime.report import ReportConfig
    site = _site(args)
    try:
        return ReportConfig(**given(args, _REPORT_FIELDS), **({"site": site} if site is not None else {}))
    except ValueError as err:
        raise UsageError(str(err)) from None


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write a one-page printable report (HTML, A4) per image, with an index: "
                                      "the scan, its Grad-CAM map, the call against the threshold, the model")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively, lesion masks skipped) or glob patterns")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for the reports (<stem>_report.html each), index.html and summary.csv; "
                        "created if needed, reports of the same names replaced")
    p.add_argument("--model", type=Path, help="export directory from `bcd export`, its manifest.json, or an .onnx "
                   "file with embedded metadata (default: $BCD_MODEL, else the shipped reference model)")
    p.add_argument("--variant", help="variant to run (default: onnx-int8 if it passed the export checks, else "
                   "onnx-fp32)")
    p.add_argument("--threads", type=int, help="CPU threads for inference (default: physical cores)")
    _add_backend(p)
    p.add_argument("--max-pixels", type=int, default=library("runtime.report:ReportConfig", "max_pixels"),
                   help="refuse images with more pixels than this (default %(default)s; decompression-bomb guard)")
    _add_site_flags(p)
    _add_region_flags(p)
    p.add_argument("--roi", metavar="X,Y,W,H|auto",
                   help="report on the lesion's box: x,y,w,h in the image's pixels (one image), or auto (the "
                        "proposed box; any number of images) (default: the whole scan region)")
    p.set_defaults(func=_cmd_report)


def _say_if_adapted(classifier) -> None:
    """A model `bcd adapt` changed for one site's scanner says so beside its name."""
    from runtime.site_adapt import adaptation_note
    manifest = classifier.manifest
    note = adaptation_note(manifest.training_data if manifest is not None else None)
    if note:
        print(f"model is {note}", file=sys.stderr)


def _cmd_report(args) -> int:
    from runtime import report
    from runtime.progress import Progress

    config = report_config(args)
    classifier = config.load_classifier()
    print(f"model: {classifier.info.file} (variant {classifier.variant}, threshold {classifier.threshold:.4f}, "
          f"{classifier.engine})", file=sys.stderr)
    _say_if_adapted(classifier)
    if classifier.site is not None:
        print(f"operating point: {classifier.site.describe()}", file=sys.stderr)
    reporter: list[Progress] = []

    def progress(done: int, total: int) -> None:
        if total > 1:
            if not reporter:
                reporter.append(Progress(total, "reports", every=10))
            reporter[0].update(done)

    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *rest, **kw: print(f"warning: {message}", file=sys.stderr)
        written = report.write_reports(classifier, [str(i) for i in args.inputs], args.out, progress=progress,
                                       roi=config.roi)
    for entry in written.entries:
        p = entry.prediction
        state = f"ERROR: {p.error}" if not p.ok else f"{p.label}-looking, probability {p.probability:.4f}" + (
            "  OUT-OF-DISTRIBUTION" if p.out_of_distribution else "")
        print(f"{entry.file}  ({state})")
    print(f"\n{len(written.entries)} report(s) in {written.out_dir}: open {written.index} "
          f"(table: {written.summary.name}); each prints to one A4 page")
    print(DISCLAIMER)
    if written.failed:
        print(f"{written.failed} of {len(written.entries)} input(s) could not be classified; their reports say why",
              file=sys.stderr)
    return 1 if written.failed else 0


# ---- scan region and cine frames (predict) ------------------------------------------

def _add_region_flags(p) -> None:
    p.add_argument("--region", metavar="auto|off|X,Y,W,H",
                   help="the part of each image the model classifies: auto (a DICOM file's own tissue region, "
                        "else the scan-region finder), off (the whole image) or a box X,Y,W,H in the image's "
                        "pixels (default: the export's setting, auto for exports that record none)")
    p.add_argument("--frames", default=_predict("frames"), metavar="middle|all|N",
                   help="frames of a cine loop (multi-frame DICOM) to classify (default %(default)s): middle, all (each "
                        "frame's probability is reported, the call uses their mean) or frame number N (from 1); still images "
                        "are classified as they are")


# ---- lesion box (predict) ------------------------------------------------------------

def _add_roi_flags(p) -> None:
    p.add_argument("--roi", metavar="X,Y,W,H|auto",
                   help="classify the lesion in this box (original image pixels, inside the scan region; one input "
                        "image only), or auto: a box proposed by the model's Grad-CAM map (or a lesion localiser); "
                        "the box used is in every output row (default: none, the whole scan region)")
    p.add_argument("--rois", type=Path, metavar="FILE.csv",
                   help="a box per lesion: CSV with columns path,x,y,w,h (paths relative to the CSV's folder, or "
                        "absolute; several rows for one image give one output row each); names the images itself")


def _check_roi_flags(args) -> None:
    """The lesion-box options together with the inputs, in the options' own words."""
    from runtime.roi import parse_roi_text
    if args.roi is not None and args.rois is not None:
        raise UsageError("give either --roi or --rois, not both")
    if args.rois is not None and args.inputs:
        raise UsageError("--rois names the images itself: give no INPUT with it")
    if args.rois is None and not args.inputs:
        raise UsageError("give the images to classify (files, folders or globs), or --rois FILE.csv")
    if args.roi is not None:
        try:
            request = parse_roi_text(args.roi)
        except ValueError as err:
            raise UsageError(f"--roi: {err}") from None
        if not request.auto and len(args.inputs) != 1:
            raise UsageError(f"--roi {args.roi} is a box for one image, but {len(args.inputs)} inputs were given: "
                             "use --rois FILE.csv (columns path,x,y,w,h) for a box per image, or --roi auto")


# ---- demo --------------------------------------------------------------------------

def _demo(name: str) -> LibraryDefault:
    return library("demo.config:DemoConfig", name)


_DEMO_FIELDS = {"host": "host", "port": "port", "max_file_size": "max_file_size", "concurrency": "concurrency",
                "backend": "backend"}


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="serve a local web page (Gradio) to try an exported model on images")
    p.add_argument("--model", type=Path, action="append",
                   help="export directory from `bcd export`; repeat it to offer several models side by side "
                        "(e.g. the full model and its slim version), each with its own threshold (default: "
                        "$BCD_MODEL, else every shipped model, the reference model first)")
    p.add_argument("--host", default=_demo("host"),
                   help="address to listen on (default %(default)s: this computer only; 0.0.0.0 opens it to the "
                        "network, without any login)")
    p.add_argument("--port", type=int, default=_demo("port"), help="port (default %(default)s)")
    p.add_argument("--examples", type=Path, metavar="DIR", help="folder of example images to offer on the page")
    p.add_argument("--share", action="store_true",
                   help="also create a public gradio.live link (needs internet; anyone with the link can use it)")
    p.add_argument("--max-file-size", default=_demo("max_file_size"), help="largest upload accepted (default %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads per model (default: physical cores)")
    _add_backend(p)
    p.add_argument("--variant", help="variant selected when the page opens (default: the runtime's default of "
                   "the first model; with several models 'MODEL · VARIANT' picks another model's)")
    p.add_argument("--concurrency", type=int, default=_demo("concurrency"),
                   help="requests processed at once (default %(default)s)")
    _add_site_flags(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from runtime.shipped import default_models

    try:
        from demo.app import DemoConfig, launch
    except ImportError as err:
        raise _missing_extra("demo", err)
    models = args.model or default_models()
    if not models:
        raise UsageError("--model is required here: pass an export directory from `bcd export` (the shipped "
                         "reference model is missing from runtime/models/; set BCD_MODEL to use another default)")
    if args.examples is not None and not args.examples.is_dir():
        raise UsageError(f"--examples {args.examples}: no such folder")
    try:
        config = DemoConfig(model=models, examples=args.examples, share=args.share, threads=args.threads,
                            variant=args.variant, site=_site(args), **given(args, _DEMO_FIELDS))
    except ValueError as err:
        raise UsageError(str(err)) from None
    _setup_logging()
    print(DISCLAIMER, file=sys.stderr)
    print("serving " + ", ".join(str(m) for m in config.models), file=sys.stderr)
    if config.site is not None:
        print(f"site profile: {config.site} (applies to the model file it was calibrated on)", file=sys.stderr)
    launch(config)
    return 0


# ---- benchmark ---------------------------------------------------------------------

def _add_benchmark(sub) -> None:
    from benchmarks.cli import HELP, add_arguments   # stdlib only; the benchmark itself loads on use
    p = sub.add_parser("benchmark", help=HELP)
    add_arguments(p)
    p.set_defaults(func=_cmd_benchmark)


def _cmd_benchmark(args) -> int:
    from benchmarks.cli import config_from_args, execute
    try:
        import benchmarks.runner  # noqa: F401 - scikit-learn, matplotlib
        import train.tf_setup  # noqa: F401 - TensorFlow for the Keras baseline
    except ImportError as err:
        raise _missing_extra("export", err)
    try:
        config = config_from_args(args, "bcd benchmark")
    except ValueError as err:
        raise UsageError(str(err)) from None
    _setup_logging()
    return execute(config)


# ---- pick --------------------------------------------------------------------------

def _add_pick(sub) -> None:
    p = sub.add_parser("pick", help="from a benchmark's results.json: the fastest variant whose AUC is within a "
                                    "budget of the original's")
    p.add_argument("results", type=Path, metavar="RESULTS_JSON",
                   help="results.json written by `bcd benchmark` (or its folder); measure on --split val")
    p.add_argument("--budget", type=float, default=LibraryDefault(lambda: importlib.import_module("benchmarks.pick").DEFAULT_BUDGET),
                   help="largest tolerated AUC drop vs the original (default %(default)s)")
    p.set_defaults(func=_cmd_pick)


def _cmd_pick(args) -> int:
    from benchmarks.pick import load_results, pick, pick_text
    choice = pick(load_results(args.results), **({} if is_default(args.budget) else {"budget": args.budget}))
    for warning in choice.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(pick_text(choice))
    print(f"\n{DISCLAIMER}")
    return 0


# ---- main --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bcd",
        description="Breast cancer detection on CPU-only clinic PCs: train VGG16, evaluate, "
                    "export and run it. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"bcd {tool_version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    # not required: a bare `bcd` prints the help instead of an argparse error
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_train, _add_pretrain, _add_slim, _add_adapt, _add_evaluate, _add_calibrate, _add_export, _add_predict,
                _add_report, _add_demo, _add_benchmark, _add_pick, _add_localiser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - turn every failure into one clear line
        if args.debug:
            raise
        known = isinstance(err, (UsageError, ValueError, FileNotFoundError, RuntimeError, OSError))
        prefix = "error" if known else f"internal error ({err.__class__.__name__}; rerun with --debug for details)"
        print(f"bcd: {prefix}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
