"""The short fine-tuning that QAT and magnitude pruning both do before export: a weight
copy of the trained model (the original must stay as it is for the other variants), then
a few epochs on the training split with augmentation and class-balanced weights."""
from __future__ import annotations

import logging

import numpy as np

from runtime.preprocessing import PreprocessSpec
from train.data import balanced_class_weights, make_tf_dataset
from train.tf_setup import keras

log = logging.getLogger(__name__)


def weight_copy(model, seed: int):
    """A fresh model with the same layers and weights (seeded: the fit that follows is)."""
    keras.utils.set_random_seed(seed)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def fine_tune(model, images_uint8: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, epochs: int,
              learning_rate: float, batch_size: int, seed: int, what: str, callbacks=()) -> dict:
    """Compile and fit `model` in place; returns its history (floats), one log line per epoch."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])
    data = make_tf_dataset(images_uint8, labels, spec, batch_size, training=True, seed=seed)
    history = model.fit(data, epochs=epochs, class_weight=balanced_class_weights(labels), verbose=0,
                        callbacks=list(callbacks)).history
    for epoch in range(epochs):
        log.info("%s epoch %d/%d: loss %.4f, AUC %.3f", what, epoch + 1, epochs,
                 history["loss"][epoch], history.get("auc", [float("nan")] * epochs)[epoch])
    return {k: [float(v) for v in vals] for k, vals in history.items()}
