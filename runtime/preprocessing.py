"""The one definition of how an image becomes model input.

Training, export calibration, the runtime and the demo all call `prepare()`; the spec
travels with every model (run directory and export manifest) as a plain dict, so a
model is never fed differently from how it was trained.

Pipeline: decoded image (any size, BGR uint8, see runtime.images) -> [thin_marks "open":
remove thin bright marks, below] -> resize to the model's square input with area
interpolation (squashing, no crop: lesions can sit anywhere in the frame) -> float32 ->
[grey_map "equalize": equalize the grey levels, below] -> subtract the per-channel mean
and divide by std.
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

# thin_marks "open": a sonographer's calipers, dotted lines and thin text are bright strokes
# one or two pixels wide. The scan is first area-resized to OPEN_SCALE x the model's input,
# where a grey opening with an OPEN_SIZE-pixel square removes every bright detail narrower
# than that square, then resized to the input. The opening runs at a scale fixed by the
# input, not by the file, so a scan and the same scan resampled by a screen capture lose
# the same details (the shape finder of runtime.caliper_marks did not survive resampling:
# docs/scanner-images.md). "keep": no opening (models trained before it).
THIN_MARKS = ("keep", "open")
OPEN_SCALE, OPEN_SIZE = 2, 3
_OPEN_KERNEL = np.ones((OPEN_SIZE, OPEN_SIZE), np.uint8)

# grey_map "equalize": scanners and sonographers map echo strength to grey differently
# (gain, dynamic range, grey map curves): monotone changes of the grey levels. Histogram
# equalization gives nearly the same image for any monotone change, so a model trained on it
# cannot learn one site's grey map. Levels at or below EQUALIZE_FLOOR are background (a
# fan's corners, a black margin: their share varies with the probe and the crop) and stay
# black, out of the histogram. It runs on the input-size image after augmentation
# (normalize), so training's gain and contrast draws reach the model as the runtime's
# images do. "keep": the grey levels as they are (models trained before it).
GREY_MAPS = ("keep", "equalize")
EQUALIZE_FLOOR = 8

_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


@dataclass(frozen=True)
class PreprocessSpec:
    image_size: int = 224
    channel_order: str = "BGR"
    layout: str = "NHWC"
    interpolation: str = "area"
    mean: tuple[float, float, float] = IMAGENET_BGR_MEAN
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    thin_marks: str = "keep"
    grey_map: str = "keep"
    version: int = field(default=1)

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError("image_size must be at least 32 (VGG16 needs 32x32 inputs)")
        if self.channel_order != "BGR" or self.layout != "NHWC":
            raise ValueError("only BGR channel order and NHWC layout are supported")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}")
        if self.thin_marks not in THIN_MARKS:
            raise ValueError(f"thin_marks must be one of {', '.join(THIN_MARKS)}, got {self.thin_marks!r}")
        if self.grey_map not in GREY_MAPS:
            raise ValueError(f"grey_map must be one of {', '.join(GREY_MAPS)}, got {self.grey_map!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.grey_map == "keep":   # as before the setting existed: older runtimes read such a model, caches stay valid
            del d["grey_map"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:   # a step this code does not know would be silently skipped: refuse instead
            raise ValueError(f"unknown preprocessing setting(s) {', '.join(unknown)}: the model was made by a newer "
                             "version of this tool; upgrade it")
        fields = dict(d)
        for key in ("mean", "std"):
            if key in fields:
                fields[key] = tuple(float(v) for v in fields[key])
        return cls(**fields)

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
    if spec.thin_marks == "open":
        image_bgr = open_thin_marks(image_bgr, spec.image_size)
    return cv2.resize(image_bgr, size, interpolation=_INTERPOLATIONS[spec.interpolation])


def open_thin_marks(image_bgr: np.ndarray, image_size: int) -> np.ndarray:
    """The scan at OPEN_SCALE x the input size (area resize, only ever down) with bright
    details narrower than OPEN_SIZE pixels there removed by a grey opening."""
    mid = OPEN_SCALE * image_size
    if image_bgr.shape[0] > mid and image_bgr.shape[1] > mid:
        image_bgr = cv2.resize(image_bgr, (mid, mid), interpolation=cv2.INTER_AREA)
    return cv2.morphologyEx(image_bgr, cv2.MORPH_OPEN, _OPEN_KERNEL)


def equalize_grey(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 or NxHxWx3 BGR values 0..255 -> the same shape, float32, each image's grey
    levels equalized (grey_map "equalize", above). One look-up table per image, from the
    histogram of its channel mean, is applied to every channel, so a grey scan stays grey."""
    x = np.asarray(pixels, dtype=np.float32)
    batch = x if x.ndim == 4 else x[None]
    out = np.empty_like(batch)
    for i, image in enumerate(batch):
        levels = np.clip(np.rint(image), 0, 255).astype(np.intp)
        grey = np.clip(np.rint(image.mean(axis=2)), 0, 255).astype(np.intp)
        cdf = np.cumsum(np.bincount(grey.ravel(), minlength=256))
        dark = cdf[EQUALIZE_FLOOR]
        lut = (255.0 * np.clip(cdf - dark, 0, None) / max(int(cdf[-1] - dark), 1)).astype(np.float32)
        out[i] = lut[levels]
    return out if x.ndim == 4 else out[0]


def normalize(pixels, spec: PreprocessSpec):
    """Map 0..255 BGR pixel values to model input.

    The mean and std are plain arithmetic, so they work unchanged on NumPy arrays and on
    TensorFlow tensors: training applies them after augmentation, inside tf.data. The grey
    map is NumPy only; training runs it through train.tf_setup.normalize_tensor.
    """
    if spec.grey_map == "equalize":
        if not isinstance(pixels, np.ndarray):
            raise TypeError("the grey map runs on NumPy arrays: use train.tf_setup.normalize_tensor on tensors")
        pixels = equalize_grey(pixels)
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
