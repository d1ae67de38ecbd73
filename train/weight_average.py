"""The mean of a model's weights over its last epochs (stochastic weight averaging).

Why: with one hospital held out, the held-out AUC peaks early and then drifts as the
model fits the hospitals it trains on (docs/results.md: best epoch 0.882, last 0.868).
Picking the best epoch on the held-out images themselves is optimistic; the mean of the
weights after each of the last epochs needs no choice, and averaging weights of one
run's nearby epochs (like the "soup" of runs from one parent) lands in a flatter
region than any single epoch.

Every variable is averaged, the batch norms' moving statistics included; in a
fine-tune at a small rate these move little between epochs, and the soup that
averaged them the same way scored as well as its best member.

The running mean is saved beside the checkpoint after every averaged epoch, so --resume
continues it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import atomic

FILE_NAME = "weight_average.npz"


class RunningAverage:
    """The mean of the weight lists passed to `add` (float64 sums, so that many epochs
    add up without drift)."""

    def __init__(self) -> None:
        self.count = 0
        self._sums: list[np.ndarray] | None = None

    def add(self, weights: list[np.ndarray]) -> None:
        if self._sums is None:
            self._sums = [np.zeros(w.shape, np.float64) for w in weights]
        if len(weights) != len(self._sums) or any(w.shape != s.shape for w, s in zip(weights, self._sums)):
            raise ValueError("weight averaging: the model's weights changed shape between epochs")
        for total, w in zip(self._sums, weights):
            total += w
        self.count += 1

    def mean(self, like: list[np.ndarray]) -> list[np.ndarray]:
        """The mean, each array in the dtype of `like`'s (the model's own weights)."""
        if not self.count:
            raise ValueError("weight averaging: no epoch was averaged")
        return [(total / self.count).astype(w.dtype) for total, w in zip(self._sums, like)]

    def save(self, folder: Path) -> None:
        arrays = {f"w{i}": s for i, s in enumerate(self._sums or [])}
        with atomic.atomic_path(Path(folder) / FILE_NAME) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, count=np.array(self.count), **arrays)

    @classmethod
    def load(cls, folder: Path) -> "RunningAverage":
        """The average saved in `folder`, or an empty one when there is none yet."""
        average = cls()
        path = Path(folder) / FILE_NAME
        if not path.is_file():
            return average
        with np.load(path) as saved:
            average.count = int(saved["count"])
            n = len([k for k in saved.files if k.startswith("w")])
            average._sums = [saved[f"w{i}"] for i in range(n)] if n else None
        return average
