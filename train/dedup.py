"""Near-duplicate groups by perceptual hashing.

BUSI holds many shots of the same lesion, slightly shifted or re-annotated. A random
split leaks them between train and test, so the split is done by group.

Method: a 64-bit DCT perceptual hash (imagehash.phash) of each grayscale image; two
images are linked when their hashes differ in at most `max_distance` bits, and groups
are the connected components of those links (union-find). The default threshold was
chosen by inspecting the distance distribution on BUSI (see docs/training.md, "Splitting").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import imagehash
import numpy as np
from PIL import Image

from runtime.components import connected_components

# On BUSI, pairs at <= 10 bits were all the same shot (re-annotated or shifted), about a
# third of pairs at 12 were, and pairs at 14 were different lesions; 12 errs towards
# grouping, which costs nothing but a little split flexibility, while missing a
# duplicate leaks it across splits.
DEFAULT_MAX_DISTANCE = 12


@dataclass(frozen=True)
class DedupConfig:
    max_distance: int = DEFAULT_MAX_DISTANCE
    hash_size: int = 8


def image_hash(image_bgr: np.ndarray, config: DedupConfig = DedupConfig()) -> np.ndarray:
    """The perceptual hash of one decoded image as a flat bool array."""
    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    return imagehash.phash(Image.fromarray(gray), hash_size=config.hash_size).hash.ravel()


def pairwise_distances(hashes: np.ndarray) -> np.ndarray:
    """Hamming distances between all rows of an (n, bits) bool array."""
    h = hashes.astype(np.int16)
    # Matches of ones plus matches of zeros, subtracted from the bit count.
    same = h @ h.T + (1 - h) @ (1 - h).T
    return hashes.shape[1] - same


def group_ids(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Connected components of the 'within max_distance' graph, numbered 0..k-1 in order."""
    close_i, close_j = np.nonzero(np.triu(pairwise_distances(hashes) <= max_distance, k=1))
    return connected_components(len(hashes), zip(close_i, close_j))


def split_groups(hashes: np.ndarray, max_distance: int, patients: list | None = None) -> np.ndarray:
    """Groups that a split must keep whole: near-duplicates (across every source, since
    the same image may sit in two datasets) joined with images of the same patient.
    `patients` holds a hashable patient key per image (e.g. (source, case id)), or None
    where unknown."""
    close_i, close_j = np.nonzero(np.triu(pairwise_distances(hashes) <= max_distance, k=1))
    pairs = list(zip(close_i.tolist(), close_j.tolist()))
    first: dict = {}
    for i, key in enumerate(patients or []):
        if key is not None:
            pairs.append((first.setdefault(key, i), i))
    return connected_components(len(hashes), pairs)


def find_groups(
    images: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    n: int | None = None,
    config: DedupConfig = DedupConfig(),
) -> np.ndarray:
    """Group id per image; images that share an id are near-duplicates."""
    get = images if callable(images) else images.__getitem__
    count = n if n is not None else len(images)  # type: ignore[arg-type]
    if count == 0:
        return np.zeros(0, dtype=int)
    hashes = np.stack([image_hash(get(i), config) for i in range(count)])
    return group_ids(hashes, config.max_distance)
