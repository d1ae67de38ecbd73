"""The training images' conv statistics, kept beside an export for `bcd adapt` at a site.

A site adapts an export to its scanner (runtime/site_adapt.py) by giving each conv the
statistics it had on the model's own training images. A clinic has none of those images,
so `bcd export` measures them once, through each ONNX file itself, on the images it
calibrates INT8 with (the run's training split), and writes adapt-reference.json.

For an export made before this file existed (the shipped models were):

    python -m export.adapt_reference EXPORT [--images 600] [--split-root DATA]

measures them on the training images its split.json names, read and prepared as the
runtime prepares any scan (the images must be readable; --split-root where they moved).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from runtime.manifest import read_manifest
from runtime.site_adapt import AdaptError, reference_statistics, write_reference

log = logging.getLogger(__name__)


def write_for_export(export_dir: Path, manifest_variants, arrays: np.ndarray, description: str) -> Path | None:
    """Measure every usable ONNX variant in export_dir on `arrays` (model inputs) and write
    the reference file; None when there is no ONNX variant to measure, or none could be (a
    note in the log: an optional extra never fails an export)."""
    onnx_variants = [v for v in manifest_variants if v.usable and v.format == "onnx" and v.file]
    if not onnx_variants or len(arrays) == 0:
        return None
    measured = {}
    for variant in onnx_variants:
        path = Path(export_dir) / variant.file
        try:
            measured[variant.name] = (path, reference_statistics(path.read_bytes(), arrays))
        except Exception as err:  # noqa: BLE001 - an optional extra of the export must not fail it
            log.warning("no site-adaptation reference for %s: %s", variant.name, err)
    if not measured:
        return None
    return write_reference(Path(export_dir), measured, len(arrays), description)


def add_to_export(export_dir: str, images: int = 600, seed: int = 0, split_root: str | None = None) -> Path | None:
    """The reference for an existing export, from the training images of its split.json."""
    from runtime.classifier import Classifier
    from runtime.dataset import samples_of_split
    from runtime.manifest import split_file
    from runtime.site_adapt import site_inputs

    export = Path(export_dir)
    manifest = read_manifest(export)
    try:
        doc = json.loads(split_file(export).read_text())
    except FileNotFoundError:
        raise AdaptError(f"{export} has no split.json: its training images are unknown") from None
    files = [str(s.path) for s in samples_of_split(doc, "train", split_root)]
    onnx_variants = [v for v in manifest.usable_variants() if v.format == "onnx"]
    if not onnx_variants:
        return None
    with Classifier.load(export, variant=onnx_variants[0].name, threads=2) as classifier:
        arrays, skipped = site_inputs(classifier, files, images, seed)
    description = f"train split of {export.name}'s split.json ({len(arrays)} images, read by the runtime)"
    log.info("measuring the convs on the %s; %d skipped", description, len(skipped))
    return write_for_export(export, manifest.variants, arrays, description)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.adapt_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="the export directory to add adapt-reference.json to")
    parser.add_argument("--images", type=int, default=600, help="training images to measure (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="for the random subset (default %(default)s)")
    parser.add_argument("--split-root", help="where the split's data lives now, if it moved (as bcd evaluate)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = add_to_export(args.export, args.images, args.seed, args.split_root)
    except (AdaptError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if path is None:
        print("error: no ONNX variant in the export could be measured", file=sys.stderr)
        return 2
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
