"""Inference engines behind one small interface.

A backend takes a preprocessed float32 NHWC batch and returns the probability of
malignancy per image and, if the model has it, the unnormalised Grad-CAM map per image
(N, h, w); `run_all` adds the out-of-distribution score per image when the model has
that output (export/ood.py). `OnnxBackend` wraps an ONNX Runtime session; `TfliteBackend` wraps a LiteRT
interpreter (`ai_edge_litert`, imported only when a .tflite model is loaded).

Both keep what does not change between calls: tensor names, the output mapping, and
one reusable input buffer per batch size, so a call only fills the buffer and runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.model_files import ModelLoadError
from runtime.session import create_session

PROB_OUTPUT = "malignancy"
CAM_OUTPUT = "cam"
OOD_OUTPUT = "ood"
_MAX_BUFFERS = 4
_TFLITE_MISSING = "running .tflite models needs the 'tflite' extra: pip install ai-edge-litert"


class Backend:
    """Common part: input size, reusable buffers, the result contract."""

    format = ""
    has_ood = False                       # the model outputs the OOD score (set by subclasses that read it)

    def __init__(self, image_size: int, threads: int, has_cam: bool) -> None:
        self.image_size = image_size
        self.threads = threads
        self.has_cam = has_cam
        self._buffers: dict[int, np.ndarray] = {}

    def input_buffer(self, n: int) -> np.ndarray:
        """A float32 (n, s, s, 3) array to fill with preprocessed images; reused across
        calls with the same n (do not keep references to it)."""
        buf = self._buffers.get(n)
        if buf is None:
            if len(self._buffers) >= _MAX_BUFFERS:  # odd last-batch sizes: keep the cache bounded
                self._buffers.pop(next(iter(self._buffers)))
            buf = np.empty((n, self.image_size, self.image_size, 3), dtype=np.float32)
            self._buffers[n] = buf
        return buf

    def run(self, batch: np.ndarray, want_cam: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N,) float64, cams (N, h, w) float32 or None)."""
        raise NotImplementedError

    def run_all(self, batch: np.ndarray, want_cam: bool = False, want_ood: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """run() plus the OOD score (N,) float64, or None when not wanted or this backend
        does not read it."""
        probs, cams = self.run(batch, want_cam)
        return probs, cams, None

    def close(self) -> None:
        self._buffers.clear()


def _check_image_input(shape, image_size: int, what: str) -> None:
    dims = list(shape)
    if len(dims) != 4 or dims[3] not in (3, "3") or any(
        isinstance(d, int) and d != image_size for d in dims[1:3]
    ):
        raise ModelLoadError(
            f"{what}: model input has shape {dims}, expected [batch, {image_size}, {image_size}, 3] "
            "as the manifest's preprocessing says"
        )


def _cam_array(cam: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim == 4 and cam.shape[-1] == 1:
        cam = cam[..., 0]
    return cam


# --------------------------------------------------------------------------- ONNX

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxBackend(Backend):
    format = "onnx"

    def __init__(self, model_bytes: bytes, model_dir: Path, image_size: int, threads: int,
                 name: str = "model") -> None:
        self.session = create_session(model_bytes, model_dir, threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{name}: expected one image input, the model has {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_dtype = _ORT_TYPES.get(inputs[0].type)
        if self.input_dtype is None:
            raise ModelLoadError(f"{name}: unsupported input type {inputs[0].type} (expected float)")
        _check_image_input(inputs[0].shape, image_size, name)
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.prob_name = _pick_output(outputs, PROB_OUTPUT, rank=2, name=name)
        try:
            self.cam_name: str | None = _pick_output(outputs, CAM_OUTPUT, rank=3, name=name)
        except ModelLoadError:
            self.cam_name = None
        self.ood_name = OOD_OUTPUT if OOD_OUTPUT in outputs else None
        self.has_ood = self.ood_name is not None
        super().__init__(image_size, threads, has_cam=self.cam_name is not None)

    @property
    def options(self):
        return self.session.get_session_options()

    def run(self, batch, want_cam=False):
        return self.run_all(batch, want_cam)[:2]

    def run_all(self, batch, want_cam=False, want_ood=False):
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        cam_name = self.cam_name if want_cam else None
        ood_name = self.ood_name if want_ood else None
        names = [n for n in (self.prob_name, cam_name, ood_name) if n]
        results = dict(zip(names, self.session.run(names, {self.input_name: batch})))
        probs = np.asarray(results[self.prob_name], dtype=np.float64).reshape(len(batch), -1)[:, 0]
        cams = _cam_array(results[cam_name]) if cam_name else None
        ood = _ood_array(results[ood_name], len(batch)) if ood_name else None
        return probs, cams, ood

    def close(self):
        super().close()
        self.session = None


def _ood_array(scores, n: int) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64).reshape(n, -1)[:, 0]


def _pick_output(outputs: dict, wanted: str, rank: int, name: str) -> str:
    """The output called `wanted`; if no output has that name (a converter renamed it),
    the only one of the expected rank."""
    if wanted in outputs:
        return wanted
    same_rank = [n for n, o in outputs.items() if len(o["shape"] if isinstance(o, dict) else o.shape) == rank]
    if len(same_rank) == 1:
        return same_rank[0]
    raise ModelLoadError(f"{name}: no {wanted!r} output (outputs: {', '.join(outputs)})")


# --------------------------------------------------------------------------- TFLite


class TfliteBackend(Backend):
    """LiteRT interpreter, run through the model's default signature (the export keeps
    the Keras output names "malignancy" and "cam" there; the runner resizes the batch
    dimension as needed). Integer inputs/outputs (full-integer models exported without
    float I/O) are converted with the tensors' own scale and zero point, so callers
    always see float."""

    format = "tflite"

    def __init__(self, model_bytes: bytes, image_size: int, threads: int, name: str = "model") -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelLoadError(f"{name}: {_TFLITE_MISSING}") from None
        try:
            self.interpreter = Interpreter(model_content=model_bytes, num_threads=threads)
            signatures = self.interpreter.get_signature_list()
        except (ValueError, RuntimeError) as err:
            raise ModelLoadError(f"{name}: not a loadable TFLite model ({err})") from None
        if not signatures:
            raise ModelLoadError(f"{name}: the TFLite model has no signature; export it again with `bcd export`")
        key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
        self.runner = self.interpreter.get_signature_runner(key)
        inputs = self.runner.get_input_details()
        if len(inputs) != 1:
            raise ModelLoadError(f"{name}: expected one image input, the model has {len(inputs)}")
        self.input_name, self._input = next(iter(inputs.items()))
        _check_image_input([int(d) for d in self._input["shape"]], image_size, name)
        self._outputs = self.runner.get_output_details()
        self.prob_name = _pick_output(self._outputs, PROB_OUTPUT, rank=2, name=name)
        try:
            self.cam_name: str | None = _pick_output(self._outputs, CAM_OUTPUT, rank=3, name=name)
        except ModelLoadError:
            self.cam_name = None
        self.ood_name = OOD_OUTPUT if OOD_OUTPUT in self._outputs else None
        self.has_ood = self.ood_name is not None
        super().__init__(image_size, threads, has_cam=self.cam_name is not None)

    def run(self, batch, want_cam=False):
        return self.run_all(batch, want_cam)[:2]

    def run_all(self, batch, want_cam=False, want_ood=False):
        results = self.runner(**{self.input_name: _quantize(batch, self._input)})
        prob = _dequantize(results[self.prob_name], self._outputs[self.prob_name])
        probs = np.asarray(prob, dtype=np.float64).reshape(len(batch), -1)[:, 0]
        cams = ood = None
        if want_cam and self.cam_name:
            cams = _cam_array(_dequantize(results[self.cam_name], self._outputs[self.cam_name]))
        if want_ood and self.ood_name:
            ood = _ood_array(_dequantize(results[self.ood_name], self._outputs[self.ood_name]), len(batch))
        return probs, cams, ood

    def close(self):
        super().close()
        self.runner = self.interpreter = None


def _quantize(batch: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return np.ascontiguousarray(batch, dtype=dtype)
    scale, zero = detail["quantization"]
    if not scale:
        raise RuntimeError("integer model input without quantization parameters")
    info = np.iinfo(dtype)
    return np.clip(np.rint(batch / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(values.dtype, np.floating):
        return values
    scale, zero = detail["quantization"]
    return (values.astype(np.float32) - zero) * (scale or 1.0)
