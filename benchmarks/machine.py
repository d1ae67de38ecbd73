"""What machine a benchmark ran on: CPU model, cores, the instruction-set extensions that
decide INT8 speed, library versions, load. Detected at run time, never assumed.

INT8 convolutions are fast only with a dot-product instruction for 8-bit integers:
x86 VNNI (`avx512_vnni` on AVX-512 CPUs, `avx_vnni` on newer AVX2-only ones; AMX-INT8 on
Sapphire Rapids and later) or ARM's dot product (`asimddp`). Without one, ONNX Runtime's
uint8 x int8 kernels use AVX2 VPMADDUBSW and INT8 mostly buys a smaller file. Clinic PCs
are often older CPUs without VNNI, so a speed-up measured here may not carry over.
"""
from __future__ import annotations

import os
import platform
import sys

from runtime.host import cpu_flags, cpu_model, package_version

_PACKAGES = ("onnxruntime", "tensorflow", "tf-keras", "ai-edge-litert", "numpy", "opencv-python-headless")


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **{name: package_version(name) for name in _PACKAGES}}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(threads: int) -> dict:
    """The `machine` block of results.json."""
    from runtime.session import physical_cores

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "architecture": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "physical_cores": physical_cores(),
        "logical_cores": os.cpu_count(),
        "usable_cpus": usable,
        "flags": cpu_flags(),
        "versions": versions(),
        "python_executable": sys.executable,
        "threads": threads,
        "load_average_start": load_average(),
    }


def flags_text(flags: dict[str, bool]) -> str:
    shown = [name for name in ("avx2", "avx512", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "dotprod")
             if flags.get(name)]
    return ", ".join(shown) if shown else "no AVX2/AVX-512/VNNI/AMX"


def machine_line(machine: dict) -> str:
    v = machine["versions"]
    return (f"{machine['cpu']}; {machine['physical_cores']} physical / {machine['logical_cores']} logical cores; "
            f"{flags_text(machine['flags'])}; {machine['threads']} thread(s); "
            f"onnxruntime {v.get('onnxruntime')}, TensorFlow {v.get('tensorflow')}, "
            f"LiteRT {v.get('ai-edge-litert')}, Python {v.get('python')}")


def int8_note(flags: dict[str, bool]) -> str:
    """The plain-language INT8 caveat for results.md."""
    if flags.get("int8_dot_product"):
        which = [name for name in ("avx512_vnni", "avx_vnni", "amx_int8", "dotprod") if flags.get(name)]
        return (f"This CPU HAS 8-bit dot-product instructions ({', '.join(which)}), which make INT8 "
                "convolutions fast. INT8 speed-ups measured here will not carry over to clinic CPUs without "
                "VNNI (most older Intel/AMD desktop CPUs): there INT8 shrinks the model about 4x but "
                "barely speeds it up. Re-run the benchmark on the target PC before promising a speed-up.")
    return ("This CPU has no VNNI or dot-product instructions: INT8 then shrinks the model but barely "
            "speeds it up. Large speed-ups on such CPUs can only come from doing less arithmetic "
            "(smaller inputs, fewer channels).")
