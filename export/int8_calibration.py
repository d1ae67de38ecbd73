"""Calibration data for static INT8 quantization, fed through runtime.preprocessing so
the quantizer sees exactly what the runtime will feed the model.

ONNX Runtime: a CalibrationDataReader yielding batches. It also implements `__len__` and
`set_range` so quantize_static can collect in chunks (extra option CalibStridedMinMax,
which despite its name works for every calibration method): the entropy and percentile
calibrators otherwise keep every intermediate activation of every calibration batch in
memory, about 60-120 MB per image for VGG16 at 224x224, i.e. >10 GB for 200 images.

TFLite: a representative-dataset generator of single images.
"""
from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from runtime.preprocessing import PreprocessSpec, prepare

INPUT_NAME = "image"


def prepared_batches(images_uint8: np.ndarray, spec: PreprocessSpec, batch_size: int) -> list[np.ndarray]:
    batches = []
    for start in range(0, len(images_uint8), batch_size):
        chunk = images_uint8[start:start + batch_size]
        batches.append(np.stack([prepare(img, spec) for img in chunk]).astype(np.float32))
    return batches


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds {"image": float32 batch} to ONNX Runtime's calibrator."""

    def __init__(self, images_uint8: np.ndarray, spec: PreprocessSpec, batch_size: int = 8,
                 input_name: str = INPUT_NAME):
        if len(images_uint8) == 0:
            raise ValueError("no calibration images")
        self.input_name = input_name
        self.batches = prepared_batches(images_uint8, spec, batch_size)
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))


def representative_dataset(images_uint8: np.ndarray, spec: PreprocessSpec):
    """A callable for TFLiteConverter.representative_dataset (one image per step)."""
    if len(images_uint8) == 0:
        raise ValueError("no calibration images")

    def generate():
        for img in images_uint8:
            yield [prepare(img, spec)[np.newaxis]]

    return generate
