"""The light inference core: ONNX Runtime + NumPy + OpenCV, nothing heavier.

onnxruntime's Python package sends usage telemetry once a model is loaded (seen here
as DNS look-ups of a Microsoft events host); a clinic PC should not phone home, and
the variable only works when set before onnxruntime is first imported.
"""
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
