"""Shared fixtures: small real datasets built in tmp folders.

Real BUSI images are used when ../shared/data/busi exists (CI has it); otherwise the
built-in synthetic generator stands in, so the suite runs anywhere.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
BUSI = REPO.parent / "shared" / "data" / "busi"


def busi_files(cls: str, n: int) -> list[Path]:
    files = sorted((BUSI / cls).glob("*.png"), key=lambda p: p.name)
    return files[:n]


@pytest.fixture(scope="session")
def busi_root() -> Path:
    if not BUSI.is_dir():
        pytest.skip("BUSI development data not present")
    return BUSI


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A few images per class in BUSI layout: real BUSI images when available."""
    root = tmp_path_factory.mktemp("tiny")
    if BUSI.is_dir():
        for cls, n in (("benign", 8), ("malignant", 8), ("normal", 4)):
            (root / cls).mkdir()
            for f in busi_files(cls, n):
                shutil.copy(f, root / cls / f.name)
    else:
        from train.synthetic import write_synthetic_dataset
        write_synthetic_dataset(root, per_class=10, size=64, seed=1)
    return root


def gray_noise(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:
    """A real (1-epoch, 32x32, from scratch) training run; shared by the tests that
    need a trained model: evaluation, export, runtime."""
    from train.config import TrainConfig
    from train.trainer import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(out=str(out), data=str(tiny_dataset), image_size=32, epochs=1,
                         batch_size=8, bootstrap_resamples=200)
    return train(config).root
