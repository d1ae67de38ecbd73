"""Training precision: mixed bfloat16 where the CPU computes bfloat16 natively.

On CPUs with AVX-512 BF16 or AMX, Keras' "mixed_bfloat16" policy (bfloat16 compute,
float32 variables) trains VGG16 several times faster (see docs/training.md, "Training speed");
elsewhere bfloat16 is emulated and slower, so `auto` reads the CPU flags. The model
that is saved (model.keras) is always float32 (train.model.inference_model), so the
export and the runtime never see bfloat16.
"""
from __future__ import annotations

from runtime.host import cpu_flag_set

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_precision(requested: str, cpuinfo: str | None = None) -> str:
    """'float32' or 'bfloat16' for a requested 'auto' | 'float32' | 'bfloat16'."""
    if requested != "auto":
        return requested
    return "bfloat16" if cpu_flag_set(cpuinfo) & set(NATIVE_BF16_FLAGS) else "float32"


def apply_precision(precision: str) -> None:
    """Set Keras' global dtype policy before the model is built."""
    from train.tf_setup import keras
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
