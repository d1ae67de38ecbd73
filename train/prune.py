"""Structured (filter) pruning of the project's VGG16: fewer conv filters, a thinner
network with the same layer names.

Why filters and not single weights: ONNX Runtime on AVX2 CPUs runs dense FP32 near the
arithmetic peak and gains nothing from scattered zeros; removing whole filters removes
arithmetic (a conv's MACs scale with in-channels x out-channels, so keeping half the
filters in every layer leaves about a quarter of the MACs).

Three parts, each usable alone:
- importance: the L1 norm of each filter's kernel (filters with small weights contribute
  little to the next layer; Li et al. 2017, "Pruning Filters for Efficient ConvNets");
- how many filters to keep: one uniform keep ratio for every conv layer (never below
  `min_filters`), given directly or found by bisection against a MACs target;
- the weight copy: a pure-numpy core that slices each conv's output channels, the next
  conv's input channels and the first dense layer's input rows, and a Keras wrapper
  that rebuilds the model from its own config with fewer filters, so every layer keeps
  its name (export and Grad-CAM find block5_conv3 by name).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CRITERIA = ("l1", "activation")
MIN_FILTERS = 8     # below this a layer becomes a bottleneck for little further saving


# ---- importance and keep counts (pure numpy) ----------------------------------------

def filter_importance(kernel: np.ndarray, criterion: str = "l1") -> np.ndarray:
    """One score per output filter of a conv kernel (kh, kw, cin, cout), from the
    weights alone (the "activation" criterion needs images: activation_importance)."""
    if criterion != "l1":
        raise ValueError(f"unknown pruning criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def keep_count(n_filters: int, ratio: float, min_filters: int = MIN_FILTERS) -> int:
    """Filters kept in a layer of n when pruning `ratio` of them: ceil((1-ratio)*n), at
    least min_filters (and never more than the layer has)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    # the small epsilon keeps e.g. (1-0.5)*64 = 32.000000001 from rounding up to 33
    return min(n_filters, max(min_filters, math.ceil((1.0 - ratio) * n_filters - 1e-9)))


def kept_filters(kernel: np.ndarray, n_keep: int, criterion: str = "l1") -> np.ndarray:
    """Indices of the n_keep most important filters, in their original order (so the
    thin network is a strict sub-network of the full one)."""
    return top_filters(filter_importance(kernel, criterion), n_keep)


def top_filters(scores: np.ndarray, n_keep: int) -> np.ndarray:
    best = np.argsort(-np.asarray(scores), kind="stable")[:n_keep]
    return np.sort(best)


def slice_chain(convs: list[tuple[np.ndarray, np.ndarray]], keep: list[np.ndarray],
                dense_kernel: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Weights of the thin network for a plain chain conv -> (pool) -> conv ... -> GAP -> dense.

    convs: (kernel (kh, kw, cin, cout), bias (cout,)) per conv layer, in order; keep: the
    kept output filters per conv layer; dense_kernel: (channels of the last conv, units).
    Each conv keeps its kept output filters and, as inputs, the previous conv's kept
    filters (pooling passes channels through unchanged); the dense layer after global
    average pooling keeps the rows of the last conv's kept filters."""
    if len(convs) != len(keep):
        raise ValueError(f"{len(convs)} conv layers but {len(keep)} keep lists")
    out, previous = [], None
    for (kernel, bias), idx in zip(convs, keep):
        if previous is not None:
            kernel = kernel[:, :, previous, :]
        out.append((np.ascontiguousarray(kernel[..., idx]), np.ascontiguousarray(bias[idx])))
        previous = idx
    return out, np.ascontiguousarray(dense_kernel[previous, :])


# ---- MACs of a plan, without building a model -------------------------------------

@dataclass(frozen=True)
class ConvShape:
    name: str
    out_pixels: int         # output height x width
    kernel_area: int        # kh x kw
    in_channels: int        # of the full model
    filters: int            # of the full model


def conv_shapes(model) -> list[ConvShape]:
    from train.tf_setup import keras
    shapes = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output_shape
            kh, kw = layer.kernel_size
            shapes.append(ConvShape(layer.name, int(h) * int(w), kh * kw, int(layer.input_shape[-1]), int(cout)))
    return shapes


def chain_macs(shapes: list[ConvShape], keep_counts: list[int], dense_macs_per_input: int) -> int:
    """MACs of the conv chain with keep_counts filters per layer, plus the first dense
    layer (its inputs = the last conv's filters); the same count as train.cost.count_macs
    minus the layers after the first dense (which pruning does not touch)."""
    total, cin = 0, shapes[0].in_channels
    for shape, cout in zip(shapes, keep_counts):
        total += shape.out_pixels * shape.kernel_area * cin * cout
        cin = cout
    return total + cin * dense_macs_per_input


def ratio_for_target(shapes: list[ConvShape], dense_units: int, other_macs: int, target_macs: float,
                     min_filters: int = MIN_FILTERS) -> float:
    """The smallest uniform pruning ratio whose model fits target_macs (bisection; the
    MACs only fall as the ratio grows). other_macs: layers pruning does not change."""
    def macs(ratio: float) -> int:
        counts = [keep_count(s.filters, ratio, min_filters) for s in shapes]
        return chain_macs(shapes, counts, dense_units) + other_macs

    if macs(0.0) <= target_macs:
        return 0.0
    high = 1.0 - 1e-9
    if macs(high) > target_macs:
        raise ValueError(f"--target-macs {target_macs:.3g} is below the smallest prunable model "
                         f"({macs(high):.3g} MACs with {min_filters} filters per conv layer)")
    low = 0.0                      # invariant: macs(low) > target >= macs(high)
    for _ in range(60):
        mid = (low + high) / 2
        if macs(mid) <= target_macs:
            high = mid
        else:
            low = mid
    return high


# ---- the Keras model ----------------------------------------------------------------

def conv_layer_names(model) -> list[str]:
    from train.tf_setup import keras
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def first_dense_after_convs(model):
    """The dense layer fed (through global average pooling) by the last conv."""
    from train.tf_setup import keras
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError("the model has no dense layer after its conv layers")
    return dense[0]


def activation_importance(model, images: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Mean post-ReLU output of every conv filter over `images` (model input, already
    preprocessed). A from-scratch network's kernels keep norms close to their random
    start, so L1 says little there; what a filter actually fires on data says more."""
    from train.tf_setup import keras

    names = conv_layer_names(model)
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    sums = {n: np.zeros(model.get_layer(n).filters) for n in names}
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start:start + batch_size], training=False)
        for name, out in zip(names, outputs):
            sums[name] += np.asarray(out, dtype=np.float64).mean(axis=(1, 2)).sum(axis=0)
    return {n: s / max(len(images), 1) for n, s in sums.items()}


def plan_keep(model, ratio: float, criterion: str = "l1", min_filters: int = MIN_FILTERS,
              images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Kept filter indices per conv layer name: the same ratio in every layer, the most
    important filters (by `criterion`) within each layer. "activation" needs `images`."""
    if criterion == "activation":
        if images is None or len(images) == 0:
            raise ValueError("the activation criterion needs images to measure filters on")
        scores = activation_importance(model, images)
    plan = {}
    for name in conv_layer_names(model):
        kernel = model.get_layer(name).get_weights()[0]
        n_keep = keep_count(kernel.shape[-1], ratio, min_filters)
        plan[name] = (top_filters(scores[name], n_keep) if criterion == "activation"
                      else kept_filters(kernel, n_keep, criterion))
    return plan


def prune_model(model, keep: dict[str, np.ndarray]):
    """A thinner copy of `model` keeping keep[name] filters of each conv layer, with the
    kept weights copied. Layer names, activations, the head and every other setting come
    from the model's own config, so the result is the same network minus filters.
    Assumes the VGG-style chain: conv/pool layers in sequence, then GAP and dense."""
    from train.tf_setup import keras

    names = conv_layer_names(model)
    if set(keep) != set(names):
        raise ValueError(f"keep plan names {sorted(keep)} do not match the conv layers {names}")
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "Conv2D":
            layer["config"]["filters"] = int(len(keep[layer["config"]["name"]]))
    thin = keras.Model.from_config(config)

    convs = [tuple(model.get_layer(n).get_weights()) for n in names]
    sliced, dense_kernel = slice_chain(convs, [keep[n] for n in names], first_dense_after_convs(model).get_weights()[0])
    for name, weights in zip(names, sliced):
        thin.get_layer(name).set_weights(list(weights))
    dense = first_dense_after_convs(model)
    thin.get_layer(dense.name).set_weights([dense_kernel] + dense.get_weights()[1:])
    untouched = {dense.name, *names}
    for layer in model.layers:
        if layer.name not in untouched and layer.get_weights():
            thin.get_layer(layer.name).set_weights(layer.get_weights())
    return thin
