"""Arithmetic of a Keras model: multiply-accumulates per image and parameter count,
recorded in the manifest (`model_cost`) and shown by `bcd benchmark`.

MACs are those of the dense arithmetic: quantized (INT8) and magnitude-pruned (sparse)
variants of a model have the same count as its FP32 original, because ONNX Runtime's CPU
kernels multiply the zeros too.
"""
from __future__ import annotations


def keras_model_cost(model) -> dict:
    """{"macs": Conv2D + Dense multiply-accumulates per image, "params": parameters}.

    Uses `train.cost.model_cost` when the project has it, else `benchmarks.sweep.count_macs`."""
    try:
        from train.cost import model_cost
    except ImportError:
        model_cost = None
    if model_cost is not None:
        cost = model_cost(model)
        macs = cost["macs"] if isinstance(cost, dict) else getattr(cost, "macs")
        params = cost.get("params") if isinstance(cost, dict) else getattr(cost, "params", None)
    else:
        from benchmarks.sweep import count_macs
        macs, params = count_macs(model), None
    if params is None:
        params = model.count_params()
    return {"macs": int(macs), "params": int(params)}
