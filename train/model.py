"""VGG16 transfer-learning classifier: VGG16 conv base + global average pooling + a
dense head with dropout + one sigmoid output (probability of malignancy).

The model is built flat (VGG16's layers sit directly in the outer model, named
block1_conv1 … block5_pool) so export, Grad-CAM and pruning can address conv layers
by name. Its input is the output of runtime.preprocessing: float32 NHWC BGR with the
mean subtracted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.tf_setup import keras

LAST_CONV_LAYER = "block5_conv3"
IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be downloaded or a local weights file does not fit."""


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 224
    weights: str = "none"          # "imagenet", "none", or a path to a no-top .h5 file
    dense_units: int = 256
    dropout: float = 0.5
    seed: int = 42

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"


def _vgg16_base(config: ModelConfig, inputs):
    shape = (config.image_size, config.image_size, 3)
    if config.weights == "imagenet":
        try:
            return keras.applications.VGG16(include_top=False, weights="imagenet", input_tensor=inputs, input_shape=shape)
        except Exception as err:  # the download raises several types; all mean the same to a user
            raise WeightsUnavailable(
                f"could not download the ImageNet VGG16 weights ({err.__class__.__name__}: {err}). "
                f"Without internet, download {IMAGENET_WEIGHTS_FILE} on a connected machine "
                "and pass its path: --weights /path/to/" + IMAGENET_WEIGHTS_FILE
            ) from None
    base = keras.applications.VGG16(include_top=False, weights=None, input_tensor=inputs, input_shape=shape)
    if config.weights != "none":
        _load_local_weights(base, Path(config.weights))
    return base


def _load_local_weights(base, path: Path) -> None:
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path} (use imagenet, none, or a .h5 file path)")
    try:
        base.load_weights(str(path))
    except Exception as err:
        raise WeightsUnavailable(
            f"{path} does not fit VGG16 without its top ({err.__class__.__name__}: {err}); "
            f"expected Keras' {IMAGENET_WEIGHTS_FILE}"
        ) from None


def _he_initialise(model, seed: int) -> None:
    """Re-draw conv kernels He-normal. With Keras' default Glorot-uniform the plain
    (no batch norm) VGG16 did not learn on ~500 images from scratch; He init did
    (see STACK-NOTES)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:-1])
            kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32)
            layer.set_weights([kernel, np.zeros_like(bias)])


def build_model(config: ModelConfig):
    """Return (model, info) where info records the build for run.json."""
    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    base = _vgg16_base(config, inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = keras.layers.Dense(config.dense_units, activation="relu", kernel_initializer="he_normal", name="head_dense")(x)
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="malignancy")(x)
    model = keras.Model(inputs, outputs, name="vgg16_breast")
    if not config.pretrained:
        _he_initialise(model, config.seed)
    info = {
        "architecture": "VGG16 (include_top=False, no batch norm) + GAP + Dense(relu) + Dropout + Dense(sigmoid)",
        "weights": config.weights if config.weights in ("imagenet", "none") else f"local file {Path(config.weights).name}",
        "initialisation": "he_normal conv kernels, zero biases" if not config.pretrained else "pretrained conv base",
        "last_conv_layer": LAST_CONV_LAYER,
        "dense_units": config.dense_units,
        "dropout": config.dropout,
    }
    return model, info


def set_trainable_blocks(model, blocks: str) -> None:
    """'none': freeze the whole VGG16 base; 'last': only block5 trains; 'all': everything."""
    for layer in model.layers:
        if layer.name.startswith("block"):
            layer.trainable = blocks == "all" or (blocks == "last" and layer.name.startswith("block5"))
