"""Export a trained run to ONNX and TFLite variants for CPU-only clinic PCs, each checked
against the Keras model, with a manifest (runtime/manifest.py) for the runtime.

Library use (the CLI `bcd export` is a thin layer over this):

    from export import ExportConfig, export_run
    result = export_run(ExportConfig(run_dir="runs/busi-224", out="exports/busi-224"))
    result.ok, result.manifest.variants

Importing this package is light; TensorFlow loads when export_run runs.
"""
from export.config import CALIBRATION_METHODS, DEFAULT_FORMATS, QAT_FORMATS, VARIANTS, ExportConfig, VariantSpec

__all__ = ["CALIBRATION_METHODS", "DEFAULT_FORMATS", "QAT_FORMATS", "VARIANTS", "ExportConfig", "VariantSpec",
           "ExportResult", "export_run"]


def __getattr__(name):
    # export_run / ExportResult pull in TensorFlow; load them on first use only
    if name in ("export_run", "ExportResult"):
        from export import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
