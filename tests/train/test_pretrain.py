"""`bcd pretrain`: contrastive pretraining of the conv base, and fine-tuning from it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bcd.cli import main


def test_the_loss_is_low_when_each_scan_s_views_agree_and_high_when_they_do_not():
    from train.pretrain import nt_xent
    rng = np.random.default_rng(0)
    scans = rng.normal(size=(8, 16)).astype(np.float32)
    agree = np.concatenate([scans, scans + 0.01 * rng.normal(size=scans.shape)]).astype(np.float32)
    shuffled = np.concatenate([scans, scans[::-1]]).astype(np.float32)   # every second view belongs to another scan
    low, high = float(nt_xent(agree, 0.2)), float(nt_xent(shuffled, 0.2))
    assert low < 0.5 * high
    # 16 rows each against 15 others: random guessing costs log(15)
    assert float(nt_xent(rng.normal(size=(16, 16)).astype(np.float32), 1e6)) == pytest.approx(np.log(15), abs=1e-3)


def test_crops_keep_image_and_mask_together():
    from train.pretrain import random_crops
    from train.tf_setup import tf
    size = 32
    mask = np.zeros((4, size, size, 1), np.float32)
    mask[:, 8:24, 10:20] = 1.0
    images = np.repeat(mask * 255.0, 3, axis=-1)          # the image is its own mask, drawn white
    tf.random.set_seed(1)
    x, m = random_crops(tf.constant(images), tf.constant(mask), 0.35)
    assert x.shape == (4, size, size, 3) and m.shape == (4, size, size, 1)
    assert set(np.unique(m.numpy())) <= {0.0, 1.0}
    white = x.numpy()[..., 0] >= 127.5
    assert (white == (m.numpy()[..., 0] == 1.0)).mean() > 0.98
    assert not np.allclose(x.numpy(), images)              # the views are crops, not the scans


def test_the_knn_monitor_tells_separated_features_from_noise():
    from train.pretrain import knn_auc
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    apart = rng.normal(size=(120, 8)) + (2 * labels[:, None] - 1) * 4.0     # two directions: cosine tells them apart
    assert knn_auc(apart, labels) == pytest.approx(1.0)
    assert abs(knn_auc(rng.normal(size=(120, 8)), labels) - 0.5) < 0.15


def test_bad_settings_are_refused_before_any_image_is_read(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "p"), "--batch-size", "1"]) == 2
    assert "2 scans per batch" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "p"), "--temperature", "0"]) == 2
    assert not (tmp_path / "p" / "run.json").exists()


@pytest.mark.slow
def test_pretrain_then_fine_tune_from_it(tmp_path, capsys):
    """The synthetic set, tiny model: the pretrained conv base moves away from its
    initialisation, a fine-tuned run starts from it and inherits its input settings,
    --resume continues, and evaluate/export say what such a run is for."""
    from train.tf_setup import keras
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    small = ["--image-size", "32", "--width", "0.125"]
    assert main(["pretrain", "--out", str(pre), *small, "--epochs", "1", "--batch-size", "8",
                 "--thin-marks", "open"]) == 0
    assert main(["pretrain", "--out", str(pre), *small, "--epochs", "2", "--batch-size", "8",
                 "--thin-marks", "open", "--resume"]) == 0
    info = json.loads((pre / "run.json").read_text())
    assert info["kind"] == "pretrain" and info["status"] == "complete" and info["epochs_trained"] == 2
    assert info["config"]["width"] == 0.125 and "epochs" not in info["config"]   # bcd train's schedule: not used
    history = json.loads((pre / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(0.0 <= a <= 1.0 for a in history["knn_auc"])
    assert (pre / "plots" / "pretrain_curves.png").stat().st_size > 1000
    capsys.readouterr()

    for refused in (["evaluate", str(pre)], ["export", str(pre), "--out", str(tmp_path / "x")],
                    ["slim", str(pre), "--out", str(tmp_path / "s")]):
        assert main(refused) == 2
        assert "pretraining run" in capsys.readouterr().err

    assert main(["train", "--out", str(fine), "--weights", str(pre), "--arch", "vgg16-bn", *small,
                 "--epochs", "1", "--head-epochs", "0"]) == 0
    fine_info = json.loads((fine / "run.json").read_text())
    assert fine_info["model"]["initialisation"].startswith("from an earlier run")
    assert fine_info["config"]["thin_marks"] == "open"        # inherited from the pretraining run

    # the pretrained conv base is not the untrained one the same seed builds
    from train.model import ModelConfig, build_model, inference_model
    config = ModelConfig(32, "none", batch_norm=True, width=0.125)
    untrained = inference_model(build_model(config)[0], config)
    pretrained = keras.models.load_model(pre / "model.keras", compile=False)
    kernel = lambda m: m.get_layer("block1_conv1").get_weights()[0]   # noqa: E731
    assert not np.allclose(kernel(untrained), kernel(pretrained), atol=1e-4)
