"""A run directory rebuilt from an export, so that `bcd train --weights` can fine-tune a
model whose Keras original is gone (the shipped models ship their ONNX files only).

    python -m train.from_export runtime/models/bus-vgg16-w50-128 --out runs/h1-rebuilt
    bcd train ... --weights runs/h1-rebuilt ...

The classifier's weights are read from the export's ONNX file (INT8 QDQ or float): every
conv and dense kernel and bias of the plain VGG16 classifier `inference_model` saves
(batch norms already folded), found by its Keras layer name in tf2onnx's initializer
names, and int8 weights dequantized by the DequantizeLinear node that reads them
((q - zero point) x scale along its axis). An INT8 file gives weights within half a
quantization step of the original's, so the rebuilt model computes what the INT8 file
computes without its activation rounding (on the shipped model: validation AUC 0.872 for
both, largest difference of a probability 0.022; docs/training.md).

The run directory holds model.keras, the export's split.json (so fine-tuning keeps its
validation and test images out of training), and a run.json whose config records what
the model's input looked like (scan region, marks, grey map: train.config.INPUT_SETTINGS)
and its size, which `--weights` reads. The export's other files (thresholds, OOD
statistics, localiser) are not carried over: a fine-tuned run is exported afresh.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.manifest import read_manifest, split_file
from runtime.model_files import sha256_file
from runtime.preprocessing import PreprocessSpec


class RebuildError(ValueError):
    """The export cannot be rebuilt into a Keras classifier (clear message, no trace)."""


@dataclass(frozen=True)
class LayerWeights:
    name: str
    kernel: np.ndarray        # Keras layout: (h, w, in, out) for a conv, (in, out) for a dense layer
    bias: np.ndarray


class OnnxWeights:
    """The float value of every kernel and bias of an ONNX classifier, by Keras layer name."""

    def __init__(self, path: Path):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        self.path = path
        self.arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        # quantized initializer -> (scale, zero point, axis) of the DequantizeLinear that reads it
        self.dequantize = {}
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear":
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                zero = node.input[2] if len(node.input) > 2 else ""
                self.dequantize[node.input[0]] = (node.input[1], zero, axis)

    def _value(self, name: str) -> np.ndarray:
        q = self.arrays[name]
        if name not in self.dequantize:
            return q.astype(np.float32)
        scale_name, zero_name, axis = self.dequantize[name]
        scale = self.arrays[scale_name].astype(np.float64)
        zero = self.arrays[zero_name].astype(np.float64) if zero_name else np.zeros_like(scale)
        if scale.ndim == 1 and scale.size > 1:           # per channel: along `axis`
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return ((q.astype(np.float64) - zero) * scale).astype(np.float32)

    def _name(self, layer: str, op: str) -> str | None:
        """The initializer tf2onnx named after `layer`'s `op` variable (the quantized one
        where the file holds both)."""
        names = [n for n in self.arrays if f"/{layer}/{op}/ReadVariableOp:0" in n]
        return next((n for n in names if n.endswith("_quantized")), next((n for n in names if n.endswith(":0")), None))

    def layer(self, name: str, kind: str) -> LayerWeights:
        """The kernel (Keras layout) and bias of layer `name`, a "conv" or a "dense" one."""
        kernel_name, bias_name = self._name(name, "Conv2D" if kind == "conv" else "MatMul"), self._name(name, "BiasAdd")
        if kernel_name is None or bias_name is None:
            raise RebuildError(f"{self.path.name}: no weights named after layer {name!r} (not an export of this "
                               "project's VGG16 classifier, or written by another converter)")
        kernel = self._value(kernel_name)
        if kind == "conv":
            kernel = kernel.transpose(2, 3, 1, 0)       # ONNX (out, in, h, w) -> Keras (h, w, in, out)
        return LayerWeights(name, kernel, self._value(bias_name).reshape(-1))


def _source_file(export_dir: Path, manifest, variant: str | None) -> Path:
    """The export's ONNX classifier `variant`; by default a float one if there is one
    (exact weights), else the INT8 one."""
    onnx_variants = [v for v in manifest.usable_variants() if v.format == "onnx"]
    if variant is not None:
        chosen = [v for v in onnx_variants if v.name == variant]
        if not chosen:
            names = ", ".join(v.name for v in onnx_variants) or "none"
            raise RebuildError(f"{export_dir}: no usable ONNX variant {variant!r} (it has: {names})")
        return export_dir / chosen[0].file
    if not onnx_variants:
        raise RebuildError(f"{export_dir}: no usable ONNX variant to read the weights from")
    onnx_variants.sort(key=lambda v: v.precision == "int8")
    return export_dir / onnx_variants[0].file


def _has_presence(weights: OnnxWeights) -> bool:
    """Whether the export is of a presence model (its probability a product of two factors)."""
    from train.model import PRESENCE_LAYER

    try:
        weights.layer(PRESENCE_LAYER, "dense")
    except RebuildError:
        return False
    return True


def rebuild(export_dir: str | Path, out: str | Path, variant: str | None = None) -> dict:
    """Write the run directory `out` from `export_dir` (its ONNX `variant`, by default a
    float one if there is one); returns its run.json."""
    from train.model import ModelConfig, build_model
    from train.tf_setup import keras

    export_dir, out = Path(export_dir), Path(out)
    manifest = read_manifest(export_dir)
    source = _source_file(export_dir, manifest, variant)
    split = split_file(export_dir)
    if not split.is_file():
        raise RebuildError(f"{export_dir}: no split.json (fine-tuning must keep the export's test images out)")
    if out.exists():
        raise RebuildError(f"{out} exists: choose a new --out (nothing is overwritten)")
    weights = OnnxWeights(source)
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    first, hidden = weights.layer("block1_conv1", "conv"), weights.layer("head_dense", "dense")
    config = ModelConfig(spec.image_size, "none", width=first.kernel.shape[-1] / 64, batch_norm=False,
                         lesion="none", dense_units=int(hidden.kernel.shape[1]), presence=_has_presence(weights))
    model, _ = build_model(config)
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            continue
        found = weights.layer(layer.name, "conv" if isinstance(layer, keras.layers.Conv2D) else "dense")
        expected = [w.shape for w in layer.get_weights()]
        if expected != [found.kernel.shape, found.bias.shape]:
            raise RebuildError(f"{source.name}: layer {layer.name} has shapes {found.kernel.shape}, "
                               f"{found.bias.shape}; this architecture expects {expected[0]}, {expected[1]}")
        layer.set_weights([found.kernel, found.bias])
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save(partial / "model.keras")
    shutil.copyfile(split, partial / "split.json")
    info = run_info(export_dir, manifest, source, config, spec)
    atomic.write_json(partial / "run.json", info)
    partial.rename(out)
    return info


def run_info(export_dir: Path, manifest, source: Path, config, spec: PreprocessSpec) -> dict:
    """run.json: what `--weights` reads (the input settings; the held-out source is in
    split.json) and where the weights came from."""
    region = manifest.scan_region or {}
    return {
        "rebuilt_from_export": {"path": str(export_dir), "file": source.name,
                                "source_model": manifest.source_model, "sha256_of_file": sha256_file(source)},
        "config": {"image_size": spec.image_size, "width": config.width, "arch": "vgg16",
                   "dense_units": config.dense_units,
                   # a manifest without a scan_region record was exported before the finder, which means "auto"
                   "scan_region": region.get("mode", "auto"),
                   "colour_marks": region.get("colour_marks", "keep"),
                   "white_calipers": region.get("white_calipers", "keep"),
                   "thin_marks": spec.thin_marks, "grey_map": spec.grey_map},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.from_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="an export directory (or a shipped model's folder)")
    parser.add_argument("--out", required=True, help="the run directory to write (must not exist)")
    parser.add_argument("--variant", help="the ONNX variant to read (default: a float one if any, else INT8)")
    args = parser.parse_args(argv)
    try:
        info = rebuild(args.export, args.out, args.variant)
    except (RebuildError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: weights of {info['rebuilt_from_export']['file']}, width {info['config']['width']:g}, "
          f"input {info['config']['image_size']} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
