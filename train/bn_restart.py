"""Batch norms restarted from a run whose batch norms were folded into its convs.

A saved model.keras is plain VGG16: every batch norm was folded into the conv before it.
Initialising a batch-norm model (`--arch vgg16-bn`) from it copies each conv's kernel and
puts its bias into the batch norm's offset, with the batch norm otherwise the identity
(moving mean 0, variance 1, scale 1). In inference mode that reproduces the earlier model;
in training mode the batch norm normalises each channel by the batch's own statistics,
which are nothing like 0 and 1, so the first training step sees a different network.
Fine-tuning then fell apart for epochs at a time (held-out AUC 0.47 after the first
whole-network epoch, README "Recipes tried").

`match_batch_norms` measures each restarted batch norm's input on training images and
sets its moving statistics to them, with scale and offset chosen so that the layer still
computes conv + bias: gamma * (x - mean) / sqrt(var + eps) + beta = x + bias when
gamma = sqrt(var + eps) and beta = bias + mean. Training mode (batch statistics close to
these) and inference mode then both start from the earlier model's function.
"""
from __future__ import annotations

import logging

import numpy as np

from runtime.preprocessing import PreprocessSpec, normalize
from runtime.site_adapt import ChannelMoments
from train.tf_setup import keras, tf

log = logging.getLogger(__name__)

BN_SUFFIX = "_bn"


def match_batch_norms(model, names: list[str], images: np.ndarray, spec: PreprocessSpec,
                      batch_size: int = 16) -> None:
    """Set the batch norms `names` (each right after the conv whose name it extends) to the
    statistics of their input on `images` ((n, size, size, 3) uint8 BGR), keeping each
    layer's function (conv + the offset it holds). Call it right after init_from_run,
    before any training-mode call: it measures through the other batch norms, which must
    still be the identity."""
    if not names or len(images) == 0:
        return
    convs = [model.get_layer(name[: -len(BN_SUFFIX)]) for name in names]
    probe = keras.Model(model.inputs, [conv.output for conv in convs])
    stats = [ChannelMoments() for _ in names]
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start:start + batch_size].astype(np.float32), spec)
        outputs = probe(batch, training=False)
        for moments, out in zip(stats, outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            moments.add(tf.cast(out, tf.float64).numpy())
    for name, moments in zip(names, stats):
        bn = model.get_layer(name)
        _, offset, _, _ = bn.get_weights()
        mean, var = moments.mean_var()
        scale = np.sqrt(var + bn.epsilon)
        bn.set_weights([scale.astype(np.float32), (offset + mean).astype(np.float32),
                        mean.astype(np.float32), var.astype(np.float32)])
    log.info("batch norms restarted from the earlier run's folded convs: %d matched to %d training images",
             len(names), len(images))
