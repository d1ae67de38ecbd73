"""Near-duplicate grouping and the grouped, stratified split."""
import numpy as np
import pytest

from runtime.preprocessing import PreprocessSpec
from train.data import load_folder
from train.dedup import DedupConfig, find_groups, group_ids, pairwise_distances
from train.split import SplitConfig, split_indices
from tests.conftest import BUSI, missing


def test_pairwise_distances_are_hamming():
    h = np.array([[0, 0, 0, 0], [1, 0, 0, 1], [1, 1, 1, 1]], dtype=bool)
    assert pairwise_distances(h).tolist() == [[0, 2, 4], [2, 0, 2], [4, 2, 0]]


def test_group_ids_are_connected_components():
    h = np.array([[0] * 8, [1] + [0] * 7, [1, 1] + [0] * 6, [1] * 8], dtype=bool)
    # 0-1 and 1-2 are within 1 bit: one chain-linked group; 3 is far from all.
    assert group_ids(h, max_distance=1).tolist() == [0, 0, 0, 1]
    assert group_ids(h, max_distance=0).tolist() == [0, 1, 2, 3]


def test_shifted_and_annotated_copy_is_grouped_but_other_image_is_not():
    rng = np.random.default_rng(0)
    base = cv2_blur(rng.integers(0, 256, (128, 128), dtype=np.uint8))
    shifted = np.roll(base, 3, axis=1)
    annotated = base.copy()
    annotated[10:12, 20:60] = 255  # a caliper line burned in
    other = cv2_blur(rng.integers(0, 256, (128, 128), dtype=np.uint8))
    imgs = [np.dstack([g] * 3) for g in (base, shifted, annotated, other)]
    groups = find_groups(imgs)
    assert groups[0] == groups[1] == groups[2] != groups[3]


def cv2_blur(img):
    import cv2
    return cv2.GaussianBlur(img, (15, 15), 5)


def synthetic_groups(n_groups=60, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    group_label = (rng.random(n_groups) < 0.3).astype(int)
    return group_label[groups], groups


def test_split_keeps_groups_together_and_stratifies():
    labels, groups = synthetic_groups()
    idx = split_indices(labels, groups, SplitConfig(0.15, 0.15, seed=3))
    sets = {k: set(v) for k, v in idx.items()}
    assert sum(len(s) for s in sets.values()) == len(labels)
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    group_sets = {k: set(groups[list(v)]) for k, v in idx.items()}
    assert not (group_sets["train"] & group_sets["val"] or group_sets["train"] & group_sets["test"]
                or group_sets["val"] & group_sets["test"])
    overall = labels.mean()
    for name, members in idx.items():
        assert abs(labels[members].mean() - overall) < 0.15, name
    assert 0.08 < len(idx["test"]) / len(labels) < 0.25


def test_split_is_deterministic_by_seed():
    labels, groups = synthetic_groups()
    a = split_indices(labels, groups, SplitConfig(seed=7))
    b = split_indices(labels, groups, SplitConfig(seed=7))
    c = split_indices(labels, groups, SplitConfig(seed=8))
    assert a == b
    assert a != c


def test_split_refuses_too_few_groups():
    with pytest.raises(ValueError, match="too few"):
        split_indices([0, 1, 0], [0, 1, 2], SplitConfig())


def test_busi_near_duplicates_never_straddle_splits():
    if not BUSI.is_dir():
        missing("BUSI development data not present")
    data = load_folder(BUSI, PreprocessSpec(image_size=32))
    groups = group_ids(data.hashes, DedupConfig().max_distance)
    n_dup_groups = int((np.bincount(groups) > 1).sum())
    assert 100 <= n_dup_groups <= 160  # the BUSI README speaks of ~150 groups in 780 images
    idx = split_indices(data.labels, groups, SplitConfig(seed=42))
    owners = {}
    for name, members in idx.items():
        for g in set(groups[members]):
            assert owners.setdefault(g, name) == name
    for name, members in idx.items():
        assert abs(data.labels[members].mean() - data.labels.mean()) < 0.05
