"""Arithmetic cost of a Keras model: multiply-accumulates per image and parameters.

The one counter of the project: training (run.json "model.cost"), pruning (`bcd slim`
picks a keep ratio against a MACs target), the export (the manifest's `model_cost`) and
the benchmarks (GMAC per image, the size sweep) all call it, so their numbers agree.
"""
from __future__ import annotations


def count_macs(model) -> int:
    """Multiply-accumulates per image of the Conv2D and Dense layers (what dominates
    VGG16; pooling, ReLU and biases are a rounding error next to them)."""
    from train.tf_setup import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output_shape
            kh, kw = layer.kernel_size
            cin = layer.input_shape[-1]
            total += int(h) * int(w) * kh * kw * int(cin) * int(cout)
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.input_shape[-1]) * int(layer.units)
    return total


def model_cost(model) -> dict:
    """{"macs": multiply-accumulates per image, "params": every weight, trainable or not}."""
    return {"macs": count_macs(model), "params": int(model.count_params())}
