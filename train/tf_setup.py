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

__all__ = ["tf", "keras"]
