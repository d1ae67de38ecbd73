"""Unstructured magnitude pruning with tensorflow-model-optimization, a SIZE option.

A copy of the trained model gets `prune_low_magnitude` wrappers on every Conv2D and Dense
layer except the 1-unit output layer, then fine-tunes a few epochs on the training split
(the data path of export/qat.py) while a sparsity schedule zeroes the smallest-magnitude
weights: polynomial decay from 0 to the target over the first ~3/4 of the steps when there
are enough steps, otherwise constant at the target. `strip_pruning` removes the wrappers,
leaving an ordinary Keras model whose kernels are `sparsity` zeros.

What it buys: a smaller COMPRESSED file (zeros compress; the manifest records every
variant's gzip size). What it does not: speed. ONNX Runtime's CPU kernels are dense and
multiply the zeros like any other weight, so a sparse model runs as fast as the dense one
and its raw .onnx file is as large. For speed, remove whole filters (`bcd slim`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from export.finetune import fine_tune, weight_copy
from runtime.preprocessing import PreprocessSpec
from train.model import CONDITIONAL_LAYER, PRESENCE_LAYER, PROBABILITY_OUTPUT
from train.tf_setup import keras

log = logging.getLogger(__name__)

# too small to prune (one weight per hidden unit): the output layer, or a presence model's two factors
OUTPUT_LAYERS = (PROBABILITY_OUTPUT, CONDITIONAL_LAYER, PRESENCE_LAYER)


@dataclass
class SparseResult:
    model: object            # the stripped, pruned Keras model (ordinary layers, same names)
    target: float            # requested sparsity
    achieved: float          # share of zeros in the pruned kernels after fine-tuning
    schedule: str
    epochs: int
    learning_rate: float
    n_train: int
    seconds: float
    history: dict


def prunable(layer) -> bool:
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.name not in OUTPUT_LAYERS


def kernel_sparsity(model) -> float:
    """Share of exactly-zero values in the kernels of the prunable layers."""
    zeros = total = 0
    for layer in model.layers:
        if prunable(layer):
            kernel = np.asarray(layer.kernel)
            zeros += int(np.count_nonzero(kernel == 0))
            total += kernel.size
    return zeros / total if total else 0.0


def _schedule(tfmot, sparsity: float, total_steps: int):
    if total_steps >= 8:
        end = max(1, int(total_steps * 0.75))
        frequency = max(1, end // 8)
        end = frequency * (end // frequency)          # the last mask update lands on end_step
        return (tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=frequency),
                f"polynomial 0 -> {sparsity:g} over steps 0..{end} (every {frequency}), {total_steps} steps")
    return (tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=1),
            f"constant {sparsity:g} from step 0, {total_steps} step(s)")


def magnitude_prune(model, images_uint8: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, sparsity: float,
                    epochs: int, learning_rate: float = 1e-5, batch_size: int = 16, seed: int = 0) -> SparseResult:
    import tensorflow_model_optimization as tfmot

    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must lie strictly between 0 and 1, got {sparsity}")
    if epochs < 1:
        raise ValueError("magnitude pruning needs at least one fine-tuning epoch")
    start = time.monotonic()
    # Work on a copy: the wrappers below reuse the layers they wrap, and the dense model
    # must stay as it is for the other variants.
    copy = weight_copy(model, seed)
    steps = math.ceil(len(labels) / batch_size) * epochs
    schedule, text = _schedule(tfmot, sparsity, steps)
    prune = tfmot.sparsity.keras.prune_low_magnitude

    def wrap(layer):
        return prune(layer, pruning_schedule=schedule) if prunable(layer) else layer

    pruned = keras.models.clone_model(copy, clone_function=wrap)
    history = fine_tune(pruned, images_uint8, labels, spec, epochs, learning_rate, batch_size, seed,
                        "pruning fine-tune", callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    # The optimizer's last step may have moved masked weights; apply the masks once more.
    for layer in pruned.layers:
        if hasattr(layer, "pruning_vars"):         # the prune_low_magnitude wrappers
            for weight, mask, _ in layer.pruning_vars:
                weight.assign(weight * mask)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    # The stripped layers are the copy's own layers, now called in two graphs; a fresh
    # clone gives layers with one graph each (Grad-CAM addresses layer outputs by name).
    clean = keras.models.clone_model(stripped)
    clean.set_weights(stripped.get_weights())
    stripped = clean
    achieved = kernel_sparsity(stripped)
    log.info("magnitude pruning: %.1f%% of the Conv2D/Dense kernels are zero (target %.0f%%)",
             100 * achieved, 100 * sparsity)
    return SparseResult(stripped, sparsity, achieved, text, epochs, learning_rate, int(len(labels)),
                        time.monotonic() - start, history)
