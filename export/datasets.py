"""The run being exported and the images export needs: calibration (training split or
a folder), parity checks (validation split or a folder) and QAT fine-tuning (training
split). All images come back resized uint8 BGR, prepared by runtime.preprocessing."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from runtime.dataset import DataSource, LabelMap
from runtime.preprocessing import PreprocessSpec
from runtime.scan_region import RegionConfig
from train.config import run_scan_region
from train.run_dir import RunDir, unfinished

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    run: RunDir
    info: dict                 # run.json
    split: dict                # split.json
    spec: PreprocessSpec
    # the split's images, read once (calibration, parity, OOD fitting and the lesion
    # crops all need them: one read, and its warnings logged once)
    _loaded: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"]["value"])

    @property
    def label_map(self) -> LabelMap:
        return LabelMap(dict(self.info["labels"]["class_labels"]))

    @property
    def scan_region(self) -> RegionConfig:
        """How the run's images were cut to their scan region (INT8 calibration and
        parity images are read the same way)."""
        return run_scan_region(self.info)

    def split_data(self):
        """(LoadedData, {split name: indices}) of the run's split.json, read on first use."""
        from train.data import load_saved_split

        if self._loaded is None:
            self._loaded = load_saved_split(self.split, self.spec, class_labels=self.info["labels"]["class_labels"],
                                            region=self.scan_region)
        return self._loaded


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
    reason = unfinished(run.root, info)
    if reason:
        raise ValueError(reason)
    if not run.model.is_file():
        raise FileNotFoundError(f"model file not found: {run.model}")
    split = run.read_json(run.split)
    return RunInfo(run, info, split, PreprocessSpec.from_dict(info["preprocessing"]))


def _limit(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if limit is not None and len(labels) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), size=limit, replace=False))
        return images[keep], labels[keep]
    return images, labels


def split_images(run: RunInfo, name: str, limit: int | None = None, seed: int = 0) -> ImageSet:
    """Images of one split of the run; with `limit`, a seeded random subset (sorted)."""
    if not run.split["files"].get(name):
        raise ValueError(f"the run's {name} split is empty")
    try:
        data, idx = run.split_data()
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(
            f"the run's data cannot be read ({err}): pass --calib-data / --data datasets instead") from None
    images, labels = _limit(data.images[idx[name]], data.labels[idx[name]], limit, seed)
    return ImageSet(images, labels, f"{name} split of run {run.run.root.name} ({len(labels)} images)")


def lesion_crop_images(run: RunInfo, name: str) -> ImageSet | None:
    """One lesion-centred crop per lesion image of a split (train.roi_samples, as the run
    trained on them), for a run trained with --roi-share; None for other runs."""
    from train.roi_samples import load_roi_crops

    config = run.info.get("config") or {}
    if not config.get("roi_share"):
        return None
    data, idx = run.split_data()
    part = data.subset(idx[name])
    crops = load_roi_crops(part, run.spec, int(config.get("roi_crops", 2)), run.scan_region)
    return ImageSet(crops.images[crops.has, 0], part.labels[crops.has],
                    f"lesion crops of the {name} split of run {run.run.root.name} ({int(crops.has.sum())} images)")


def folder_images(run: RunInfo, folder, limit: int | None = None, seed: int = 0) -> ImageSet:
    """A labelled dataset (class folders, or a CSV index: a path or a DataSource),
    labelled with the run's class map."""
    from train.data import load_sources

    source = folder if isinstance(folder, DataSource) else DataSource.parse(str(folder))
    loaded = load_sources([replace(source, labels=run.label_map)], run.spec, region=run.scan_region)
    images, labels = _limit(loaded.images, loaded.labels, limit, seed)
    return ImageSet(images, labels, f"dataset {source.name} ({len(labels)} images)")


def calibration_images(run: RunInfo, folder: str | None, size: int, seed: int) -> ImageSet:
    if folder:
        return folder_images(run, folder, limit=size, seed=seed)
    return split_images(run, "train", limit=size, seed=seed)


def parity_images(run: RunInfo, folder: str | None) -> ImageSet:
    if folder:
        return folder_images(run, folder)
    return split_images(run, "val")
