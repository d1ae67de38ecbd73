"""Grad-CAM computed inside the exported graph, so the runtime needs no TensorFlow and
no gradients: every float/INT8 variant outputs the map next to the probability.

Derivation. The head is GAP -> Dense(relu) "head_dense" -> Dropout -> Dense(sigmoid)
"malignancy". Let A = block5_conv3 activations (N, h, w, C), P = block5_pool(A)
(N, h', w', C), u = GAP(P) (N, C), z1 = u W1 + b1 (W1: C x 256, the head_dense kernel),
logit = relu(z1) . w2 + b2 (w2: the malignancy kernel, 256 values; dropout is the
identity at inference). Grad-CAM uses the gradient of the LOGIT, not of the sigmoid.

  d logit / d u_k       = sum_j W1[k, j] step(z1_j) w2_j =: g_k        (same for every p, q)
  d logit / d P_k(p, q) = g_k / (h' w')                                 (GAP spreads it evenly)
  d logit / d A_k(i, j) = g_k / (h' w')  if (i, j) is the maximum of its 2x2 pooling
                          window in channel k, else 0                   (max-pool routes it)

The Grad-CAM channel weight is the spatial mean of that gradient over the h x w map:
every one of the h' w' windows contributes exactly one g_k / (h' w'), so

  alpha_k = (1 / (h w)) * h' w' * g_k / (h' w') = g_k / (h w),

a positive multiple of g. Hence Grad-CAM = relu(sum_k alpha_k A_k) = relu(sum_k g_k A_k) / (h w),
and the graph computes cam = relu(sum_k g_k A_k), unnormalised (the runtime normalises each
map to 0..1, which removes the constant anyway). step(z1) is read off head_dense's output:
relu(z1) > 0 exactly when z1 > 0.

(Summing d logit / d A_k over the map gives g_k whatever h and w are, since every pooling
window passes on exactly one g_k / (h' w'); a row or column that an odd size leaves out of
the pooling gets 0. So alpha_k = g_k / (h w) in every case.)
"""
from __future__ import annotations

import numpy as np

from train.model import LAST_CONV_LAYER, probability_dense
from train.tf_setup import keras, tf

HEAD_DENSE = "head_dense"
HEAD_DROPOUT = "head_dropout"
OUTPUT_LAYER = "malignancy"
CAM_OUTPUT = "cam"
PROB_OUTPUT = "malignancy"


class GradCamMap(keras.layers.Layer):
    """relu(sum_k g_k A_k) with g = W1 (step(h) * w2), h = head_dense's relu output.

    Inputs: [A (N, h, w, C), head_dense output (N, units)]. The two kernels are taken
    from the model when the layer is built and stored as constants of this layer (the
    exported graph is frozen anyway)."""

    def __init__(self, dense_kernel, output_kernel, **kwargs):
        super().__init__(**kwargs)
        self.dense_kernel = np.asarray(dense_kernel, dtype=np.float32)             # (C, units)
        self.output_kernel = np.asarray(output_kernel, dtype=np.float32).reshape(-1)  # (units,)
        if self.dense_kernel.shape[1] != self.output_kernel.shape[0]:
            raise ValueError("head_dense and malignancy kernels do not fit together")

    def call(self, inputs):
        activations, hidden = inputs
        active = tf.cast(hidden > 0.0, tf.float32)                                  # step(z1)
        weighted = active * tf.constant(self.output_kernel)                        # (N, units)
        g = tf.matmul(weighted, tf.constant(self.dense_kernel), transpose_b=True)  # (N, C)
        # expand_dims rather than g[:, None, None, :]: tf2onnx turns the strided slice into
        # a Slice whose batch size ORT's symbolic shape inference cannot resolve, and then
        # quant_pre_process stops with "Incomplete symbolic shape inference".
        g = tf.expand_dims(tf.expand_dims(g, 1), 1)                                # (N, 1, 1, C)
        cam = tf.reduce_sum(activations * g, axis=-1)
        return tf.nn.relu(cam)

    def get_config(self):
        config = super().get_config()
        config.update(dense_kernel=self.dense_kernel.tolist(), output_kernel=self.output_kernel.tolist())
        return config


def with_cam_output(model, conv_layer: str = LAST_CONV_LAYER):
    """The same network with two outputs: [probability (N, 1), cam (N, h, w)].

    Shares the layers (and weights) of `model`; the probability output is the model's own.
    """
    try:
        activations = model.get_layer(conv_layer).output
        hidden = model.get_layer(HEAD_DENSE).output
        dense_kernel = model.get_layer(HEAD_DENSE).kernel
        output_kernel = probability_dense(model).kernel     # in a presence model: P(malignant | a lesion)
    except ValueError as err:
        raise ValueError(f"the model does not have the expected layers for in-graph Grad-CAM: {err}") from None
    cam = GradCamMap(keras.backend.get_value(dense_kernel), keras.backend.get_value(output_kernel),
                     name=CAM_OUTPUT)([activations, hidden])
    return keras.Model(model.inputs, [model.output, cam], name=f"{model.name}_with_cam")


def gradcam_reference(model, images: np.ndarray, conv_layer: str = LAST_CONV_LAYER) -> np.ndarray:
    """Textbook Grad-CAM with a GradientTape (for tests and checks), independent of the
    derivation above: channel weights are the spatial mean of d logit / d A over the conv
    map, cam = relu(sum_k alpha_k A_k). Returns (N, h, w)."""
    names = [layer.name for layer in model.layers]
    start, stop = names.index(conv_layer) + 1, names.index(HEAD_DROPOUT) + 1
    conv_model = keras.Model(model.inputs, model.get_layer(conv_layer).output)
    output = probability_dense(model)
    with tf.GradientTape() as tape:
        activations = conv_model(tf.convert_to_tensor(images, tf.float32), training=False)
        tape.watch(activations)
        x = activations
        for layer in model.layers[start:stop]:       # pooling, GAP, head_dense, dropout
            x = layer(x, training=False)
        logit = tf.matmul(x, output.kernel) + output.bias      # the malignancy layer without its sigmoid
    grads = tape.gradient(logit, activations)
    alpha = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(activations * alpha[:, tf.newaxis, tf.newaxis, :], axis=-1))
    return cam.numpy()
