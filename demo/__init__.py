"""Gradio demo for the exported models (`bcd demo`). Imports only `runtime` and Gradio.

    from demo.app import DemoConfig, build_app, launch

`import demo` alone loads neither Gradio nor a model; `demo.app` imports Gradio.
"""
from __future__ import annotations

# ONNX Runtime's telemetry is switched off by `runtime` itself (runtime/__init__.py).
from demo.config import DemoConfig

__all__ = ["DemoConfig", "build_app", "launch"]


def __getattr__(name: str):
    if name in ("build_app", "launch"):
        from demo import app

        return getattr(app, name)
    raise AttributeError(f"module 'demo' has no attribute {name!r}")
