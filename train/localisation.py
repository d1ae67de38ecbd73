"""Grad-CAM maps of a Keras model, for the localisation figures of training and
evaluation (runtime.localisation scores them against the lesion masks).

Same map as the exported graph's "cam" output (derivation in export/gradcam.py): with
A the block5_conv3 activations and h the head_dense output, cam = relu(sum_k g_k A_k)
where g = W1 (step(h) * w2). Computed here in numpy from one forward pass.
"""
from __future__ import annotations

import numpy as np

from runtime.preprocessing import PreprocessSpec
from train.data import to_model_input
from train.model import LAST_CONV_LAYER, probability_dense
from train.tf_setup import keras


def keras_cams(model, images_uint8: np.ndarray, spec: PreprocessSpec, batch_size: int = 32) -> np.ndarray:
    """(N, h, w) unnormalised Grad-CAM maps of a saved (plain) model for resized uint8 images."""
    probe = keras.Model(model.inputs, [model.get_layer(LAST_CONV_LAYER).output, model.get_layer("head_dense").output])
    w1 = model.get_layer("head_dense").get_weights()[0]            # (C, units)
    w2 = probability_dense(model).get_weights()[0].reshape(-1)       # (units,)
    maps = []
    for i in range(0, len(images_uint8), batch_size):
        acts, hidden = probe(to_model_input(images_uint8[i:i + batch_size], spec), training=False)
        g = ((np.asarray(hidden) > 0) * w2) @ w1.T                  # (N, C)
        maps.append(np.maximum(np.einsum("nhwc,nc->nhw", np.asarray(acts), g), 0.0))
    return np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32)
