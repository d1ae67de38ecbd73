"""Benchmark exported variants against the original Keras model: latency, throughput,
cold start, memory, file size and accuracy at the operating threshold, measured in one
run so the ratios are comparable. See benchmarks/README.md.

Library use (`bcd benchmark` and `python -m benchmarks` are thin layers over this):

    from benchmarks import BenchmarkConfig, run_benchmark
    result = run_benchmark(BenchmarkConfig(export_dir="exports/busi-224", runs=30))
    result.doc["variants"], result.exit_code

Importing this package is light (stdlib only); TensorFlow, ONNX Runtime and matplotlib
load when run_benchmark runs.
"""
from benchmarks.config import BenchmarkConfig

__all__ = ["BenchmarkConfig", "BenchmarkResult", "BaselineError", "run_benchmark"]


def __getattr__(name):
    if name in ("run_benchmark", "BenchmarkResult", "BaselineError"):
        from benchmarks import runner
        return getattr(runner, name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
