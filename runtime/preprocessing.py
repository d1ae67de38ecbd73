"""The one definition of how an image becomes model input.

Training, export calibration, the runtime and the demo all call `prepare()`; the spec
travels with every model (run directory and export manifest) as a plain dict, so a
model is never fed differently from how it was trained.

Pipeline: decoded image (any size, BGR uint8, see runtime.images) -> resize to the
model's square input with area interpolation (squashing, no crop: lesions can sit
anywhere in the frame) -> float32 -> subtract the per-channel mean and divide by std.
The default mean is ImageNet's in BGR order, the "caffe" convention VGG16's ImageNet
weights were trained with; std stays 1 (0..255 scale) for them and, as measured, for
from-scratch training too. Layout is NHWC.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)

_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class PreprocessSpec:
    image_size: int = 224
    channel_order: str = "BGR"
    layout: str = "NHWC"
    interpolation: str = "area"
    mean: tuple[float, float, float] = IMAGENET_BGR_MEAN
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    version: int = field(default=1)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError("image_size must be at least 32 (VGG16 needs 32x32 inputs)")
        if self.channel_order != "BGR" or self.layout != "NHWC":
            raise ValueError("only BGR channel order and NHWC layout are supported")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)


def resize(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize a decoded BGR uint8 image to the model's input size (still uint8)."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
    size = (spec.image_size, spec.image_size)
    if image_bgr.shape[:2] == size:
        return image_bgr
    return cv2.resize(image_bgr, size, interpolation=_INTERPOLATIONS[spec.interpolation])


def normalize(pixels, spec: PreprocessSpec):
    """Map 0..255 BGR pixel values to model input.

    Written with plain arithmetic so it works unchanged on NumPy arrays and on
    TensorFlow tensors: training applies it after augmentation, inside tf.data.
    """
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return (pixels - mean) / std


def prepare(image_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Decoded BGR uint8 image -> float32 HxWx3 model input."""
    return normalize(resize(image_bgr, spec).astype(np.float32), spec).astype(np.float32)


def prepare_batch(images_bgr: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """List of decoded images -> float32 NxHxWx3 batch."""
    if not images_bgr:
        return np.zeros((0, *spec.input_shape), dtype=np.float32)
    return np.stack([prepare(img, spec) for img in images_bgr])
