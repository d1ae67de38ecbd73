"""ONNX Runtime sessions tuned for weak CPU-only PCs.

- All graph optimizations (constant folding, Conv+ReLU fusion, QDQ fusion for INT8, ...).
- Intra-op threads = physical cores (not hyper-threads: a VGG16 conv saturates a core's
  FMA units, so a second hyper-thread only adds contention), limited to the CPUs this
  process may run on (containers, `taskset`). Overridable.
- Sequential execution: VGG16 is a chain, there is nothing to run in parallel across
  nodes, and an inter-op pool would only take cores from the intra-op one.
- No spin-waiting (`session.intra_op.allow_spinning` = 0): by default ONNX Runtime's
  worker threads busy-wait between and after runs. On a PC that also does other work
  (a clinic PC; the 2-core machine these numbers come from also ran a training job)
  the spinning threads compete with that work and with each other; the shipped INT8
  models ran 1.5-1.7x faster at batch 1 without it there (docs/results/RESULTS.md,
  "Backends"). `spinning=True` restores ONNX Runtime's default.
- The model is passed as the bytes that were already checked (sha256, external data),
  so the file can't be swapped between the check and the load; external data, if
  any, is resolved in the model's own folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from runtime.host import read_cpuinfo

_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
_SPIN_KEY = "session.intra_op.allow_spinning"
DEFAULT_SPINNING = False


def physical_cores(cpuinfo: str | None = None) -> int:
    """Number of physical cores usable by this process.

    Counts distinct (physical id, core id) pairs in /proc/cpuinfo among the CPUs in this
    process's affinity mask; falls back to the logical CPU count where /proc/cpuinfo
    is unavailable (Windows, macOS) or has no core ids (some VMs, ARM boards).
    """
    allowed = _allowed_cpus()
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    cores = set()
    for block in cpuinfo.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields or "core id" not in fields:
            continue
        try:
            cpu = int(fields["processor"])
        except ValueError:
            continue
        if allowed is not None and cpu not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields["core id"]))
    if cores:
        return len(cores)
    logical = len(allowed) if allowed is not None else (os.cpu_count() or 1)
    return max(1, logical)


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def default_threads() -> int:
    return physical_cores()


def resolve_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


def session_options(threads: int, model_dir: Path | None = None, spinning: bool = DEFAULT_SPINNING) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    options.add_session_config_entry(_SPIN_KEY, "1" if spinning else "0")
    if model_dir is not None:
        options.add_session_config_entry(_EXTERNAL_FOLDER_KEY, str(Path(model_dir).resolve()))
    return options


def create_session(model_bytes: bytes, model_dir: Path, threads: int,
                   spinning: bool = DEFAULT_SPINNING) -> ort.InferenceSession:
    """A CPU session for already-verified model bytes whose file lives in `model_dir`."""
    return ort.InferenceSession(
        model_bytes, sess_options=session_options(threads, model_dir, spinning), providers=["CPUExecutionProvider"]
    )
