"""The two inputs a benchmark needs besides the export: the original Keras model (the
baseline every ratio is taken against) and labelled images.

The original is found through the manifest (`source_model.path` is "<run name>/model.keras",
relative; looked for next to the export and under a `runs/` folder) or given as
`--original RUN_DIR`; either way its sha256 must match the one the manifest recorded, so
the baseline is the model the variants were exported from.

Images: a labelled folder (`--data`, class sub-folders labelled with the run's class map)
or, by default, the run's validation split. The operating threshold was chosen on that
split, so accuracy there is optimistic; outputs say which data was used.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from runtime.dataset import DataSource, DatasetError, LabelMap, read_source, samples_of_split
from runtime.images import ImageReadError, read_image
from runtime.manifest import Manifest
from runtime.model_files import sha256_file
from runtime.preprocessing import PreprocessSpec, resize

log = logging.getLogger(__name__)

VALIDATION_NOTE = ("the operating threshold was chosen on this split, so sensitivity/specificity here are "
                   "optimistic; pass --data with held-out images for an unbiased estimate")


@dataclass
class OriginalRun:
    root: Path                  # run directory
    model: Path                 # model.keras
    info: dict                  # run.json
    found_by: str               # how it was located

    @property
    def label_map(self) -> LabelMap:
        return LabelMap(dict(self.info["labels"]["class_labels"]))


@dataclass
class BenchData:
    images: np.ndarray          # (n, s, s, 3) uint8 BGR, resized with runtime.preprocessing
    labels: np.ndarray          # (n,) 0/1
    paths: list[Path]           # the image files (the cold-start probe reads the first one)
    description: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        d = self.description
        return (f"{d['source']} ({d['n']} images: {d['n_malignant']} malignant, {d['n_benign']} benign)")


def _candidates(manifest: Manifest, export_dir: Path) -> list[Path]:
    rel = Path(manifest.source_model["path"])
    if rel.is_absolute():
        return [rel]
    export_dir = export_dir.resolve()
    bases = [Path.cwd(), export_dir, export_dir.parent, Path.cwd() / "runs", export_dir.parent.parent / "runs",
             export_dir.parent / "runs"]
    seen, out = set(), []
    for base in bases:
        path = (base / rel).resolve()
        if path not in seen:
            seen.add(path)
            out.append(path)
    return out


def find_original(manifest: Manifest, export_dir: Path, original: str | Path | None) -> OriginalRun:
    """The run directory of the model the export came from; raises FileNotFoundError or
    ValueError with a message saying what to pass."""
    expected = manifest.source_model.get("sha256", "").lower()
    if original is not None:
        root = Path(original)
        if root.is_file() and root.suffix == ".keras":
            root = root.parent
        model = root / "model.keras"
        if not model.is_file():
            raise FileNotFoundError(f"--original {original}: no model.keras there (expected a run directory "
                                    "from `bcd train`)")
        actual = sha256_file(model)
        if expected and actual != expected:
            raise ValueError(f"--original {original}: {model} is not the model this export was made from "
                             f"(sha256 {actual[:12]}..., the manifest records {expected[:12]}...); pass the run "
                             "directory the export came from, or export again")
        found_by = "--original"
    else:
        model = None
        tried = []
        for path in _candidates(manifest, export_dir):
            tried.append(str(path))
            if path.is_file() and (not expected or sha256_file(path) == expected):
                model = path
                break
        if model is None:
            raise FileNotFoundError(
                f"the original Keras model ({manifest.source_model['path']}, sha256 {expected[:12]}...) was not "
                f"found next to the export (looked at: {', '.join(tried)}); pass --original RUN_DIR")
        root = model.parent
        found_by = "manifest source_model"
    info_path = root / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{root}: no run.json (is this a run directory from `bcd train`?)")
    info = json.loads(info_path.read_text())
    if info.get("status") != "complete" or "threshold" not in info:
        raise ValueError(f"{root} is not a finished run")
    return OriginalRun(root=root, model=model, info=info, found_by=found_by)


def _describe(source: str, labels: np.ndarray, **extra) -> dict:
    return {"source": source, "n": int(len(labels)), "n_malignant": int((labels == 1).sum()),
            "n_benign": int((labels == 0).sum()), **extra}


def _read_resized(path: Path, spec: PreprocessSpec) -> np.ndarray:
    return resize(read_image(path), spec)


def run_split(run: OriginalRun, spec: PreprocessSpec, name: str = "val") -> BenchData:
    """The images of one of the run's saved splits ("val" or "test")."""
    split_file = run.root / "split.json"
    if not split_file.is_file():
        raise FileNotFoundError(f"{run.root}: no split.json, so no {name} split; pass --data DIR")
    split = json.loads(split_file.read_text())
    if not split["files"].get(name):
        raise ValueError(f"{run.root}: the {name} split is empty; pass --data DIR")
    try:
        samples = samples_of_split(split, name)
    except DatasetError as err:
        raise FileNotFoundError(f"{err}; pass --data DIR") from None
    kind = "validation split" if name == "val" else f"{name} split"
    extra = {"note": VALIDATION_NOTE} if name == "val" else {}
    return _read_samples(samples, spec, f"{kind} of run {run.root.name}", kind=kind,
                         path=", ".join(sorted({str(s.path.parent) for s in samples[:1]})), **extra)


def _read_samples(samples: list, spec: PreprocessSpec, source: str, **extra) -> BenchData:
    images, labels, paths, unreadable = [], [], [], []
    for sample in samples:
        try:
            images.append(_read_resized(sample.path, spec))
        except ImageReadError as err:
            unreadable.append(str(err))
            continue
        labels.append(int(sample.label))
        paths.append(sample.path)
    if unreadable:
        log.warning("skipped %d unreadable file(s):\n  %s", len(unreadable), "\n  ".join(unreadable))
    if not images:
        raise ValueError(f"{source}: none of the {len(samples)} images could be read")
    labels_arr = np.array(labels, dtype=np.int64)
    return BenchData(np.stack(images), labels_arr, paths,
                     _describe(source, labels_arr, unreadable_skipped=len(unreadable), **extra))


def labelled_folder(folder: Path | DataSource, run: OriginalRun, spec: PreprocessSpec) -> BenchData:
    """A labelled dataset (class folders or a CSV index), labelled with the run's class map."""
    source = folder if isinstance(folder, DataSource) else DataSource.parse(str(folder))
    scan = read_source(replace(source, labels=run.label_map))
    if not scan.labelled:
        raise ValueError(f"--data {source.path}: no labelled images (expected class folders "
                         f"{', '.join(sorted(run.label_map.classes))} or a CSV index)")
    return _read_samples(scan.labelled, spec, f"dataset {source.name} ({source.path})", kind="folder",
                         path=str(Path(source.path).resolve()), masks_skipped=scan.masks_skipped,
                         note="labelled with the run's class map")


def load_data(folder: str | Path | DataSource | None, run: OriginalRun, spec: PreprocessSpec, split: str = "val") -> BenchData:
    data = labelled_folder(folder, run, spec) if folder else run_split(run, spec, split)
    log.info("data: %s", data.text)
    return data
