"""Latency against input size: the same architecture (train.model.build_model, the
project's VGG16 + GAP/dense head) built at each size with RANDOM weights
(weights="none"; dense FP32 arithmetic does not depend on the weight values, so latency
does not either), converted to ONNX FP32 with the export's own converter
(export.onnx_convert.keras_to_onnx), and timed at batch 1: Keras
`model(x, training=False)` against ONNX Runtime FP32 (the runtime's session options),
interleaved like the main benchmark. No accuracy: these models are untrained.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.timing import interleaved, ratio
from train.cost import count_macs  # one MACs definition for training, slim and benchmarks

log = logging.getLogger(__name__)

NOTE = ("random weights (train.model.build_model, weights='none'): latency only, no accuracy; dense FP32 "
        "convolutions take the same time whatever the weight values")


def sweep_sizes(sizes: tuple[int, ...], runs: int, warmup: int, rounds: int, threads: int,
                opset: int = 17) -> dict:
    """The sizes.json document."""
    from export.onnx_convert import keras_to_onnx
    from runtime.session import create_session
    from train.model import ModelConfig, build_model

    entries = []
    for k, size in enumerate(sizes, 1):
        log.info("size sweep %d/%d: %dx%d: building VGG16 (random weights) and converting to ONNX", k,
                 len(sizes), size, size)
        entry: dict = {"size": size}
        try:
            model, _ = build_model(ModelConfig(image_size=size, weights="none"))
            entry["gmac"] = count_macs(model) / 1e9
            proto = keras_to_onnx(model, size, opset)
            with tempfile.TemporaryDirectory(prefix="bcd-sweep-") as work:
                session = create_session(proto.SerializeToString(), Path(work), threads)
            input_name = session.get_inputs()[0].name
            x = np.random.default_rng(size).normal(0.0, 50.0, (1, size, size, 3)).astype(np.float32)
            targets = {
                "keras": lambda: model(x, training=False),
                "onnx_fp32": lambda: session.run(None, {input_name: x}),
            }
            timing = interleaved(targets, runs, warmup, rounds, what=f"size {size}")
            for name in targets:
                entry[name] = timing.stats(name)
                if name in timing.errors:
                    entry[f"{name}_error"] = timing.errors[name]
            entry["speedup_p50"] = ratio((entry["keras"] or {}).get("p50"), (entry["onnx_fp32"] or {}).get("p50"))
        except Exception as err:  # noqa: BLE001 - one size failing must not stop the others
            entry["error"] = " ".join(f"{err.__class__.__name__}: {err}".split())[:400]
            entry.setdefault("keras", None)
            entry.setdefault("onnx_fp32", None)
            entry.setdefault("speedup_p50", None)
            log.error("size %d: %s", size, entry["error"])
        finally:
            model = session = None  # noqa: F841 - free the memory before the next size
        entries.append(entry)
    return {"note": NOTE, "batch": 1, "runs": runs, "warmup": warmup, "threads": threads, "sizes": entries}


def sweep_markdown(doc: dict) -> list[str]:
    lines = [
        "## Latency vs input size (Keras vs ONNX Runtime FP32, batch 1)",
        "",
        f"Note: {doc['note']}. {doc['runs']} timed runs per point, {doc['threads']} thread(s). See `sizes.png`.",
        "",
        "| size | GMAC/image | Keras p50 ms | Keras p95 ms | ORT FP32 p50 ms | ORT FP32 p95 ms | ORT speed-up (p50) |",
        "|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt=".1f"):
        return "-" if v is None else format(v, fmt)

    for e in doc["sizes"]:
        k, o = e.get("keras") or {}, e.get("onnx_fp32") or {}
        lines.append(f"| {e['size']} | {f(e.get('gmac'), '.2f')} | {f(k.get('p50'))} | {f(k.get('p95'))} | "
                     f"{f(o.get('p50'))} | {f(o.get('p95'))} | {f(e.get('speedup_p50'), '.2f')}x |")
    errors = [e for e in doc["sizes"] if e.get("error")]
    if errors:
        lines.append("")
        lines.extend(f"- size {e['size']} failed: {e['error']}" for e in errors)
    return lines
