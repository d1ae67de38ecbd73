"""`bcd adapt`: fit a trained run to a new site's scanner from its unlabelled scans.

Another scanner (its gain, its speckle, its processing) shifts the statistics of every
conv layer's output away from what the network learnt on, and the layers after it read
the shifted values as if they meant something. With batch norm, the usual fix is to
measure the batch norms' statistics again on the new domain's images (AdaBN: Li et al.,
"Revisiting batch normalization for practical domain adaptation", 2016). The saved
models have their batch norms folded into the convs, so the same is done per conv
channel on the output z of each conv (before its ReLU):

    z' = m_ref + (z - m_site) * s_ref / s_site

where m and s are the channel's mean and spread over the reference images (the run's
own training split) and over the site's scans. The layers are aligned in order, each on
the outputs the aligned layers before it give, and every correction is folded back into
the conv's kernel and bias: the adapted model is an ordinary run, exported, evaluated and
run exactly as fast as its parent. Labels are never read: a site needs only a folder of
its own scans. With each hospital held out in turn (docs/results.md), aligning blocks 1-3
on 100 of its scans gained 0.009 and 0.006 of AUC (aligning all 13 convs: +0.007 and
-0.009); per scanner it still lost 0.002 once, so a site checks the adapted run against its
parent on labelled scans of its own before using it.

runtime/site_adapt.py does the same on an exported ONNX file, with the runtime's install
(what a clinic has); the statistics, the corrections and the choice of layers are that
module's, shared by both.

What it does not do: choose the site's operating point. The threshold stays the
parent's; a site that needs its own sets it on labelled scans (`bcd calibrate`).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.images import DEFAULT_MAX_PIXELS, ImageReadError
from runtime.preprocessing import PreprocessSpec, normalize, resize
from runtime.progress import Progress
from runtime.site_adapt import (MIN_IMAGES, AdaptError, Alignment, ChannelMoments, SiteScans, check_site_scans,
                                 chosen_convs, site_files)
from train.config import run_scan_region
from train.run_dir import RunDir

log = logging.getLogger(__name__)

BATCH = 32


@dataclass(frozen=True, kw_only=True)
class AdaptConfig(SiteScans):
    run_dir: str
    reference_images: int = 600     # a random subset of the run's training split

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference_images < MIN_IMAGES:
            raise AdaptError(f"the reference images must be at least {MIN_IMAGES}")


def conv_names(model) -> list[str]:
    """The model's convs in order; refuses a model with batch norms left unfolded."""
    kinds = {type(layer).__name__ for layer in model.layers}
    if "BatchNormalization" in kinds:
        raise AdaptError("the model still has batch-norm layers; adapt a saved run (model.keras, batch norms folded)")
    return [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]


def channel_moments(forward, images: np.ndarray, spec: PreprocessSpec, names: list[str],
                    align: dict[str, Alignment]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{conv: (mean, std)} of each conv's output before its ReLU over `images`, with the
    alignments in `align` applied on the way (over every position)."""
    moments = {n: ChannelMoments() for n in names}
    for start in range(0, len(images), BATCH):
        x = normalize(images[start:start + BATCH].astype(np.float32), spec).astype(np.float32)
        for name, z in forward(x, align, names):
            moments[name].add(z)
    return {name: m.mean_std() for name, m in moments.items()}


class ConvForward:
    """The VGG16 conv base run layer by layer in NumPy-fed TensorFlow, so that any conv's
    pre-ReLU output can be read and corrected on the way."""

    def __init__(self, model) -> None:
        from train.tf_setup import tf
        self.tf = tf
        self.layers = []
        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "Conv2D":
                kernel, bias = layer.get_weights()
                self.layers.append(("conv", layer.name, kernel, bias, layer.padding.upper(), layer.activation))
            elif kind == "MaxPooling2D":
                self.layers.append(("pool", layer.name, layer.pool_size, layer.strides, layer.padding.upper(), None))
            elif kind in ("GlobalAveragePooling2D", "Flatten", "Dense", "Dropout"):
                break                       # the head: not needed for the convs' statistics

    def __call__(self, x: np.ndarray, align: dict[str, Alignment], wanted: list[str]):
        """Yield (conv name, pre-ReLU output as NumPy) for each conv in `wanted`, in order;
        stops after the last one wanted."""
        tf = self.tf
        wanted, h = set(wanted), tf.constant(x)
        for kind, name, a, b, padding, activation in self.layers:
            if not wanted:
                return
            if kind == "pool":
                h = tf.nn.max_pool2d(h, a, b, padding)
                continue
            z = tf.nn.conv2d(h, a, 1, padding) + b
            if name in align:
                z = z * align[name].scale + align[name].shift
            if name in wanted:
                wanted.discard(name)
                yield name, z.numpy()
            h = activation(z)


def fit_alignments(model, reference: np.ndarray, site: np.ndarray, spec: PreprocessSpec,
                   layers: str = "early") -> dict[str, Alignment]:
    """The per-channel corrections that give each chosen conv the reference images'
    statistics on the site's images, fitted layer by layer in order."""
    names = conv_names(model)
    chosen = chosen_convs(names, layers)
    forward = ConvForward(model)
    ref = channel_moments(forward, reference, spec, chosen, {})
    align: dict[str, Alignment] = {}
    progress = Progress(len(chosen), "aligning conv layers")
    for i, name in enumerate(chosen, 1):
        # each layer on the outputs of the layers already aligned (one pass per layer: a
        # few seconds each at the model's input size)
        align[name] = Alignment.between(ref[name], channel_moments(forward, site, spec, [name], align)[name])
        progress.update(i)
    return align


def fold(model, align: dict[str, Alignment]) -> None:
    """Fold the corrections into the convs: (x * k + b) * s + t = x * (k s) + (b s + t)."""
    for name, a in align.items():
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([(kernel * a.scale).astype(kernel.dtype), (bias * a.scale + a.shift).astype(bias.dtype)])


def read_site_images(inputs, info: dict, spec: PreprocessSpec, limit: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The site's scans as the run's model reads them (cut to the scan region, marks
    treated, resized): (n, s, s, 3) uint8, and the files skipped with why."""
    from train.data import read_sample
    files, skipped = site_files(inputs, limit, seed)
    region = run_scan_region(info)
    images = []
    progress = Progress(len(files), "reading the site's scans")
    for i, path in enumerate(files, 1):
        try:
            image, _ = read_sample(Path(path), None, region, DEFAULT_MAX_PIXELS)
            images.append(resize(image, spec))
        except ImageReadError as err:
            skipped.append(str(err))
        progress.update(i)
    size = spec.image_size
    return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)), skipped


def _reference_images(run: RunDir, info: dict, split: dict, spec: PreprocessSpec, count: int, seed: int) -> np.ndarray:
    from train.data import load_saved_split
    try:
        data, idx = load_saved_split(split, spec, class_labels=info["labels"]["class_labels"],
                                     region=run_scan_region(info))
    except (FileNotFoundError, ValueError) as err:
        raise AdaptError(f"the run's training images cannot be read ({err}); they are the reference the site is "
                         "aligned to") from None
    train = np.asarray(idx["train"])
    if len(train) > count:
        train = np.sort(np.random.default_rng(seed).choice(train, count, replace=False))
    return data.images[train]


def adapt_run(config: AdaptConfig) -> RunDir:
    """Write an adapted copy of the run to config.out; return it."""
    from train.tf_setup import keras

    from train.slim import open_parent     # a finished run, or a ValueError saying what is missing

    parent, info, split = open_parent(config.run_dir)
    out = RunDir(Path(config.out))
    if out.root.exists():
        raise AdaptError(f"{out.root} already exists: give a new directory (nothing was changed)")
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    site, skipped = read_site_images(config.data, info, spec, config.max_images, config.seed)
    check_site_scans(len(site), skipped, config.data)
    reference = _reference_images(parent, info, split, spec, config.reference_images, config.seed)
    log.info("aligning %s to %d of the site's scans (reference: %d training images of the run)",
             parent.root.name, len(site), len(reference))
    model = keras.models.load_model(parent.model, compile=False)
    align = fit_alignments(model, reference, site, spec, config.layers)
    fold(model, align)
    _write(out, parent, info, split, model, config, len(site), len(skipped), align)
    log.info("adapted run written to %s (threshold kept: %.4f; set the site's own with bcd calibrate)",
             out.root, float(info["threshold"]["value"]))
    return out


def _write(out: RunDir, parent: RunDir, info: dict, split: dict, model, config: AdaptConfig, used: int,
           skipped: int, align: dict[str, Alignment]) -> None:
    """An ordinary run directory: the adapted model, the parent's split and run.json with
    what was done under "site_adaptation" (also in "data", which the export's manifest copies)."""
    tmp = out.root.with_name(out.root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        model.save(tmp / parent.model.name)
        record = {"parent": str(parent.root), "site_scans": used, "skipped": skipped,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "config": asdict(config),
                  "layers_aligned": len(align),
                  # how far the site's spreads were from the reference's, over every channel
                  "scale_range": [float(min(a.scale.min() for a in align.values())),
                                  float(max(a.scale.max() for a in align.values()))]}
        adapted = {**info, "site_adaptation": record, "data": {**info.get("data", {}), "site_adaptation": record}}
        atomic.write_json(tmp / parent.run_info.name, adapted)
        atomic.write_json(tmp / parent.split.name, split)
        tmp.rename(out.root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
