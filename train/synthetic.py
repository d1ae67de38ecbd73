"""A small built-in dataset of synthetic ultrasound-like images.

It lets `bcd train` run end to end on a fresh machine with no data and no internet:
speckled background, a dark lesion that is a smooth ellipse ("benign") or an irregular,
spiculated blob ("malignant"), loosely after the BI-RADS shape descriptors. Numbers
from it mean nothing clinically; it exists to exercise the pipeline.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.rayleigh(40.0, (size, size))
    depth = np.linspace(1.2, 0.6, size)[:, None]  # echoes weaken with depth
    return np.clip(base * depth + 30, 0, 255)


def _lesion_mask(rng: np.random.Generator, size: int, malignant: bool) -> np.ndarray:
    centre = rng.uniform(0.35, 0.65, 2) * size
    radius = rng.uniform(0.12, 0.2) * size
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    if malignant:  # irregular margin with spikes
        r = radius * (1 + 0.35 * rng.standard_normal(64).clip(-1.5, 1.5))
        r[rng.integers(0, 64, 8)] *= 1.6
    else:          # smooth, wider-than-tall ellipse
        r = radius * np.hypot(1.3 * np.cos(angles), 0.8 * np.sin(angles)) / 1.1
    pts = np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    return mask.astype(bool)


def synthetic_image(rng: np.random.Generator, size: int, malignant: bool) -> np.ndarray:
    img = _speckle(rng, size)
    mask = _lesion_mask(rng, size, malignant)
    img[mask] *= 0.25
    img = cv2.GaussianBlur(img.astype(np.float32), (3, 3), 0)
    return cv2.cvtColor(img.clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def write_synthetic_dataset(folder: str | Path, per_class: int = 40, size: int = 96, seed: int = 0) -> Path:
    """Write benign/ and malignant/ PNGs below `folder` (skipped if already complete)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for cls, malignant in (("benign", False), ("malignant", True)):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = synthetic_image(rng, size, malignant)
            target = folder / cls / f"{cls} ({i + 1}).png"
            if not target.exists():
                cv2.imwrite(str(target), img)
    return folder
