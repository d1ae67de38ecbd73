"""Grad-CAM maps for people: normalise, bring to the image's size, colour and blend.

The model's "cam" output is relu(sum_k alpha_k A_k) at the last conv block's
resolution (e.g. 14x14 for a 224x224 input), unnormalised. Each map is divided by its
own maximum, so 1 marks the region that pushed most towards "malignant" in THIS image
and 0 marks no evidence; maps of different images are not comparable in absolute
terms. Dividing by the maximum (rather than stretching min..max) keeps a map that is
almost uniform looking almost uniform instead of inventing contrast.

The model saw the whole image squashed to a square (no crop), so resizing the map to
the original width x height puts every cell back over the pixels it came from.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from runtime import atomic

DEFAULT_ALPHA = 0.4


def normalize_cam(cam: np.ndarray) -> np.ndarray:
    """One (h, w) map -> float32 in 0..1 (negative values and NaN become 0; an all-zero
    map stays all zero)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if cam.ndim != 2:
        raise ValueError(f"expected one (h, w) map, got shape {cam.shape}")
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 0.0:
        return np.zeros_like(cam)
    return cam / peak


def cam_to_image(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised map resized (bilinear) to height x width, float32 in 0..1."""
    resized = cv2.resize(normalize_cam(cam), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


def overlay(image_bgr: np.ndarray, cam: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """JET-coloured map blended over the image: HxWx3 uint8 BGR, same size as the image.

    `cam` may have any size (it is resized); it is normalised per image, so a map that
    is already 0..1 is unchanged unless its maximum is below 1.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must lie in 0..1")
    height, width = image_bgr.shape[:2]
    heat = cam_to_image(cam, height, width)
    colored = cv2.applyColorMap(np.rint(heat * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(colored, alpha, image_bgr, 1.0 - alpha, 0.0)


def save_overlay(image_bgr: np.ndarray, cam: np.ndarray, path: str | os.PathLike,
                 alpha: float = DEFAULT_ALPHA) -> None:
    """Write the overlay as a PNG, atomically."""
    ok, encoded = cv2.imencode(".png", overlay(image_bgr, cam, alpha))
    if not ok:
        raise OSError(f"could not encode the Grad-CAM overlay for {path}")
    atomic.write_bytes(path, encoded.tobytes())
