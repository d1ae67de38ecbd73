"""The run being exported and the images export needs: calibration (training split or
a folder), parity checks (validation split or a folder) and QAT fine-tuning (training
split). All images come back resized uint8 BGR, prepared by runtime.preprocessing."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.dataset import LabelMap
from runtime.preprocessing import PreprocessSpec
from train.run_dir import RunDir

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    run: RunDir
    info: dict                 # run.json
    split: dict                # split.json
    spec: PreprocessSpec

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"]["value"])

    @property
    def label_map(self) -> LabelMap:
        return LabelMap(dict(self.info["labels"]["class_labels"]))


@dataclass
class ImageSet:
    images: np.ndarray         # (n, s, s, 3) uint8 BGR, resized
    labels: np.ndarray         # (n,) 0/1
    description: str


def open_run(run_dir: str | Path) -> RunInfo:
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise FileNotFoundError(f"run directory not found: {run.root}")
    info = run.read_json(run.run_info)
    if info.get("status") != "complete" or "threshold" not in info:
        raise ValueError(f"{run.root} is not a finished run (no operating threshold yet): finish `bcd train` first")
    if not run.model.is_file():
        raise FileNotFoundError(f"model file not found: {run.model}")
    split = run.read_json(run.split)
    return RunInfo(run, info, split, PreprocessSpec.from_dict(info["preprocessing"]))


def split_images(run: RunInfo, name: str, limit: int | None = None, seed: int = 0) -> ImageSet:
    """Images of one split of the run; with `limit`, a seeded random subset (sorted)."""
    from train.data import load_files

    files = run.split["files"][name]
    if not files:
        raise ValueError(f"the run's {name} split is empty")
    if limit is not None and len(files) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(files), size=limit, replace=False))
        files = [files[i] for i in keep]
    root = Path(run.split["data_root"])
    if not root.is_dir():
        raise FileNotFoundError(
            f"the run's data folder {root} is missing (moved?): pass --calib-data / --data folders instead"
        )
    images = load_files(root, [f["path"] for f in files], run.spec)
    labels = np.array([int(f["label"]) for f in files], dtype=np.int64)
    return ImageSet(images, labels, f"{name} split of run {run.run.root.name} ({len(files)} images)")


def folder_images(run: RunInfo, folder: str | Path, limit: int | None = None, seed: int = 0) -> ImageSet:
    """A labelled folder (class sub-folders), labelled with the run's class map."""
    from train.data import load_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    loaded = load_folder(folder, run.spec, run.label_map)
    images, labels = loaded.images, loaded.labels
    if limit is not None and len(labels) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), size=limit, replace=False))
        images, labels = images[keep], labels[keep]
    return ImageSet(images, labels, f"folder {folder} ({len(labels)} images)")


def calibration_images(run: RunInfo, folder: str | None, size: int, seed: int) -> ImageSet:
    if folder:
        return folder_images(run, folder, limit=size, seed=seed)
    return split_images(run, "train", limit=size, seed=seed)


def parity_images(run: RunInfo, folder: str | None) -> ImageSet:
    if folder:
        return folder_images(run, folder)
    return split_images(run, "val")
