"""The one table of inference engines: name, the model formats it runs, its label.

Standard library only, so the command line can offer the names without loading an engine.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Engine:
    name: str                  # what --backend takes and outputs record
    formats: tuple[str, ...]   # model file formats it runs
    label: str                 # for people: tables, plots, the demo


ENGINES = (
    Engine("onnxruntime", ("onnx",), "ONNX Runtime"),
    Engine("openvino", ("onnx",), "OpenVINO"),
    Engine("litert", ("tflite",), "LiteRT"),
)
ENGINE_NAMES = tuple(e.name for e in ENGINES)
AUTO = "auto"                                  # pick per model and CPU (runtime.backends.choose_backend)
BACKENDS = (AUTO, *ENGINE_NAMES)               # what --backend accepts
ENGINES_OF_FORMAT = {fmt: tuple(e.name for e in ENGINES if fmt in e.formats)
                     for fmt in dict.fromkeys(f for e in ENGINES for f in e.formats)}


def engine_label(name: str | None) -> str:
    """'ONNX Runtime' for 'onnxruntime'; TensorFlow for the Keras baseline; else the name."""
    labels = {e.name: e.label for e in ENGINES} | {"tensorflow": "TensorFlow"}
    return labels.get(name or "", name or "-")
