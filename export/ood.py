"""Out-of-distribution (OOD) score inside the exported graph: how far an image's pooled
features lie from the training images' features.

Features: the activations of a few layers (default `block3_pool` and `gap`), each
averaged over the image (global average pooling), passed through log(1 + x) (ReLU
activations are skewed; the log makes them closer to Gaussian) and concatenated. The
score is their Mahalanobis distance to the nearest class mean of the training split,
under one shared ("tied") covariance, as in Lee et al. 2018 ("A simple unified framework
for detecting out-of-distribution samples"):

    score(x) = min_c sqrt((f(x) - mu_c)^T S^-1 (f(x) - mu_c))

Why block3 as well as the last pooled features: the last block is trained to separate
benign from malignant and keeps little else, so a grayscale photograph or a text page can
land among the scans there; block3's pooled activations keep the image's texture
statistics (ultrasound speckle), which tell those apart (measured on the shipped model,
see export/README.md "Out-of-distribution flag").

S is the Ledoit-Wolf shrunk covariance of the class-centred training features: with
hundreds of features and a few hundred training images the sample covariance is
singular; shrinkage towards a scaled identity makes it invertible. With S = V diag(l) V^T
and W = V diag(l^-1/2), the squared distance is ||f(x) W - mu_c W||^2, so the graph needs
the pooling, one MatMul by a constant, a subtraction of the K whitened means, a sum of
squares, a min and a sqrt. All of it lives in the layer named "ood", whose nodes the INT8
and FP16 conversions leave in float32.

The statistics are fitted per source Keras model (the original, or the magnitude-pruned
one), each on its own features; each variant's threshold is then chosen on its own
scores of the validation split (export/pipeline.py), so quantization noise in the
features shifts the threshold with it instead of raising the false-alarm rate.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from train.tf_setup import keras, tf

log = logging.getLogger(__name__)

DEFAULT_LAYERS = ("block3_pool", "gap")
OOD_OUTPUT = "ood"
DEFAULT_QUANTILE = 0.99
METHOD = ("Mahalanobis distance of log(1 + globally average-pooled activations) of the feature layers to the "
          "nearest training-class mean, Ledoit-Wolf shrunk tied covariance, computed inside the model graph")


@dataclass(frozen=True)
class OodStats:
    """What the graph needs (class means and whitening matrix) and what the manifest records."""

    means: np.ndarray          # (K, C) float64: one row per training class
    whitening: np.ndarray      # (C, C) float64: W with W W^T = S^-1
    shrinkage: float           # Ledoit-Wolf's shrinkage coefficient, 0..1
    n_train: int
    classes: list[int]

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The score in numpy (float64), for checks against the graph's output."""
        fw = np.asarray(features, np.float64) @ self.whitening
        mw = self.means @ self.whitening
        d2 = ((fw[:, None, :] - mw[None, :, :]) ** 2).sum(-1)
        return np.sqrt(d2.min(axis=1))


def fit_stats(features: np.ndarray, labels: np.ndarray) -> OodStats:
    """Class means and the Ledoit-Wolf whitening of the class-centred features."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels) or len(features) < 2:
        raise ValueError(f"need at least 2 feature rows with one label each, got {features.shape} and {labels.shape}")
    classes = sorted(int(c) for c in np.unique(labels))
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    values, vectors = np.linalg.eigh(lw.covariance_)
    # Shrinkage keeps every eigenvalue >= shrinkage * mean variance > 0; the floor only
    # guards the degenerate all-zero case (every feature constant on the training set).
    floor = max(float(values.max()) * 1e-9, 1e-12)
    whitening = vectors / np.sqrt(np.maximum(values, floor))
    return OodStats(means, whitening, float(lw.shrinkage_), int(len(features)), classes)


def _pool(inputs):
    """log(1 + mean over the image) of each input (N, h, w, C) or (N, C), concatenated."""
    parts = []
    for x in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        if len(x.shape) == 4:
            x = tf.reduce_mean(x, axis=[1, 2])
        # log(x + 1), not log1p: tf2onnx has no Log1p; relu: activations are >= 0 already, it guards the log
        parts.append(tf.math.log(tf.nn.relu(x) + 1.0))
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


class PooledFeatures(keras.layers.Layer):
    """The score's features alone (to fit the statistics on)."""

    def call(self, inputs):
        return _pool(inputs)


class MahalanobisScore(keras.layers.Layer):
    """score = min_c ||f W - mu_c W|| with f = the pooled features of the inputs; output (N,)."""

    def __init__(self, means, whitening, **kwargs):
        super().__init__(**kwargs)
        self.whitening = np.asarray(whitening, dtype=np.float32)
        self.whitened_means = (np.asarray(means, np.float64) @ np.asarray(whitening, np.float64)).astype(np.float32)

    def call(self, inputs):
        fw = tf.matmul(_pool(inputs), tf.constant(self.whitening))                  # (N, C)
        # expand_dims rather than fw[:, None, :]: see export/gradcam.py (symbolic shape inference)
        diff = tf.expand_dims(fw, 1) - tf.constant(self.whitened_means)[tf.newaxis]  # (N, K, C)
        d2 = tf.reduce_min(tf.reduce_sum(tf.square(diff), axis=-1), axis=-1)        # (N,)
        return tf.sqrt(d2)

    def get_config(self):
        config = super().get_config()
        config.update(means=self.whitened_means.tolist(), whitening=self.whitening.tolist())
        return config


def _layer_outputs(model, layers: tuple[str, ...]) -> list:
    try:
        return [model.get_layer(name).output for name in layers]
    except ValueError as err:
        raise ValueError(f"the model lacks a feature layer for the OOD score: {err}") from None


def features_of(model, x: np.ndarray, layers: tuple[str, ...] = DEFAULT_LAYERS, batch_size: int = 16) -> np.ndarray:
    """The score's features of preprocessed images (N, s, s, 3) -> (N, C), computed by
    the same code as in the graph."""
    extractor = keras.Model(model.inputs, PooledFeatures()(_layer_outputs(model, layers)))
    parts = [np.asarray(extractor(x[i:i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).reshape(len(x), -1)


def with_ood_output(model, stats: OodStats, layers: tuple[str, ...] = DEFAULT_LAYERS):
    """`model` (any number of outputs) plus a last output "ood": the score per image."""
    score = MahalanobisScore(stats.means, stats.whitening, name=OOD_OUTPUT)(_layer_outputs(model, layers))
    outputs = list(model.outputs) if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    return keras.Model(model.inputs, outputs + [score], name=f"{model.name}_ood")


def choose_threshold(scores: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> dict:
    """The flag threshold on validation scores: the `quantile` quantile (linear
    interpolation), so about 1 - quantile of the validation images are flagged.
    Returns the manifest's per-variant record."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not len(scores):
        raise ValueError("no validation scores to choose the OOD threshold on")
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        raise ValueError("every validation OOD score is non-finite")
    threshold = float(np.quantile(finite, quantile))
    flagged = ~np.isfinite(scores) | (scores >= threshold)
    # ">=": the image at the quantile itself counts as flagged, as in the runtime's rule
    return {"threshold": threshold, "false_alarm_rate": float(flagged.mean()), "n": int(len(scores))}


def onnx_node_names(proto) -> list[str]:
    """Names of the ONNX nodes tf2onnx made from the OOD layer (kept out of INT8/FP16
    conversion: quantizing the whitening MatMul and the sum of squares would clip exactly
    the large distances the flag is for)."""
    marker = f"/{OOD_OUTPUT}/"
    names = [n.name for n in proto.graph.node if marker in f"/{n.name}" or n.output and OOD_OUTPUT in n.output]
    return names
