"""Keras -> ONNX (tf2onnx), then ONNX Runtime's tools for the INT8 and FP16 variants.

All functions work on in-memory onnx.ModelProto objects; intermediate files that ONNX
Runtime's tools insist on go to a private temporary directory, never the export folder.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import onnx

from export.quiet import quiet
from runtime import atomic
from train.tf_setup import tf

log = logging.getLogger(__name__)

INPUT_NAME = "image"
BATCH_DIM = "batch"


def keras_to_onnx(model, image_size: int, opset: int = 17) -> onnx.ModelProto:
    """tf2onnx with an explicit input signature: NHWC float32 named "image", dynamic batch."""
    import tf2onnx

    signature = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME),)
    with quiet():
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    # tf2onnx gives the batch dimension of every input and output its own unknown name
    # ("unk__103", ...); one shared name says they are the same batch.
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM
    expected = list(model.output_names)
    actual = [o.name for o in proto.graph.output]
    if actual != expected:
        raise RuntimeError(f"tf2onnx produced outputs {actual}, expected {expected}")
    check_loadable(proto, "tf2onnx produced a model that ONNX Runtime cannot load")
    return proto


def check_loadable(proto: onnx.ModelProto, what: str) -> None:
    """tf2onnx does not raise when it cannot convert a node (it logs the error and leaves
    the node broken), so a conversion "succeeds" with an unusable graph. Loading it in
    ONNX Runtime catches that before the graph is written or quantized."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises several types
        raise RuntimeError(f"{what}: {err.__class__.__name__}: {err}") from None


def output_names(proto: onnx.ModelProto) -> list[str]:
    return [o.name for o in proto.graph.output]


def set_metadata(proto: onnx.ModelProto, key: str, value: dict) -> None:
    """Store a JSON document in the model's metadata_props (replacing an old entry)."""
    for prop in list(proto.metadata_props):
        if prop.key == key:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, json.dumps(value, sort_keys=True, allow_nan=False)


def save(proto: onnx.ModelProto, target: Path) -> None:
    """Atomic: a temporary file next to `target`, renamed when complete."""
    with atomic.atomic_path(target) as tmp:
        onnx.save_model(proto, str(tmp))


# What ONNX Runtime's symbolic shape inference leaves in the CURRENT directory when it
# fails: the half-inferred model, with its weights as external data under a uuid name.
_STRAY = re.compile(r"^(sym_shape_infer_temp\.onnx|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.data)$")


def _remove_strays(before: set[str]) -> None:
    cwd = Path.cwd()
    for path in cwd.iterdir():
        if path.name not in before and _STRAY.match(path.name) and path.is_file():
            log.debug("removing %s left behind by onnxruntime's symbolic shape inference", path)
            path.unlink()


def _pre_process(src: Path, dst: Path) -> list[str]:
    """quant_pre_process: symbolic + ONNX shape inference and graph optimisation, which
    ONNX Runtime recommends before static quantization. Returns notes."""
    from onnxruntime.quantization import quant_pre_process

    before = {p.name for p in Path.cwd().iterdir()}
    try:
        quant_pre_process(str(src), str(dst))
        return []
    except Exception as err:  # noqa: BLE001 - any failure here has the same fallback
        # Symbolic shape inference raises "Incomplete symbolic shape inference" on some
        # graphs (gradcam.py avoids the one construct that triggered it here) and then
        # saves its partial model, ~60 MB, into the current directory. ONNX's own shape
        # inference is enough for a CNN with a fixed image size: clean up, retry without.
        _remove_strays(before)
        log.warning("quant_pre_process failed (%s); retrying without symbolic shape inference", err)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return [f"pre-processing ran without symbolic shape inference ({err})"]


# How the weights of an INT8 file are stored (ExportConfig.int8_weights); activations are
# uint8 in both.
INT8_WEIGHTS = {
    # int8 weights in 7 bits, per channel: U8S8 kernels, the fastest on x86-64. Without VNNI
    # (AVX2, most clinic PCs) VPMADDUBSW adds pairs of uint8 x int8 products into int16 and
    # saturates with full 8-bit weights; ONNX Runtime's docs advise 7 bits (reduce_range) there.
    "7bit": {"weight_type": "QInt8", "reduce_range": True,
             "note": "int8 weights in 7 bits per channel (U8S8 kernels)"},
    # uint8 weights, all 8 bits, per channel with a zero point: U8U8 kernels widen to 16 bits
    # and cannot saturate, so every CPU computes the same numbers, with twice 7-bit's weight
    # precision; slower (measured: docs/results.md, "INT8 weights").
    "uint8": {"weight_type": "QUInt8", "reduce_range": False,
              "note": "uint8 weights in 8 bits per channel (U8U8 kernels)"},
}


def quantize_int8(fp32: onnx.ModelProto, reader, method: str = "minmax", weights: str = "7bit",
                  keep_float: Callable[[onnx.ModelProto], list[str]] | None = None
                  ) -> tuple[onnx.ModelProto, list[str]]:
    """Static post-training quantization to QDQ INT8. Returns (model, notes).

    weights: a key of INT8_WEIGHTS. keep_float: names the nodes of the (pre-processed) graph
    to leave in float32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    kind = INT8_WEIGHTS[weights]
    with tempfile.TemporaryDirectory(prefix="bcd-onnx-int8-") as work:
        src, pre, out = (Path(work) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save_model(fp32, str(src))
        notes = _pre_process(src, pre)
        # Names are read after pre-processing, which may rename nodes it optimises.
        excluded = keep_float(onnx.load_model(str(pre), load_external_data=False)) if keep_float else []
        with quiet("onnxruntime", stdout=True):
            quantize_static(
                str(pre), str(out), reader,
                # QDQ: QuantizeLinear/DequantizeLinear pairs around float ops. ONNX Runtime
                # fuses them into integer kernels on CPU, and the file stays a standard ONNX
                # graph that other runtimes and tools (and Netron) understand.
                quant_format=QuantFormat.QDQ,
                # uint8 activations: asymmetric, they suit VGG16's non-negative ReLU outputs,
                # and ONNX Runtime's x86-64 integer kernels take uint8 inputs.
                activation_type=QuantType.QUInt8,
                weight_type=getattr(QuantType, kind["weight_type"]),
                per_channel=True,
                reduce_range=kind["reduce_range"],
                calibrate_method=methods[method],
                # Collect calibration statistics one batch at a time (see export/int8_calibration.py):
                # same ranges for MinMax, bounded memory for entropy/percentile histograms.
                extra_options={"CalibStridedMinMax": 1},
                nodes_to_exclude=excluded,
            )
        model = onnx.load_model(str(out))
    notes.append(f"calibration method {method}; {kind['note']}")
    if excluded:
        notes.append(f"{len(excluded)} node(s) of the OOD score kept in float32")
    return model, notes


def to_fp16(fp32: onnx.ModelProto, keep_float: Callable[[onnx.ModelProto], list[str]] | None = None
            ) -> onnx.ModelProto:
    """FP16 weights and arithmetic, float32 input and outputs (keep_io_types); the nodes
    `keep_float` names stay float32 (the OOD score's sum of squares overflows FP16).

    onnxconverter-common is not a dependency; ONNX Runtime ships the same converter as
    onnxruntime.transformers.float16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    blocked = keep_float(model) if keep_float else None
    return convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked or None)


def fold_quantized_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """tf2onnx turns a QAT model's fake-quant ops into QuantizeLinear/DequantizeLinear but
    keeps the weights as float32 constants (an FP32-sized file). ONNX Runtime's *basic*
    graph optimizations (constant folding; hardware-independent, so safe to save offline)
    fold QuantizeLinear(constant weight) into int8 initializers: 4x smaller, same outputs."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bcd-onnx-qat-") as work:
        out = os.path.join(work, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = out
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load_model(out)
