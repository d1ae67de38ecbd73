"""Which layers should the out-of-distribution score use? Compares feature-layer choices
on an existing export, without its run directory or TensorFlow: the pooled activations
are read straight out of the exported ONNX graph (its intermediate tensors are made
outputs), the statistics are fitted on the saved training split as export/ood.py does,
and each choice's threshold is the 99th percentile of its validation scores.

    python -m benchmarks.studies.ood_layers EXPORT_DIR [--variant onnx-int8] [--external DIR]
                                    [--layers block2_pool block3_pool block3_pool,gap gap ...]

Prints a Markdown table: held-out false alarms on the test split, the flag rate on
--external (breast ultrasound from another source, e.g. BUS-BRA), and detections on the
non-ultrasound images of benchmarks/reliability/ood.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.reliability.ood import external_images, generated_images, is_colour, skimage_images
from runtime.images import read_image
from runtime.manifest import read_manifest
from runtime.preprocessing import PreprocessSpec, prepare

DEFAULT_CHOICES = ("gap", "block2_pool", "block3_pool", "block4_pool", "block3_pool,gap", "block2_pool,block3_pool")
_POOLING_OPS = ("MaxPool", "GlobalAveragePool", "ReduceMean")


def _tensor_of(graph, layer: str) -> str:
    """The output of the pooling node tf2onnx made for a Keras layer."""
    found = [n for n in graph.node if f"/{layer}/" in f"/{n.name}" and n.op_type in _POOLING_OPS]
    if not found:
        raise ValueError(f"no pooling node for layer {layer!r} in the graph")
    return found[-1].output[0]


class FeatureReader:
    def __init__(self, model_file: Path, layers: list[str], spec: PreprocessSpec) -> None:
        import onnx
        import onnxruntime as ort

        proto = onnx.load(str(model_file))
        self.tensors = {layer: _tensor_of(proto.graph, layer) for layer in layers}
        for name in self.tensors.values():
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self.session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        self.spec = spec

    def __call__(self, images: list[np.ndarray], batch: int = 16) -> dict[str, np.ndarray]:
        """log(1 + spatial mean) per layer, as export/ood.py computes it (ONNX maps are NCHW)."""
        out: dict[str, list] = {layer: [] for layer in self.tensors}
        for i in range(0, len(images), batch):
            x = np.stack([prepare(im, self.spec) for im in images[i:i + batch]])
            values = self.session.run(list(self.tensors.values()), {"image": x})
            for layer, v in zip(self.tensors, values):
                pooled = v.reshape(v.shape[0], v.shape[1], -1).mean(-1) if v.ndim == 4 else v.reshape(len(v), -1)
                out[layer].append(np.log1p(np.maximum(pooled, 0)))
        return {layer: np.concatenate(v) for layer, v in out.items()}


def compare(export_dir: Path, variant: str = "onnx-int8", choices=DEFAULT_CHOICES, external: Path | None = None,
            split_root: Path | None = None, quantile: float = 0.99) -> list[dict]:
    from export.ood import fit_stats
    from runtime.dataset import samples_of_split
    from runtime.manifest import split_file

    manifest = read_manifest(export_dir)
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    layers = sorted({layer for choice in choices for layer in choice.split(",")})
    reader = FeatureReader(export_dir / manifest.variant(variant).file, layers, spec)
    split = json.loads(split_file(export_dir).read_text())
    feats, labels = {}, {}
    for part in ("train", "val", "test"):
        samples = samples_of_split(split, part, str(split_root) if split_root else None)
        feats[part] = reader([read_image(s.path) for s in samples])
        labels[part] = np.array([s.label for s in samples])
    samples = generated_images() + skimage_images()
    feats["ood"] = reader([s.image for s in samples])
    gray = np.array([not is_colour(s.image) for s in samples])
    if external is not None:
        feats["external"] = reader(external_images(external))
    rows = []
    for choice in choices:
        sel = choice.split(",")
        stack = {k: np.concatenate([v[layer] for layer in sel], 1) for k, v in feats.items()}
        stats = fit_stats(stack["train"], labels["train"])
        threshold = np.quantile(stats.scores(stack["val"]), quantile)
        rate = {k: float((stats.scores(v) >= threshold).mean()) for k, v in stack.items() if k != "train"}
        flagged = stats.scores(stack["ood"]) >= threshold
        rows.append({"layers": choice, "dim": stats.dim, "val": rate["val"], "test": rate["test"],
                     "external": rate.get("external"), "detected": float(flagged.mean()),
                     "detected_gray": float(flagged[gray].mean()), "n_ood": int(len(flagged)),
                     "n_gray": int(gray.sum()), "n_test": int(len(labels["test"]))})
    return rows


def markdown(rows: list[dict]) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    r0 = rows[0]
    lines = [f"| layers | dim | false alarms, test (n={r0['n_test']}) | flagged, external ultrasound | "
             f"detected, non-ultrasound (n={r0['n_ood']}) | detected, grayscale ones (n={r0['n_gray']}) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layers']} | {r['dim']} | {pct(r['test'])} | {pct(r['external'])} | "
                     f"{pct(r['detected'])} | {pct(r['detected_gray'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.ood_layers", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--variant", default="onnx-int8")
    parser.add_argument("--external", type=Path, help="folder of breast ultrasound images from another source")
    parser.add_argument("--split-root", type=Path, help="where the run's dataset lives now, if it moved")
    parser.add_argument("--layers", nargs="+", default=list(DEFAULT_CHOICES),
                        help="choices to compare, each a comma-separated layer list")
    args = parser.parse_args(argv)
    print(markdown(compare(args.export, args.variant, args.layers, args.external, args.split_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
