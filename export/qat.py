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

from runtime.preprocessing import PreprocessSpec
from train.data import make_tf_dataset
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


def _balanced_weights(labels: np.ndarray) -> dict[int, float] | None:
    counts = np.bincount(labels.astype(int), minlength=2)
    if counts.min() == 0:
        return None
    return {c: float(len(labels) / (2 * counts[c])) for c in (0, 1)}


def quantization_aware_finetune(model, images_uint8: np.ndarray, labels: np.ndarray, spec: PreprocessSpec,
                                epochs: int, learning_rate: float = 1e-5, batch_size: int = 16,
                                seed: int = 0) -> QatResult:
    import tensorflow_model_optimization as tfmot

    if epochs < 1:
        raise ValueError("QAT needs at least one epoch")
    start = time.monotonic()
    keras.utils.set_random_seed(seed)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    qat = tfmot.quantization.keras.quantize_model(clone)
    qat.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy",
                metrics=[keras.metrics.AUC(name="auc")])
    data = make_tf_dataset(images_uint8, labels, spec, batch_size, training=True, seed=seed)
    history = qat.fit(data, epochs=epochs, class_weight=_balanced_weights(labels), verbose=0)
    for epoch in range(epochs):
        log.info("QAT epoch %d/%d: loss %.4f, AUC %.3f", epoch + 1, epochs,
                 history.history["loss"][epoch], history.history.get("auc", [float("nan")] * epochs)[epoch])
    # quantize_model renames the output layer "quant_malignancy"; an identity layer gives
    # the exported graphs the same output name as every other variant.
    named = keras.Model(qat.inputs, keras.layers.Activation("linear", name=OUTPUT_NAME)(qat.output),
                        name="vgg16_breast_qat")
    return QatResult(named, epochs, learning_rate, int(len(labels)), time.monotonic() - start,
                     {k: [float(v) for v in vals] for k, vals in history.history.items()})
