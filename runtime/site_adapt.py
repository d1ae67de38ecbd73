"""Fit an exported ONNX model to a new site's scanner from the site's unlabelled scans.

Another scanner (its gain, speckle and processing) shifts the statistics of every conv
layer's output away from what the network learnt on. AdaBN (Li et al., 2016) measures them
again on the new site's images; the exported models have their batch norms folded into the
convs, so the same is done per conv channel on each conv's output z (before its ReLU):

    z' = m_ref + (z - m_site) * s_ref / s_site

m_ref and s_ref are the channel's mean and spread on the model's own training images,
measured through the same ONNX file by `bcd export` and kept beside it (adapt-reference.json,
bound to the file's sha256); m_site and s_site are measured on the site's scans, prepared
exactly as `bcd predict` prepares them. The convs are aligned in order, each on the outputs
of the ones already aligned, and each correction is folded into the conv's weights:

- INT8 (QDQ) files: the per-channel weight scale is multiplied by s_ref/s_site (the int8
  weights stay as they are, so nothing is quantized again), and the int32 bias is written
  again on the matching scale (bias scale = input scale x weight scale, as ONNX Runtime's
  fused integer convolution expects). The activations' quantization ranges stay right: the
  aligned outputs have the training images' statistics, on which they were calibrated.
- float files: the kernel and bias themselves.

The adapted export is the same graph with other numbers, as fast as its parent; adapting
needs only the runtime's install and the `onnx` package. train/site_adapt.py does the same for a training run (TensorFlow).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from runtime import atomic
from runtime.model_files import compressed_size, sha256_bytes, sha256_file
from runtime.progress import Progress

log = logging.getLogger(__name__)

REFERENCE_NAME = "adapt-reference.json"
REFERENCE_SCHEMA = "bcd-adapt-reference"
REFERENCE_VERSION = 1
# early: blocks 1-3, the 7 convs nearest the pixels (the default: at both held-out hospitals
# it gained more, or lost less, than aligning all 13; docs/results.md); all: every conv
LAYERS = ("early", "all")
EARLY_BLOCKS = ("block1", "block2", "block3")
MIN_IMAGES = 20                     # fewer say little about a scanner's statistics
BATCH = 32
# the parent's results, its engines' parity checks and its card describe the parent's file,
# and its reference is bound to that file: none of them is copied into an adapted export
NOT_COPIED = ("MODEL_CARD.md", "backends.json", REFERENCE_NAME)


class AdaptError(ValueError):
    """What makes adapting impossible, said plainly (the CLI prints it, no stack trace)."""


# --------------------------------------------------------------------------- statistics

class ChannelMoments:
    """Per-channel mean and variance of conv outputs (channels last), accumulated batch by
    batch in float64 (also the batch-norm restart's, train/bn_restart.py)."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
        self.n += len(x)
        self.total = self.total + x.sum(0)
        self.squares = self.squares + (x * x).sum(0)

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.n
        return mean, np.maximum(self.squares / self.n - mean * mean, 0.0)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean, var = self.mean_var()
        return mean, np.sqrt(np.maximum(var, 1e-12))


@dataclass
class Alignment:
    """Per output channel of one conv: z' = z * scale + shift."""
    scale: np.ndarray
    shift: np.ndarray

    @classmethod
    def between(cls, reference: tuple[np.ndarray, np.ndarray], site: tuple[np.ndarray, np.ndarray]) -> "Alignment":
        """The correction that gives the site's (mean, std) the reference's."""
        (ref_mean, ref_std), (site_mean, site_std) = reference, site
        # a channel with no spread at the site carries nothing to rescale: only shift it
        scale = np.where(site_std > 1e-6, ref_std / np.maximum(site_std, 1e-6), 1.0)
        return cls(scale.astype(np.float32), (ref_mean - site_mean * scale).astype(np.float32))


def chosen_convs(names: list[str], layers: str) -> list[str]:
    """The convs `layers` selects, in order (names as `block3_conv2`)."""
    if layers not in LAYERS:
        raise AdaptError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    return list(names) if layers == "all" else [n for n in names if n.split("_")[0] in EARLY_BLOCKS]


# --------------------------------------------------------------------------- the ONNX graph

def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise AdaptError("adapting an export needs the onnx package: pip install 'breast-cancer-edge[adapt]'") from None
    return onnx, numpy_helper


@dataclass
class ConvRef:
    """One Conv node of the graph and the initializers that hold its weights."""
    name: str                        # the Keras layer's name, e.g. block1_conv1
    output: str                      # the conv's output tensor (before its ReLU)
    weight: str                      # float kernel, or the int8 kernel's per-channel scale
    bias: str | None                 # float bias, or the int32 bias
    bias_scale: str | None           # None for a float bias
    bias_zero: str | None
    quantized: bool


_LAYER = re.compile(r"(block\d+_conv\d+)")


def find_convs(model) -> list[ConvRef]:
    """The graph's convs in order, with where their weights live; AdaptError when a conv's
    weights are not plain initializers (float, or int8 with a per-channel scale)."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        match = _LAYER.search(node.output[0]) or _LAYER.search(node.input[1])
        name = match.group(1) if match else node.output[0]
        convs.append(_conv_ref(node, name, inits, producer, model))
    if not convs:
        raise AdaptError("the model has no conv layers to align")
    return convs


def _conv_ref(node, name: str, inits: set[str], producer: dict, model) -> ConvRef:
    weight_in = node.input[1]
    bias_in = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if weight_in in inits:
        if bias_in is not None and bias_in not in inits:
            raise AdaptError(f"conv {name}: its bias is not a constant of the graph")
        return ConvRef(name, node.output[0], weight_in, bias_in, None, None, quantized=False)
    dq = producer.get(weight_in)
    if dq is None or dq.op_type != "DequantizeLinear" or not all(i in inits for i in dq.input[:2]):
        raise AdaptError(f"conv {name}: its weights are neither a constant nor a dequantized constant")
    scale = _array(model, dq.input[1])
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)     # ONNX's default axis is 1
    if scale.ndim != 1 or axis != 0:
        raise AdaptError(f"conv {name}: its weights are not quantized per output channel; they cannot be aligned")
    bias = bias_scale = bias_zero = None
    if bias_in in inits:                         # a float bias beside int8 weights
        bias = bias_in
    elif bias_in is not None:
        bdq = producer.get(bias_in)
        if bdq is None or bdq.op_type != "DequantizeLinear" or bdq.input[0] not in inits:
            raise AdaptError(f"conv {name}: its bias is not a dequantized constant")
        bias, bias_scale = bdq.input[0], bdq.input[1]
        bias_zero = bdq.input[2] if len(bdq.input) > 2 and bdq.input[2] else None
    return ConvRef(name, node.output[0], dq.input[1], bias, bias_scale, bias_zero, quantized=True)


def _array(model, name: str) -> np.ndarray:
    _, numpy_helper = _onnx()
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise AdaptError(f"no initializer {name!r} in the graph")


def _replace(model, name: str, value: np.ndarray) -> None:
    _, numpy_helper = _onnx()
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value, name))
            return
    raise AdaptError(f"no initializer {name!r} in the graph")


def _single_use(model, convs: list[ConvRef]) -> None:
    """Refuse a graph whose conv weights are shared with other nodes: changing them
    would change those nodes too."""
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for conv in convs:
        for name in (conv.weight, conv.bias, conv.bias_scale):
            if name is not None and uses.get(name, 0) > 1:
                raise AdaptError(f"conv {conv.name}: its weights are shared with other nodes of the graph")


def fold(model, conv: ConvRef, align: Alignment) -> None:
    """Fold one conv's correction into its weights: (x*k + b)*s + t = x*(k s) + (b s + t)."""
    scale, shift = align.scale.astype(np.float64), align.shift.astype(np.float64)
    weight = _array(model, conv.weight)
    shape = (-1,) + (1,) * (weight.ndim - 1)        # the output channel is the first axis (OIHW, or the scale)
    _replace(model, conv.weight, (weight * scale.reshape(shape)).astype(weight.dtype))
    if conv.bias is None:
        raise AdaptError(f"conv {conv.name} has no bias to hold its shift")
    bias = _array(model, conv.bias)
    if conv.bias_scale is None:                  # a float bias
        _replace(model, conv.bias, (bias * scale + shift).astype(bias.dtype))
        return
    bias_scale = _array(model, conv.bias_scale).astype(np.float64)
    zero = _array(model, conv.bias_zero).astype(np.float64) if conv.bias_zero else 0.0
    value = (bias.astype(np.float64) - zero) * bias_scale * scale + shift
    new_scale = bias_scale * scale
    q = np.round(value / new_scale) + zero
    if np.abs(q).max() >= 2**31 - 1:
        raise AdaptError(f"conv {conv.name}: the aligned bias does not fit its int32 encoding")
    _replace(model, conv.bias_scale, new_scale.astype(np.float32))
    _replace(model, conv.bias, q.astype(bias.dtype))


def _tapped_session(model, outputs: list[str], threads: int):
    """An ONNX Runtime session that also returns the given intermediate tensors."""
    onnx, _ = _onnx()
    from runtime.session import create_session
    # each tensor's element type (float16 in an FP16 file), which a graph output must state
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    del tapped.graph.output[:]
    for name in outputs:
        tapped.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT),
                                                                      None))
    return create_session(tapped.SerializeToString(), Path("."), threads)


def conv_moments(model, arrays: np.ndarray, convs: list[ConvRef],
                 threads: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{conv name: (mean, std)} of each conv's output before its ReLU over `arrays` (model
    inputs, NHWC float32), one pass."""
    session = _tapped_session(model, [c.output for c in convs], threads)
    input_name = session.get_inputs()[0].name
    moments = {c.name: ChannelMoments() for c in convs}
    for start in range(0, len(arrays), BATCH):
        outs = session.run([c.output for c in convs], {input_name: arrays[start:start + BATCH]})
        for conv, z in zip(convs, outs):
            moments[conv.name].add(np.moveaxis(z, 1, -1))    # ONNX convs are channels first
    return {name: m.mean_std() for name, m in moments.items()}


def fit(model, reference: dict[str, tuple[np.ndarray, np.ndarray]], site: np.ndarray, layers: str,
        threads: int) -> dict[str, Alignment]:
    """Align the chosen convs of `model` (changed in place) to the reference statistics on
    the site's model inputs, in order, each on the outputs of those already aligned."""
    convs = find_convs(model)
    _single_use(model, convs)
    by_name = {c.name: c for c in convs}
    chosen = chosen_convs([c.name for c in convs], layers)
    if not chosen:
        raise AdaptError("no conv is named as VGG16's blocks 1-3 (block1_conv1 ...): use --layers all")
    missing = [n for n in chosen if n not in reference]
    if missing:
        raise AdaptError(f"the reference has no statistics for conv(s) {', '.join(missing)}")
    done: dict[str, Alignment] = {}
    progress = Progress(len(chosen), "aligning conv layers")
    for i, name in enumerate(chosen, 1):
        conv = by_name[name]
        site_stats = conv_moments(model, site, [conv], threads)[name]
        done[name] = Alignment.between(reference[name], site_stats)
        fold(model, conv, done[name])
        progress.update(i)
    return done


def adaptation_note(training_data: dict | None) -> str:
    """What a person reading a prediction is told of a model `bcd adapt` changed ("" for
    any other model): the CLI, the printable report and the demo say it beside its name."""
    record = (training_data or {}).get("site_adaptation")
    if not record:
        return ""
    return (f"site-adapted to {record.get('site_scans', '?')} unlabelled scans of one site on "
            f"{str(record.get('created', ''))[:10]} (bcd adapt): for that site's scans only")


# --------------------------------------------------------------------------- the reference file

def reference_statistics(model_bytes: bytes, arrays: np.ndarray, threads: int = 2) -> list[dict[str, Any]]:
    """Every conv's per-channel (mean, std) on the given model inputs, as stored in the
    reference file."""
    onnx, _ = _onnx()
    model = onnx.load_model_from_string(model_bytes)
    convs = find_convs(model)
    stats = conv_moments(model, arrays, convs, threads)
    return [{"name": c.name, "mean": _floats(stats[c.name][0]), "std": _floats(stats[c.name][1])} for c in convs]


def _floats(values: np.ndarray) -> list[float]:
    return [float(f"{v:.7g}") for v in np.asarray(values, dtype=np.float64)]


def write_reference(export_dir: Path, variants: dict[str, tuple[Path, list[dict[str, Any]]]], images: int,
                    source: str) -> Path:
    """adapt-reference.json: each ONNX variant's statistics, bound to its file's sha256."""
    doc = {"schema": REFERENCE_SCHEMA, "schema_version": REFERENCE_VERSION, "images": int(images), "source": source,
           "variants": {name: {"file": path.name, "sha256": sha256_file(path), "convs": convs}
                        for name, (path, convs) in variants.items()}}
    target = Path(export_dir) / REFERENCE_NAME
    atomic.write_json(target, doc)
    return target


def read_reference(export_dir: Path, variant: str, file: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The reference statistics of one variant; AdaptError when there are none, or when
    they were measured on another file."""
    path = Path(export_dir) / REFERENCE_NAME
    if not path.is_file():
        raise AdaptError(f"{export_dir} has no {REFERENCE_NAME} (the training images' statistics): export the run "
                         "again with this version of bcd, or add it with python -m export.adapt_reference EXPORT")
    try:
        doc = json.loads(path.read_text())
        if doc.get("schema") != REFERENCE_SCHEMA or doc.get("schema_version") != REFERENCE_VERSION:
            raise ValueError("not a reference file this version reads")
        entry = doc["variants"][variant]
        convs = {c["name"]: (np.asarray(c["mean"], np.float64), np.asarray(c["std"], np.float64))
                 for c in entry["convs"]}
    except KeyError:
        raise AdaptError(f"{path} has no statistics for variant {variant}") from None
    except (ValueError, TypeError) as err:
        raise AdaptError(f"{path} is damaged ({err})") from None
    if entry.get("sha256") != sha256_file(file):
        raise AdaptError(f"{path} was measured on another {file.name} (its sha256 differs): it is the parent's "
                         "reference; adapt the parent export instead")
    return convs


# --------------------------------------------------------------------------- adapting an export

@dataclass(frozen=True, kw_only=True)
class SiteScans:
    """What both forms of `bcd adapt` take: the site's scans, how many, which layers."""
    data: tuple[str, ...]           # folders or files of the site's scans; labels are not read
    out: str
    max_images: int = 500           # a random subset of the site's scans, if there are more
    layers: str = "early"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers not in LAYERS:
            raise AdaptError(f"layers must be one of {', '.join(LAYERS)}, got {self.layers!r}")
        if self.max_images < MIN_IMAGES:
            raise AdaptError(f"--max-images must be at least {MIN_IMAGES}")
        if not self.data:
            raise AdaptError("give the site's scans: one or more folders or image files")


@dataclass(frozen=True, kw_only=True)
class ExportAdaptConfig(SiteScans):
    export_dir: str
    threads: int | None = None


def site_files(inputs: Iterable[str], limit: int, seed: int) -> tuple[list[Path], list[str]]:
    """The site's image files (folders searched, BUSI-style lesion masks left out), a random
    `limit` of them when there are more, and the inputs that could not be used, with why."""
    from runtime.dataset import is_mask
    from runtime.predict_files import expand_inputs
    files, problems = expand_inputs(list(inputs))
    files = [Path(f) for f in files if not is_mask(Path(f))]
    if len(files) > limit:
        files = sorted(np.random.default_rng(seed).choice(np.array(files, dtype=object), limit, replace=False))
    return files, [p.error for p in problems]


def site_inputs(classifier, inputs: Iterable[str], limit: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The site's scans as `bcd predict` gives them to the model (decoded, cut to the scan
    region, checked, marks treated, preprocessed): (n, s, s, 3) float32, and the files
    skipped with why (unreadable, colour Doppler, not a scan)."""
    files, skipped = site_files(inputs, limit, seed)
    arrays = []
    progress = Progress(len(files), "reading the site's scans")
    for i, path in enumerate(files, 1):
        name, scan, error = classifier.decode_or_error(str(path))
        placed = classifier.place(name, scan, error)
        if placed.arrays is None:
            skipped.append(placed.pred.error or f"{path}: not used")
        else:
            arrays.append(placed.arrays[len(placed.arrays) // 2])    # a cine loop: its middle frame
        progress.update(i)
    size = classifier.spec.image_size
    stacked = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, size, size, 3), np.float32)
    return stacked, skipped


def check_site_scans(count: int, skipped: list[str], data: Iterable[str]) -> None:
    """List the scans skipped (the first ten); AdaptError when too few are left."""
    for line in skipped[:10]:
        log.warning("skipped: %s", line)
    if len(skipped) > 10:
        log.warning("... and %d more skipped", len(skipped) - 10)
    if count < MIN_IMAGES:
        data = list(data)
        where = ", ".join(data) if len(data) <= 3 else f"the {len(data)} files and folders given"
        raise AdaptError(f"only {count} usable scan(s) in {where}: give at least {MIN_IMAGES} "
                         "of the site's own scans (100 or more measure its scanner better)")


def adapt_export(config: ExportAdaptConfig) -> Path:
    """Write an adapted copy of the export to config.out (its ONNX variants aligned); return it."""
    from runtime.classifier import Classifier
    from runtime.manifest import read_manifest
    from runtime.session import resolve_threads

    onnx, _ = _onnx()
    source, out = Path(config.export_dir), Path(config.out)
    if out.exists():
        raise AdaptError(f"{out} already exists: give a new directory (nothing was changed)")
    manifest = read_manifest(source)
    if "site_adaptation" in manifest.training_data:
        raise AdaptError(f"{source} is already adapted to a site: adapt its parent export instead")
    onnx_variants = [v for v in manifest.usable_variants() if v.format == "onnx"]
    if not onnx_variants:
        raise AdaptError(f"{source} has no usable ONNX variant to adapt")
    references = {v.name: read_reference(source, v.name, source / v.file) for v in onnx_variants}
    threads = resolve_threads(config.threads)
    with Classifier.load(source, variant=onnx_variants[0].name, threads=threads) as classifier:
        site, skipped = site_inputs(classifier, config.data, config.max_images, config.seed)
    check_site_scans(len(site), skipped, config.data)
    adapted = {}
    ranges = {}
    for variant in onnx_variants:
        log.info("aligning %s (%s) to %d of the site's scans", source.name, variant.name, len(site))
        model = onnx.load_model(str(source / variant.file))
        done = fit(model, references[variant.name], site, config.layers, threads)
        ranges[variant.name] = [float(min(a.scale.min() for a in done.values())),
                                float(max(a.scale.max() for a in done.values()))]
        adapted[variant.name] = model
    record = {"parent": str(source), "parent_sha256": {v.name: v.sha256 for v in onnx_variants},
              "site_scans": int(len(site)), "skipped": len(skipped),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "config": {**asdict(config), "data": list(config.data)},
              "layers_aligned": len(done),
              # how far the site's spreads were from the reference's, over every channel aligned
              "scale_range": ranges}
    _write_export(source, out, manifest, adapted, record)
    return out


def _write_export(source: Path, out: Path, manifest, adapted: dict, record: dict) -> None:
    """The adapted export, written beside `out` and renamed into place when complete."""
    from runtime.manifest import MANIFEST_NAME, ONNX_METADATA_KEY, write_manifest

    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        variant_files = {v.file for v in manifest.variants if v.file}
        for item in source.iterdir():
            if item.name in NOT_COPIED or item.name in variant_files or item.name.startswith("eval-"):
                continue
            if item.name == MANIFEST_NAME or item.is_dir():
                continue
            shutil.copy2(item, tmp / item.name)
        manifest.training_data = {**manifest.training_data, "site_adaptation": record}
        manifest.created = record["created"]
        kept = []
        for entry in manifest.variants:
            if entry.name not in adapted:
                log.warning("variant %s is not carried over (only ONNX variants can be aligned)", entry.name)
                continue
            model = adapted[entry.name]
            _update_metadata(model, ONNX_METADATA_KEY, record)
            data = model.SerializeToString()
            atomic.write_bytes(tmp / entry.file, data)
            entry.sha256, entry.size_bytes = sha256_bytes(data), len(data)
            entry.compressed_bytes = compressed_size(data)
            entry.notes = list(entry.notes) + [
                "site-adapted (bcd adapt): weights aligned to a site's scans; the parity record, OOD threshold "
                "and operating threshold are the parent's"]
            kept.append(entry)
        manifest.variants = kept
        write_manifest(tmp, manifest)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _update_metadata(model, key: str, record: dict) -> None:
    """The manifest essentials the file carries (a lone .onnx runs as exported), with the
    adaptation added to their training data."""
    for prop in model.metadata_props:
        if prop.key == key:
            doc = json.loads(prop.value)
            doc["training_data"] = {**doc.get("training_data", {}), "site_adaptation": record}
            doc["created"] = record["created"]
            prop.value = json.dumps(doc, sort_keys=True, allow_nan=False)
            return
