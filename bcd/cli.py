"""`bcd` command line: a thin layer over the library APIs.

Heavy packages (TensorFlow via train/export, Gradio via demo) are imported inside the
subcommand that needs them, so `bcd predict` on a runtime-only install never loads them.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("bcd")

DISCLAIMER = "Research and education only: not a diagnosis."


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


# ---- train -------------------------------------------------------------------------

def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune VGG16 on a folder-per-class dataset and evaluate it")
    p.add_argument("--data", type=Path, help="dataset folder (class folders benign/, malignant/, normal/ ...); "
                   "omitted: a small built-in synthetic set, to check the pipeline")
    p.add_argument("--out", type=Path, required=True, help="run directory to create")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--weights", default="none", help="imagenet | none | PATH to a no-top VGG16 .h5 file")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patience", type=int, default=8, help="early stopping: epochs without validation AUC gain")
    p.add_argument("--labels", default=None, help="class folder to label map, e.g. 'benign=0,normal=0,malignant=1' (default)")
    p.add_argument("--threshold", choices=["sensitivity", "youden"], default="sensitivity",
                   help="operating threshold chosen on validation: best specificity at sensitivity >= "
                        "--min-sensitivity (default), or Youden's J")
    p.add_argument("--min-sensitivity", type=float, default=0.90)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    try:
        from runtime.dataset import LabelMap
        from train.config import TrainConfig
        from train.trainer import LOG_NAME, train
    except ImportError as err:
        raise _missing_extra("train", err)
    labels = LabelMap.parse(args.labels).to_dict() if args.labels else None
    config = TrainConfig(
        out=str(args.out), data=str(args.data) if args.data else None, image_size=args.image_size,
        epochs=args.epochs, weights=args.weights, seed=args.seed, batch_size=args.batch_size,
        patience=args.patience, threshold_method=args.threshold, min_sensitivity=args.min_sensitivity,
        **({"class_labels": labels} if labels else {}),
    )
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    _setup_logging(args.out / LOG_NAME)
    run = train(config, resume=args.resume)
    print(f"\nrun written to {run.root}: model.keras, split.json, metrics.json, metrics.md, plots/")
    print((run.root / "metrics.md").read_text())
    return 0


# ---- evaluate ----------------------------------------------------------------------

def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run's test split, or a labelled folder with --data")
    p.add_argument("model", type=Path, help="run directory (or its model.keras)")
    p.add_argument("--data", type=Path, help="score every labelled image in this folder instead of the test split")
    p.add_argument("--split-root", type=Path, help="where the run's dataset lives now, if it moved")
    p.add_argument("--out", type=Path, help="with --data: output folder (default RUN/eval-<folder name>)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    try:
        from train import evaluate
    except ImportError as err:
        raise _missing_extra("train", err)
    _setup_logging()
    if args.data is not None:
        if not args.data.is_dir():
            raise UsageError(f"--data {args.data}: no such folder")
        doc = evaluate.evaluate_folder(args.model, args.data, args.out, args.bootstrap)
    else:
        doc = evaluate.evaluate_run(args.model, args.split_root, args.bootstrap)
    print(evaluate.metrics_markdown(doc))
    return 0


# ---- main --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bcd",
        description="Breast cancer detection on CPU-only clinic PCs: train VGG16, evaluate, "
                    "export and run it. " + DISCLAIMER,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_evaluate):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
