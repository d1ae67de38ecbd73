"""Train/validation/test split, stratified by label and source, grouped by patient and
near-duplicates.

Members of a group (the same patient, or near-identical images, across all sources)
always land in the same split, so no lesion is seen in training and scored again in
test. Stratification keeps each split's malignant fraction, per source, close to the
whole set's. `val_source` holds one whole source out for validation: the honest
estimate of a hospital the model has not seen. The split is a pure function of the labels, the
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
    val_source: str | None = None    # hold this whole source out as the validation split

    def __post_init__(self) -> None:
        if not (0 < self.val_fraction < 0.5 and 0 < self.test_fraction < 0.5):
            raise ValueError("val and test fractions must each be between 0 and 0.5")


def _take_one_fold(strata: np.ndarray, groups: np.ndarray, fraction: float, seed: int):
    """Indices (rest, held) where `held` is one fold of about `fraction` of the data."""
    n_folds = max(2, round(1 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(
            f"only {n_groups} near-duplicate/patient groups: too few to hold out {fraction:.0%}"
        )
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rest, held = next(folds.split(np.zeros(len(strata)), strata, groups))
    return rest, held


def strata_of(labels, sources=None) -> np.ndarray:
    """One stratum per (source, label): each split gets each source's malignant share."""
    labels = np.asarray(labels).astype(int)
    if sources is None:
        return labels
    _, source_index = np.unique(np.asarray(sources), return_inverse=True)
    return source_index * 2 + labels


def split_indices(labels, groups, config: SplitConfig = SplitConfig(), sources=None) -> dict[str, list[int]]:
    """Index lists per split, stratified by label (and source); a group never straddles
    two splits. With config.val_source, validation is that whole source (and any group
    that reaches into it), and train/test are split from the others."""
    groups = np.asarray(groups)
    strata = strata_of(labels, sources)
    if config.val_source is not None:
        return _split_with_val_source(strata, groups, np.asarray(sources), config)
    rest, test = _take_one_fold(strata, groups, config.test_fraction, config.seed)
    # Validation is a fraction of the whole set, so rescale it to the remainder.
    val_of_rest = config.val_fraction / (1 - config.test_fraction)
    train_r, val_r = _take_one_fold(strata[rest], groups[rest], val_of_rest, config.seed + 1)
    return {
        "train": sorted(rest[train_r].tolist()),
        "val": sorted(rest[val_r].tolist()),
        "test": sorted(test.tolist()),
    }


def _split_with_val_source(strata, groups, sources, config: SplitConfig) -> dict[str, list[int]]:
    if sources is None or config.val_source not in set(sources.tolist()):
        known = ", ".join(sorted(set(sources.tolist()))) if sources is not None else "none"
        raise ValueError(f"--val-source {config.val_source}: no such source (sources: {known})")
    held_groups = set(groups[sources == config.val_source].tolist())
    in_val = np.isin(groups, list(held_groups))
    rest = np.nonzero(~in_val)[0]
    if len(rest) == 0:
        raise ValueError("--val-source leaves no other source to train on")
    train_r, test_r = _take_one_fold(strata[rest], groups[rest], config.test_fraction, config.seed)
    return {"train": sorted(rest[train_r].tolist()), "val": sorted(np.nonzero(in_val)[0].tolist()),
            "test": sorted(rest[test_r].tolist())}


def _counts(labels) -> dict:
    counts = Counter(int(v) for v in labels)
    return {"total": sum(counts.values()), "benign": counts[0], "malignant": counts[1]}


def describe_split(data, groups, indices, config: SplitConfig, dedup) -> dict:
    """The split.json document: the sources, files per split (with source, label, group,
    patient and mask), counts per split and per source x split, and the duplicate groups."""
    names = [f"{src}:{path}" if len(data.sources) > 1 else path for src, path in data.keys()]
    group_members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        group_members.setdefault(int(g), []).append(i)
    doc = {
        "config": asdict(config),
        "dedup": asdict(dedup),
        "sources": [s.to_dict() for s in data.sources],
        "counts": {},
        "counts_per_source": {},
        "files": {},
        "duplicate_groups": [[names[i] for i in m] for m in group_members.values() if len(m) > 1],
        "label_conflict_groups": [[names[i] for i in m] for m in group_members.values()
                                  if len({int(data.labels[i]) for i in m}) > 1],
    }
    for name in SPLITS:
        idx = indices[name]
        doc["files"][name] = [_file_entry(data, groups, i) for i in idx]
        doc["counts"][name] = _counts(data.labels[idx])
        for src in data.sources:
            sel = [i for i in idx if data.source_names[i] == src.name]
            doc["counts_per_source"].setdefault(src.name, {})[name] = _counts(data.labels[sel])
    return doc


def _file_entry(data, groups, i: int) -> dict:
    entry = {"path": data.relative_paths[i], "source": str(data.source_names[i]), "label": int(data.labels[i]),
             "class": data.class_names[i], "group": int(groups[i])}
    if data.patients[i] is not None:
        entry["patient"] = data.patients[i]
    if data.has_mask[i]:
        entry["mask"] = True
    return entry


def save_split(doc: dict, path: Path) -> None:
    atomic.write_json(path, doc)
