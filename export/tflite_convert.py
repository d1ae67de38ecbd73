"""Keras -> TFLite with tf.lite.TFLiteConverter.from_keras_model (works with tf-keras,
see STACK-NOTES): FP32, FP16 weights, dynamic-range INT8, and full-integer INT8 with a
representative dataset (float32 input and output kept, so the runtime feeds the same
array to every variant)."""
from __future__ import annotations

import logging
import warnings

from export.quiet import quiet
from train.tf_setup import tf

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")


def convert(model, precision: str, representative=None) -> bytes:
    """Return the .tflite flatbuffer; `representative` (a generator function) is needed
    for "int8"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown TFLite precision {precision!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if representative is None:
            raise ValueError("full-integer INT8 needs a representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    with quiet(), warnings.catch_warnings():
        # full-integer conversion with float32 input warns that it has no input statistics;
        # expected: the input stays float32 and is quantized inside the model
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()
