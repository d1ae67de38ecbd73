"""Quantization-aware fine-tuning with tensorflow-model-optimization.

A clone of the trained model gets fake-quantization ops (tfmot quantize_model, tf-keras
only), then trains a few epochs on the training split at a low learning rate so the
weights adapt to 8-bit rounding. The result converts to INT8 ONNX (tf2onnx emits QDQ ops)
and INT8 TFLite. Grad-CAM is not exported for QAT variants (probability only).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from export.finetune import fine_tune, weight_copy
from runtime.preprocessing import PreprocessSpec
from train.model import has_presence
from train.tf_setup import keras

log = logging.getLogger(__name__)

OUTPUT_NAME = "malignancy"


@dataclass
class QatResult:
    model: object            # the fine-tuned quantization-aware Keras model, output named "malignancy"
    epochs: int
    learning_rate: float
    n_train: int
    seconds: float
    history: dict


def quantization_aware_finetune(model, images_uint8: np.ndarray, labels: np.ndarray, spec: PreprocessSpec,
                                epochs: int, learning_rate: float = 1e-5, batch_size: int = 16,
                                seed: int = 0) -> QatResult:
    import tensorflow_model_optimization as tfmot

    if epochs < 1:
        raise ValueError("QAT needs at least one epoch")
    if has_presence(model):
        raise ValueError("quantization-aware training cannot take a presence model (--presence-weight): "
                         "tensorflow-model-optimization has no INT8 scheme for its product layer; "
                         "use the post-training onnx-int8 or tflite-int8 formats")
    start = time.monotonic()
    qat = tfmot.quantization.keras.quantize_model(weight_copy(model, seed))
    history = fine_tune(qat, images_uint8, labels, spec, epochs, learning_rate, batch_size, seed, "QAT")
    # quantize_model renames the output layer "quant_malignancy"; an identity layer gives
    # the exported graphs the same output name as every other variant.
    named = keras.Model(qat.inputs, keras.layers.Activation("linear", name=OUTPUT_NAME)(qat.output),
                        name="vgg16_breast_qat")
    return QatResult(named, epochs, learning_rate, int(len(labels)), time.monotonic() - start, history)
