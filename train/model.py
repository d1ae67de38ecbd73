"""VGG16 transfer-learning classifier: VGG16 conv base + global average pooling + a
dense head with dropout + one sigmoid output (probability of malignancy).

The model is built flat (VGG16's layers sit directly in the outer model, named
block1_conv1 … block5_pool) so export, Grad-CAM and pruning can address conv layers
by name. Its input is the output of runtime.preprocessing: float32 NHWC BGR with the
mean subtracted.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from train.tf_setup import keras

LAST_CONV_LAYER = "block5_conv3"
IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be downloaded or a local weights file does not fit."""


VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))   # (convs, filters) per block
LESION_OUTPUT = "lesion"
BIRADS_OUTPUT = "birads"
PROBABILITY_OUTPUT = "malignancy"
# ModelConfig.presence: the two factors of the probability, each a sigmoid on the head's
# features. The conditional one is what Grad-CAM explains; the presence one learns from
# the scans without a lesion (a normal class, --lesion-free-share samples).
CONDITIONAL_LAYER = "malignancy_given_lesion"
PRESENCE_LAYER = "lesion_presence"
LESION_LOSSES = ("none", "head", "cam")
BN_EPSILON = 1e-3
# MixStyle (ModelConfig.mixstyle) sits after these blocks' pooling: the early features, where
# a scanner's look (gain, speckle, texture) lives rather than what the tissue is.
MIXSTYLE_BLOCKS = (1, 2, 3)
MIXSTYLE_ALPHA = 0.1


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 224
    weights: str = "none"          # "imagenet", "none", a no-top .h5 file, or a run directory / .keras model
    dense_units: int = 256
    dropout: float = 0.5
    seed: int = 42
    batch_norm: bool = False       # BatchNormalization after every conv (from scratch only)
    width: float = 1.0             # share of VGG16's filters per conv layer (from scratch or a run)
    lesion: str = "none"           # lesion-mask loss (training only): none | head (auxiliary segmentation
                                   # head on block 5) | cam (the Grad-CAM map itself, pulled toward the lesion)
    mixstyle: float = 0.0          # training only: probability per batch of MixStyle after blocks 1-3 (MixStyle)
    presence: bool = False         # the probability is P(malignant | lesion) x P(lesion): two sigmoids
                                   # on the head's features, multiplied (see PRESENCE_LAYER)

    def __post_init__(self) -> None:
        if not 0.05 <= self.width <= 1.0:
            raise ValueError("width must be between 0.05 and 1 (the share of VGG16's filters kept)")
        if self.lesion not in LESION_LOSSES:
            raise ValueError(f"lesion loss must be one of {', '.join(LESION_LOSSES)}")
        if self.uses_keras_vgg16_weights and (self.batch_norm or self.width != 1.0):
            raise ValueError("ImageNet (.h5) weights fit only plain VGG16: use --arch vgg16 --width 1")
        if not 0.0 <= self.mixstyle <= 1.0:
            raise ValueError("the MixStyle probability must be in [0, 1]")
        if self.mixstyle and self.uses_keras_applications(self.batch_norm):
            raise ValueError("MixStyle needs the project's own VGG16 topology: use --arch vgg16-bn or --width below 1")

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    @property
    def uses_keras_vgg16_weights(self) -> bool:
        return self.weights == "imagenet" or self.weights.lower().endswith((".h5", ".hdf5"))

    def uses_keras_applications(self, batch_norm: bool) -> bool:
        """Whether the conv base is keras.applications' VGG16 (ImageNet weights, or plain
        full-width VGG16) rather than the project's own; `batch_norm` as it is built (the
        saved inference model is built without, whatever the training model had)."""
        return self.uses_keras_vgg16_weights or (self.width == 1.0 and not batch_norm and self.weights == "none")

    def filters(self) -> list[int]:
        """Filters of each conv layer, in order."""
        return [max(8, round(f * self.width)) for n, f in VGG16_BLOCKS for _ in range(n)]


def _own_vgg16(config: ModelConfig, inputs, batch_norm: bool):
    """VGG16's topology with the same layer names as Keras' (block1_conv1 ... block5_pool),
    optionally narrower and with batch normalisation. Returns the last pooling output."""
    x, widths = inputs, iter(config.filters())
    for b, (n_convs, _) in enumerate(VGG16_BLOCKS, 1):
        for c in range(1, n_convs + 1):
            name = f"block{b}_conv{c}"
            if batch_norm:
                x = keras.layers.Conv2D(next(widths), 3, padding="same", use_bias=False, name=name)(x)
                x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
                x = keras.layers.ReLU(name=f"{name}_relu")(x)
            else:
                x = keras.layers.Conv2D(next(widths), 3, padding="same", activation="relu", name=name)(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        if config.mixstyle and b in MIXSTYLE_BLOCKS:
            x = MixStyle(config.mixstyle, MIXSTYLE_ALPHA, name=f"block{b}_mixstyle")(x)
    return x


@keras.utils.register_keras_serializable(package="bcd")
class MixStyle(keras.layers.Layer):
    """MixStyle (Zhou et al., ICLR 2021): in training, with probability `p` per batch, each
    image's feature statistics (per-channel mean and standard deviation over the map) are
    replaced by a random mix, weight lambda ~ Beta(alpha, alpha), of its own and another
    image's of the batch. The image's content stays; its "style" (what another scanner,
    preset or sonographer changes: gain, contrast, speckle) becomes one the training set
    does not hold, for a hospital the model has not seen. The identity at inference, and
    `inference_model` leaves it out of model.keras."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)

    def call(self, x, training=None):
        from train.tf_setup import tf
        if not training or self.p <= 0.0:
            return x
        f = tf.cast(x, tf.float32)
        n = tf.shape(f)[0]
        mu = tf.stop_gradient(tf.reduce_mean(f, axis=[1, 2], keepdims=True))
        sigma = tf.stop_gradient(tf.sqrt(tf.math.reduce_variance(f, axis=[1, 2], keepdims=True) + self.eps))
        a = tf.random.gamma([n, 1, 1, 1], self.alpha)      # lambda ~ Beta(alpha, alpha) as a / (a + b)
        lam = a / (a + tf.random.gamma([n, 1, 1, 1], self.alpha) + 1e-12)
        other = tf.random.shuffle(tf.range(n))
        mixed_mu = lam * mu + (1.0 - lam) * tf.gather(mu, other)
        mixed_sigma = lam * sigma + (1.0 - lam) * tf.gather(sigma, other)
        styled = (f - mu) / sigma * mixed_sigma + mixed_mu
        apply = tf.random.uniform([]) < self.p
        return tf.cast(tf.where(apply, styled, f), x.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(p=self.p, alpha=self.alpha, eps=self.eps)
        return config


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
            kernel, *bias = layer.get_weights()     # no bias before a batch norm
            fan_in = np.prod(kernel.shape[:-1])
            kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32)
            layer.set_weights([kernel] + [np.zeros_like(b) for b in bias])


def _features(config: ModelConfig, inputs, batch_norm: bool):
    if config.uses_keras_applications(batch_norm):
        return _vgg16_base(config, inputs).output
    return _own_vgg16(config, inputs, batch_norm)


def _classifier(config: ModelConfig, batch_norm: bool, lesion: str):
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    pooled = _features(config, inputs, batch_norm)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(pooled)
    x = keras.layers.Dense(config.dense_units, activation="relu", kernel_initializer="he_normal", name="head_dense")(x)
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    # float32 outputs: under mixed bfloat16 the loss and the probabilities stay exact
    outputs = [_probability(x, config.presence)]
    model = keras.Model(inputs, outputs[0], name="vgg16_breast")
    if lesion == "head":
        activations = model.get_layer(last_activation_layer(batch_norm)).output
        outputs.append(keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32",
                                           name=LESION_OUTPUT)(activations))
        return keras.Model(inputs, outputs, name="vgg16_breast")
    if lesion == "cam":
        return with_lesion_cam(model, batch_norm)
    return model


def _probability(features, presence: bool):
    """The malignancy probability from the head's features: one sigmoid, or with
    `presence` P(malignant | a lesion) x P(a lesion), so that a scan with no lesion can
    be rated low without teaching the first factor that a benign lesion looks like
    empty tissue (docs/results.md, "A lesion-presence factor")."""
    if not presence:
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=PROBABILITY_OUTPUT)(features)
    given_lesion = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=CONDITIONAL_LAYER)(features)
    present = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=PRESENCE_LAYER)(features)
    return keras.layers.Multiply(dtype="float32", name=PROBABILITY_OUTPUT)([given_lesion, present])


def probability_dense(model):
    """The Dense layer whose logit Grad-CAM explains: "malignancy" itself, or in a
    presence model its first factor, P(malignant | a lesion)."""
    names = {layer.name for layer in model.layers}
    return model.get_layer(CONDITIONAL_LAYER if CONDITIONAL_LAYER in names else PROBABILITY_OUTPUT)


def has_presence(model) -> bool:
    return any(layer.name == PRESENCE_LAYER for layer in model.layers)


def with_presence_outputs(model):
    """A presence model with its two factors as outputs too (training only: their own
    losses read them; the checkpoints keep the classifier's single output)."""
    factors = [model.get_layer(CONDITIONAL_LAYER).output, model.get_layer(PRESENCE_LAYER).output]
    return keras.Model(model.inputs, list(model.outputs) + factors, name=model.name)


def last_activation_layer(batch_norm: bool) -> str:
    """The layer whose output Grad-CAM reads (block5_conv3 after its ReLU)."""
    return f"{LAST_CONV_LAYER}_relu" if batch_norm else LAST_CONV_LAYER


class CamLogits(keras.layers.Layer):
    """sum_k g_k A_k with g = W1 (step(h) * w2): the model's Grad-CAM map before its ReLU
    (derivation in export/gradcam.py), computed with the head's live kernels so that a
    loss on it moves the features and the head together. Training only: it owns no
    weights, and checkpoints hold the model without it (`without_lesion_cam`)."""

    def __init__(self, dense, output, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self._layers_used = (dense, output)

    def call(self, inputs):
        from train.tf_setup import tf
        activations, hidden = (tf.cast(t, tf.float32) for t in inputs)
        dense, output = self._layers_used
        weighted = tf.cast(hidden > 0.0, tf.float32) * tf.reshape(tf.cast(output.kernel, tf.float32), [1, -1])
        g = tf.matmul(weighted, tf.cast(dense.kernel, tf.float32), transpose_b=True)
        return tf.reduce_sum(activations * g[:, None, None, :], axis=-1, keepdims=True)


def with_lesion_cam(model, batch_norm: bool):
    """The classifier with a second output: its Grad-CAM logits (N, h, w, 1)."""
    activations = model.get_layer(last_activation_layer(batch_norm)).output
    hidden = model.get_layer("head_dense").output
    cam = CamLogits(model.get_layer("head_dense"), probability_dense(model), name=LESION_OUTPUT)([activations, hidden])
    return keras.Model(model.inputs, [model.outputs[0], cam], name=model.name)


def with_birads_head(model, outputs: int, seed: int):
    """The classifier with one more output: `outputs` sigmoids on the head's features (the
    ordinal BI-RADS head: P(BI-RADS >= k) for each cut k). Training only, like the lesion
    head: `inference_model` and the checkpoints keep the classifier alone."""
    features = model.get_layer("head_dropout").output
    head = keras.layers.Dense(outputs, activation="sigmoid", dtype="float32", name=BIRADS_OUTPUT,
                              kernel_initializer=keras.initializers.GlorotUniform(seed))(features)
    return keras.Model(model.inputs, list(model.outputs) + [head], name=model.name)


def with_pair_output(model, name: str):
    """The model with one more output that repeats the classifier's probability: the
    consistency loss (train.trainer.pair_consistency_loss) reads it. Training only; it
    owns no weights, and checkpoints keep the classifier alone."""
    repeat = keras.layers.Activation("linear", dtype="float32", name=name)(model.outputs[0])
    return keras.Model(model.inputs, list(model.outputs) + [repeat], name=model.name)


def without_lesion_cam(model):
    """What a checkpoint holds: the classifier alone (same layers and weights), without the
    Grad-CAM branch, the lesion head or the BI-RADS head."""
    return keras.Model(model.inputs, model.outputs[0], name=model.name) if len(model.outputs) > 1 else model


def build_model(config: ModelConfig):
    """Return (model, info) where info records the build for run.json. The model trains;
    `inference_model` turns it into the plain float32 classifier that is saved."""
    keras.utils.set_random_seed(config.seed)
    model = _classifier(config, config.batch_norm, config.lesion)
    from_run = config.pretrained and not config.uses_keras_vgg16_weights
    if not config.pretrained or from_run:
        _he_initialise(model, config.seed)
    restarted: list[str] = []
    if from_run:
        copied, restarted = init_from_run(model, Path(config.weights))
    arch = "VGG16" + (f" at {config.width:g}x width" if config.width != 1.0 else "")
    info = {
        "architecture": f"{arch} (include_top=False, {'batch norm after every conv' if config.batch_norm else 'no batch norm'})"
                        " + GAP + Dense(relu) + Dropout + Dense(sigmoid)"
                        + {"none": "", "head": " + auxiliary lesion head (training only)",
                           "cam": " + Grad-CAM lesion loss (training only)"}[config.lesion],
        "weights": config.weights if config.weights in ("imagenet", "none") else f"local file {Path(config.weights).name}",
        "initialisation": ("he_normal conv kernels, zero biases" if not config.pretrained else
                           f"from an earlier run ({copied} layers copied)" if from_run else "pretrained conv base"),
        "batch_norm": config.batch_norm,
        "batch_norm_note": "folded into the convolutions in model.keras" if config.batch_norm else None,
        "batch_norms_restarted": restarted,     # from the earlier run's folded convs
        "width": config.width,
        "filters": config.filters(),
        "lesion_loss": config.lesion,
        "mixstyle": (f"p {config.mixstyle:g} per batch after blocks {', '.join(map(str, MIXSTYLE_BLOCKS))}, "
                     f"alpha {MIXSTYLE_ALPHA:g} (training only)") if config.mixstyle else None,
        "last_conv_layer": LAST_CONV_LAYER,
        "dense_units": config.dense_units,
        "dropout": config.dropout,
    }
    return model, info


def inference_model(model, config: ModelConfig):
    """The plain float32 classifier that is saved as model.keras: batch norms folded into
    the convolutions, the lesion head dropped, every layer float32. Export, Grad-CAM and
    `bcd slim` then see the same plain VGG16 topology whatever the training recipe."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        plain = _classifier(replace(config, mixstyle=0.0), batch_norm=False, lesion="none")
    finally:
        keras.mixed_precision.set_global_policy(policy)
    for layer in plain.layers:
        if isinstance(layer, keras.layers.Conv2D) and config.batch_norm:
            layer.set_weights(_folded(model.get_layer(layer.name), model.get_layer(f"{layer.name}_bn")))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return plain


def _folded(conv, bn) -> list[np.ndarray]:
    """Conv (no bias) followed by inference-mode batch norm, as one conv with a bias."""
    gamma, beta, mean, var = bn.get_weights()
    scale = gamma / np.sqrt(var + bn.epsilon)
    kernel = conv.get_weights()[0] * scale
    return [kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)]


def init_from_run(model, source: Path) -> tuple[int, list[str]]:
    """Initialise `model` from an earlier run's model.keras (or a .keras file): every
    layer whose name and weight shapes fit is copied; into a batch-norm model, a plain
    conv's kernel is copied and its bias becomes the batch norm's offset (the batch norm
    otherwise the identity: train.bn_restart matches it to the data before training).
    Returns the number of layers copied and the names of the batch norms restarted so."""
    path = source / "model.keras" if source.is_dir() else source
    if not path.is_file():
        raise WeightsUnavailable(f"--weights {source}: no model.keras there (a run directory or a .keras file)")
    try:
        donor = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as err:
        raise WeightsUnavailable(f"--weights {source}: cannot load {path.name} ({err.__class__.__name__}: {err})") from None
    donor_layers = {layer.name: layer for layer in donor.layers}
    if CONDITIONAL_LAYER not in donor_layers and has_presence(model):
        # a plain parent's probability becomes the first factor; the presence factor starts afresh
        donor_layers[CONDITIONAL_LAYER] = donor_layers.get(PROBABILITY_OUTPUT)
    copied, fitted, restarted = 0, set(), []
    for layer in model.layers:
        d = donor_layers.get(layer.name)
        if d is None or not layer.weights:
            continue
        theirs, mine = d.get_weights(), layer.get_weights()
        if [w.shape for w in theirs] == [w.shape for w in mine]:
            layer.set_weights(theirs)
            copied += 1
            fitted.add(layer.name)
        elif isinstance(layer, keras.layers.Conv2D) and len(theirs) == 2 and theirs[0].shape == mine[0].shape:
            layer.set_weights([theirs[0]])                  # conv without bias: the bias goes to the batch norm
            bn = model.get_layer(f"{layer.name}_bn")
            gamma, _, mean, var = bn.get_weights()
            bn.set_weights([np.ones_like(gamma), theirs[1], np.zeros_like(mean), np.ones_like(var) - bn.epsilon])
            restarted.append(bn.name)
            copied += 1
            fitted.add(layer.name)
    convs = [layer for layer in model.layers if layer.name.startswith("block") and isinstance(layer, keras.layers.Conv2D)]
    misfits = [layer.name for layer in convs if layer.name not in fitted]
    if misfits:
        raise WeightsUnavailable(f"--weights {source}: its conv base does not fit this architecture ({len(misfits)} "
                                 f"of {len(convs)} conv layers differ, e.g. {misfits[0]}); use the same --width")
    return copied, restarted


def set_trainable_blocks(model, blocks: str) -> None:  # noqa: D401
    """'none': freeze the whole VGG16 base; 'last': only block5 trains; 'all': everything."""
    for layer in model.layers:
        if layer.name.startswith("block"):
            layer.trainable = blocks == "all" or (blocks == "last" and layer.name.startswith("block5"))
