"""Inference engines behind one small interface.

A backend takes a preprocessed float32 NHWC batch and returns the probability of
malignancy per image and, if the model has it, the unnormalised Grad-CAM map per image
(N, h, w); `run_all` adds the out-of-distribution score per image when the model has
that output (export/ood.py). `OnnxBackend` wraps an ONNX Runtime session; `OpenVinoBackend`
runs the same .onnx file with OpenVINO (the `openvino` extra, imported only when chosen);
`TfliteBackend` wraps a LiteRT interpreter (`ai_edge_litert`, imported only when a
.tflite model is loaded).

Which engine serves a variant (`--backend auto|onnxruntime|openvino|litert`) is decided
by `choose_backend`; see runtime/README.md "Backends" for the rule and why.

Both keep what does not change between calls: tensor names, the output mapping, and
one reusable input buffer per batch size, so a call only fills the buffer and runs.
"""
from __future__ import annotations

import importlib.util
import json
import platform
from pathlib import Path

import numpy as np

from runtime.model_files import ModelLoadError
from runtime.session import create_session

PROB_OUTPUT = "malignancy"
CAM_OUTPUT = "cam"
OOD_OUTPUT = "ood"
_MAX_BUFFERS = 4
_TFLITE_MISSING = "running .tflite models needs the 'tflite' extra: pip install ai-edge-litert"
_OPENVINO_MISSING = ("--backend openvino needs the 'openvino' extra: pip install 'breast-cancer-edge[openvino]' "
                     "(or pip install openvino)")

from runtime.engines import BACKENDS, ENGINES_OF_FORMAT  # noqa: E402,F401 - the one engine table
from runtime.host import cpu_fields, cpu_flag_set  # noqa: E402
BACKENDS_FILE = "backends.json"           # beside manifest.json: which engines were checked on which variant


class Backend:
    """Common part: input size, reusable buffers, the result contract."""

    format = ""
    engine = ""                           # "onnxruntime" | "openvino" | "litert"
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
        return self.run_all(batch, want_cam)[:2]

    def _find_outputs(self, outputs: dict, name: str) -> None:
        """The probability output (required), Grad-CAM and OOD outputs (optional)."""
        self.prob_name = _pick_output(outputs, PROB_OUTPUT, rank=2, name=name)
        try:
            self.cam_name: str | None = _pick_output(outputs, CAM_OUTPUT, rank=3, name=name)
        except ModelLoadError:
            self.cam_name = None
        self.ood_name = OOD_OUTPUT if OOD_OUTPUT in outputs else None
        self.has_ood = self.ood_name is not None

    def run_all(self, batch: np.ndarray, want_cam: bool = False, want_ood: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """run() plus the OOD score (N,) float64, or None when not wanted or this backend
        does not read it. Each engine implements this one."""
        raise NotImplementedError

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
    engine = "onnxruntime"

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
        self._find_outputs(outputs, name)
        super().__init__(image_size, threads, has_cam=self.cam_name is not None)

    @property
    def options(self):
        return self.session.get_session_options()

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
    engine = "litert"

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
        self._find_outputs(self._outputs, name)
        super().__init__(image_size, threads, has_cam=self.cam_name is not None)

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


# --------------------------------------------------------------------------- OpenVINO


def openvino_installed() -> bool:
    """True when the `openvino` package can be imported (checked without importing it:
    an import costs start-up time that a process serving ONNX Runtime should not pay)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):     # a broken or blocked installation counts as missing
        return False


class OpenVinoBackend(Backend):
    """The same .onnx file compiled by OpenVINO for the CPU.

    Settings: `INFERENCE_NUM_THREADS` = the runtime's threads (physical cores), the
    LATENCY hint (one stream: batch-1 requests, as a clinic sends them). OpenVINO keeps
    its own choice of inference precision for the float parts (bf16 on CPUs with native
    bf16, f32 elsewhere); `precision` reports it, and the backend parity check
    (benchmarks/backends.py) is what allows a variant to be served this way. Both
    outputs are computed on every call: the Grad-CAM map is a weighted sum over the
    last 8x8 feature maps, a negligible share of the convolutions (a graph without it
    measured no faster, see docs/results/RESULTS.md)."""

    format = "onnx"
    engine = "openvino"

    def __init__(self, model_bytes: bytes, model_path: Path, image_size: int, threads: int,
                 name: str = "model", external_data: bool = False) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ModelLoadError(f"{name}: {_OPENVINO_MISSING}") from None
        core = ov.Core()
        try:
            # from the verified bytes; a model with external data needs its path to find them
            model = core.read_model(str(model_path)) if external_data else core.read_model(model_bytes, b"")
        except RuntimeError as err:
            raise ModelLoadError(f"{name}: OpenVINO cannot read it ({' '.join(str(err).split())[:300]})") from None
        if len(model.inputs) != 1:
            raise ModelLoadError(f"{name}: expected one image input, the model has {len(model.inputs)}")
        shape = [d.get_length() if d.is_static else "?" for d in model.inputs[0].get_partial_shape()]
        _check_image_input(shape, image_size, name)
        outputs = {_ov_name(o): {"shape": list(o.get_partial_shape())} for o in model.outputs}
        self._find_outputs(outputs, name)
        config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY"}
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as err:
            raise ModelLoadError(f"{name}: OpenVINO cannot compile it ({' '.join(str(err).split())[:300]})") from None
        self.request = self.compiled.create_infer_request()
        self._tensor = ov.Tensor
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)  # e.g. "bf16"
        self._out_index = {_ov_name(o): i for i, o in enumerate(self.compiled.outputs)}
        super().__init__(image_size, threads, has_cam=self.cam_name is not None)

    def run_all(self, batch, want_cam=False, want_ood=False):
        if batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        batch = np.ascontiguousarray(batch)
        # start_async + wait rather than infer(): infer() also copies every output (the
        # probability, the CAM, the OOD features) into a fresh dict that is not used here.
        # The input is shared, not copied:
        # `batch` lives until wait() returns.
        self.request.set_input_tensor(self._tensor(batch, shared_memory=True))
        self.request.start_async()
        self.request.wait()
        prob = self.request.get_output_tensor(self._out_index[self.prob_name]).data
        probs = np.asarray(prob, dtype=np.float64).reshape(len(batch), -1)[:, 0]
        cams = ood = None
        if want_cam and self.cam_name:
            # copy: the request reuses its output memory on the next call
            cams = _cam_array(np.array(self.request.get_output_tensor(self._out_index[self.cam_name]).data))
        if want_ood and self.ood_name:
            ood = _ood_array(np.array(self.request.get_output_tensor(self._out_index[self.ood_name]).data), len(batch))
        return probs, cams, ood

    def close(self):
        super().close()
        self.request = self.compiled = None


def _ov_name(output) -> str:
    """The output's role name when it has one. An output can carry several tensor names
    (an FP16 model's cast outputs do), and `get_any_name()` may pick another one after
    compiling than before: matching by role keeps the read model's names and the
    compiled model's the same (else the OOD score of onnx-fp16 was a KeyError)."""
    names = output.get_names()
    return next((role for role in (PROB_OUTPUT, CAM_OUTPUT, OOD_OUTPUT) if role in names), output.get_any_name())


# --------------------------------------------------------------------------- choosing


def read_backend_record(export_dir: Path | None) -> dict:
    """backends.json beside a manifest (written by `python -m export.engine_parity`):
    {"variants": {variant: {engine: {"status": "ok"|"failed", "parity": {...}, ...}}}}.
    Missing or unreadable: {} (nothing recorded, so `auto` stays on ONNX Runtime)."""
    if export_dir is None:
        return {}
    try:
        doc = json.loads((Path(export_dir) / BACKENDS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and isinstance(doc.get("variants"), dict) else {}


def engine_checked(record: dict, variant: str, engine: str, sha256: str | None = None) -> bool:
    """Did `engine` pass the parity check on this variant, for this very file (its
    sha256, when given, must be the one the check recorded)?"""
    by_engine = record.get("variants", {}).get(variant)
    if not isinstance(by_engine, dict):
        return False
    entry = by_engine.get(engine)
    if not isinstance(entry, dict) or entry.get("status") != "ok":
        return False
    return sha256 is None or str(by_engine.get("sha256", "")).lower() == sha256.lower()


def cpu_signature(cpuinfo: str | None = None) -> str:
    """Which CPU this is, for per-machine speed records: architecture, model name and
    physical cores, e.g. "x86_64|AMD EPYC|2"."""
    from runtime.session import physical_cores

    fields = cpu_fields(cpuinfo)
    name = fields.get("model name") or fields.get("hardware") or platform.processor() or "unknown"
    return f"{platform.machine().lower()}|{' '.join(name.split())}|{physical_cores(cpuinfo)}"


def has_amx(cpuinfo: str | None = None) -> bool:
    """Intel AMX (matrix tiles for INT8/BF16), where OpenVINO ran this project's INT8
    files about 1.9x faster than ONNX Runtime (../shared/STACK-NOTES.md)."""
    return "amx_int8" in cpu_flag_set(cpuinfo)


def measured_faster(record: dict, variant: str, signature: str) -> dict | None:
    """The speed record `python -m benchmarks.backends compare --record` wrote for this
    variant on this CPU: {"faster": engine, "p50_ms": {...}, "created": ...}, or None."""
    by_engine = record.get("variants", {}).get(variant)
    speed = by_engine.get("speed") if isinstance(by_engine, dict) else None
    entry = speed.get(signature) if isinstance(speed, dict) else None
    if isinstance(entry, dict) and entry.get("faster") in ENGINES_OF_FORMAT["onnx"]:
        return entry
    return None


def choose_backend(requested: str | None, fmt: str, variant: str | None = None, record: dict | None = None,
                   signature: str | None = None, sha256: str | None = None, cpuinfo: str | None = None,
                   installed: bool | None = None, int8_weights: str | None = None) -> tuple[str, str]:
    """(engine, why) for a variant of format `fmt` ("onnx" | "tflite").

    `auto` (the default): a .tflite file runs on LiteRT. An .onnx file runs on ONNX
    Runtime unless all of these hold, then on OpenVINO:
      1. the `openvino` package is installed;
      2. the export's backends.json records that OpenVINO passed the parity check on this
         very file (variant and sha256), as `python -m export.engine_parity` writes;
      3. OpenVINO is the faster engine here: the speed record for this CPU in
         backends.json (`compare --record`, measured on this machine) says so, or, with
         no record for this CPU, the CPU has Intel AMX (OpenVINO measured 1.9x faster
         there; on an AVX-512 VNNI AMD EPYC under load ONNX Runtime was as fast or faster,
         see docs/results/RESULTS.md) and the file's INT8 weights are int8 (`int8_weights`
         from the manifest): that speed-up was measured on int8 weights, and on an AVX2 CPU
         OpenVINO ran a file with uint8 weights slower than its FP32 file (docs/results.md,
         "INT8 weights").
    A recorded choice rather than a timing at load: a few calls at start-up would cost
    seconds and, on a busy PC, pick by noise. A named engine is used as asked, or refused
    with a clear message when it cannot run the format or is not installed."""
    requested = requested or "auto"
    if requested not in BACKENDS:
        raise ModelLoadError(f"unknown backend {requested!r} (choose from {', '.join(BACKENDS)})")
    engines = ENGINES_OF_FORMAT.get(fmt)
    if engines is None:
        raise ModelLoadError(f"unknown model format {fmt!r}")
    installed = openvino_installed() if installed is None else installed
    if requested != "auto":
        if requested not in engines:
            raise ModelLoadError(f"backend {requested!r} cannot run a .{fmt} variant"
                                 f"{f' ({variant})' if variant else ''}; {fmt} variants run on "
                                 f"{' or '.join(engines)}")
        if requested == "openvino" and not installed:
            raise ModelLoadError(_OPENVINO_MISSING)
        return requested, "asked for"
    if fmt == "tflite":
        return "litert", "the only engine for .tflite"
    if not installed:
        return "onnxruntime", "openvino is not installed"
    if variant is None or not engine_checked(record or {}, variant, "openvino", sha256):
        return "onnxruntime", f"no passed OpenVINO parity check for this file in {BACKENDS_FILE}"
    speed = measured_faster(record or {}, variant, signature or cpu_signature(cpuinfo))
    if speed is not None:
        return speed["faster"], f"measured faster on this CPU ({BACKENDS_FILE}, {speed.get('created', '?')})"
    if has_amx(cpuinfo) and int8_weights == "uint8":
        return "onnxruntime", ("uint8 weights and no speed record for this CPU: OpenVINO's speed on AMX was "
                               "measured with int8 weights")
    if has_amx(cpuinfo):
        return "openvino", "CPU with AMX, no speed record for it: OpenVINO measured faster on AMX"
    return "onnxruntime", "no speed record for this CPU and no AMX"
