"""Import TensorFlow and tf-keras the one way this project does.

tensorflow-model-optimization only works with Keras 2 (tf-keras), and mixing Keras 3
and tf-keras objects in one process gives confusing errors, so every module that needs
TensorFlow imports `tf` and `keras` from here. TF_USE_LEGACY_KERAS must be set before
TensorFlow is first imported.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ info banners

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras", "normalize_tensor"]


def normalize_tensor(x, spec):
    """runtime.preprocessing.normalize on a float32 tensor inside tf.data. A grey map other
    than "keep" is NumPy code (the one the runtime runs), so it is called through
    tf.numpy_function: training and run time compute the same input."""
    from runtime.preprocessing import normalize
    if spec.grey_map == "keep":
        return normalize(x, spec)
    out = tf.numpy_function(lambda a: normalize(a, spec).astype("float32"), [x], tf.float32, stateful=False)
    out.set_shape(x.shape)
    return out
