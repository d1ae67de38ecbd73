"""Connected components of a small graph given as linked pairs (union-find), in NumPy:
near-duplicate groups of images (train.dedup) and touching pixels of a few caliper
centres (runtime.caliper_marks, where cv2.connectedComponents would start OpenCV's
thread pool for a handful of pixels)."""
from __future__ import annotations

import numpy as np


def connected_components(n: int, pairs) -> np.ndarray:
    """Component id (0..k-1, in order of first appearance) of n nodes linked by `pairs`
    (union-find)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(n)]
    renumber = {root: k for k, root in enumerate(dict.fromkeys(roots))}
    return np.array([renumber[r] for r in roots], dtype=int)
