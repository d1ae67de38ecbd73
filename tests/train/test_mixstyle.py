"""MixStyle (train.model.MixStyle, `bcd train --mixstyle P`): in training, each image's
feature statistics become a mix of its own and another image's; at inference nothing
changes, and the saved model holds no trace of it."""
from __future__ import annotations

import json

import numpy as np
import pytest


def _features(seed: int = 0):
    """(6, 8, 8, 4) maps whose per-image scale and offset differ a lot: six 'styles'."""
    from train.tf_setup import tf
    rng = np.random.default_rng(seed)
    scale = np.arange(1, 7, dtype=np.float32)[:, None, None, None]
    return tf.constant(rng.normal(size=(6, 8, 8, 4)).astype(np.float32) * scale + 10 * scale)


def test_inference_and_probability_zero_leave_the_features_alone():
    from train.model import MixStyle
    f = _features()
    np.testing.assert_array_equal(MixStyle(1.0)(f, training=False).numpy(), f.numpy())
    np.testing.assert_array_equal(MixStyle(0.0)(f, training=True).numpy(), f.numpy())


def test_training_mixes_the_statistics_and_keeps_the_content():
    from train.model import MixStyle
    f = _features().numpy()
    out = MixStyle(1.0, alpha=0.5)(f, training=True).numpy()
    mu, sd = f.mean(axis=(1, 2)), f.std(axis=(1, 2))
    mu_out, sd_out = out.mean(axis=(1, 2)), out.std(axis=(1, 2))
    # every new mean and spread lies between the batch's own (a convex mix of two of them) ...
    assert np.all(mu_out >= mu.min(axis=0) - 1e-3) and np.all(mu_out <= mu.max(axis=0) + 1e-3)
    assert np.all(sd_out >= sd.min(axis=0) - 1e-3) and np.all(sd_out <= sd.max(axis=0) + 1e-3)
    # ... some images took another's style ...
    assert np.abs(mu_out - mu).max() > 5.0
    # ... and each map is its own pattern, standardised the same way (content unchanged)
    z, z_out = (f - mu[:, None, None]) / sd[:, None, None], (out - mu_out[:, None, None]) / sd_out[:, None, None]
    np.testing.assert_allclose(z_out, z, atol=1e-3)


def test_the_model_carries_it_in_training_only():
    from train.model import ModelConfig, build_model, inference_model
    config = ModelConfig(image_size=32, width=0.25, batch_norm=True, mixstyle=0.5)
    model, info = build_model(config)
    assert [layer.name for layer in model.layers if "mixstyle" in layer.name] == \
        ["block1_mixstyle", "block2_mixstyle", "block3_mixstyle"]
    assert info["mixstyle"].startswith("p 0.5 per batch after blocks 1, 2, 3")
    plain = inference_model(model, config)
    assert not any("mixstyle" in layer.name for layer in plain.layers)
    x = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32) * 40
    np.testing.assert_allclose(plain(x).numpy(), model(x, training=False).numpy(), atol=1e-4)


def test_settings_are_checked_and_reach_the_config():
    from bcd.cli import build_parser, train_config
    from train.config import TrainConfig
    from train.model import ModelConfig
    with pytest.raises(ValueError, match="MixStyle"):
        TrainConfig(out="x", mixstyle=1.5)
    with pytest.raises(ValueError, match="own VGG16 topology"):
        ModelConfig(image_size=32, mixstyle=0.5)            # plain full-width VGG16 comes from keras.applications
    with pytest.raises(ValueError, match="own VGG16 topology"):
        TrainConfig(out="x", mixstyle=0.5)                  # refused before any image is read
    assert TrainConfig(out="x", mixstyle=0.5, width=0.5).mixstyle == 0.5
    assert TrainConfig(out="x").mixstyle == 0.0
    args = build_parser().parse_args(["train", "--out", "x", "--arch", "vgg16-bn", "--mixstyle", "0.5"])
    assert train_config(args).mixstyle == 0.5


@pytest.mark.slow
def test_a_tiny_run_trains_with_it_and_saves_the_plain_classifier(tiny_dataset, tmp_path):
    from bcd.cli import main
    from train.tf_setup import keras
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(out), "--image-size", "32", "--epochs", "2",
                 "--arch", "vgg16-bn", "--width", "0.25", "--batch-size", "8", "--mixstyle", "1"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["mixstyle"] == 1.0 and info["model"]["mixstyle"].startswith("p 1 per batch")
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    model = keras.models.load_model(out / "model.keras", compile=False)
    assert not any("mixstyle" in layer.name for layer in model.layers)
