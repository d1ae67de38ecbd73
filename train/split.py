"""Train/validation/test split, stratified by label and grouped by near-duplicates.

Members of a near-duplicate group always land in the same split, so no lesion is seen
in training and scored again in test. Stratification keeps each split's malignant
fraction close to the whole set's. The split is a pure function of the labels, the
groups and the seed, and is saved as split.json next to the model.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from runtime import atomic

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42

    def __post_init__(self) -> None:
        if not (0 < self.val_fraction < 0.5 and 0 < self.test_fraction < 0.5):
            raise ValueError("val and test fractions must each be between 0 and 0.5")


def _take_one_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int):
    """Indices (rest, held) where `held` is one fold of about `fraction` of the data."""
    n_folds = max(2, round(1 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(
            f"only {n_groups} near-duplicate groups: too few to hold out {fraction:.0%}"
        )
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rest, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    return rest, held


def split_indices(labels, groups, config: SplitConfig = SplitConfig()) -> dict[str, list[int]]:
    """Index lists per split; a group never straddles two splits."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    rest, test = _take_one_fold(labels, groups, config.test_fraction, config.seed)
    # Validation is a fraction of the whole set, so rescale it to the remainder.
    val_of_rest = config.val_fraction / (1 - config.test_fraction)
    train_r, val_r = _take_one_fold(labels[rest], groups[rest], val_of_rest, config.seed + 1)
    return {
        "train": sorted(rest[train_r].tolist()),
        "val": sorted(rest[val_r].tolist()),
        "test": sorted(test.tolist()),
    }


def describe_split(paths, labels, groups, class_names, indices, config, dedup) -> dict:
    """The split.json document: files per split, counts, and the duplicate groups."""
    root_files = [str(p) for p in paths]
    group_members: dict[int, list[str]] = {}
    for path, g in zip(root_files, groups):
        group_members.setdefault(int(g), []).append(path)
    duplicate_groups = [m for m in group_members.values() if len(m) > 1]
    conflicts = [
        m for g, m in group_members.items()
        if len({int(labels[i]) for i in np.nonzero(np.asarray(groups) == g)[0]}) > 1
    ]
    doc = {
        "config": asdict(config),
        "dedup": asdict(dedup),
        "counts": {},
        "files": {},
        "duplicate_groups": duplicate_groups,
        "label_conflict_groups": conflicts,
    }
    for name in SPLITS:
        idx = indices[name]
        doc["files"][name] = [
            {"path": root_files[i], "label": int(labels[i]), "class": class_names[i],
             "group": int(groups[i])}
            for i in idx
        ]
        counts = Counter(int(labels[i]) for i in idx)
        doc["counts"][name] = {"total": len(idx), "benign": counts[0], "malignant": counts[1]}
    return doc


def save_split(doc: dict, path: Path) -> None:
    atomic.write_json(path, doc)
