"""Consistency pairs (issue 20): every training batch also holds its images as a
scanner's screen shows them, and a loss pays for any change in the probability."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.preprocessing import PreprocessSpec
from train.augment import ScreenView, build_screen_view


def _batch(n=6, size=64):
    rng = np.random.default_rng(0)
    images = rng.uniform(40, 200, (n, size, size, 3)).astype(np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    masks[:, 24:40, 20:44] = 1
    return images, masks


def test_a_fan_only_view_blacks_out_the_fan_and_keeps_the_rest():
    images, masks = _batch()
    screen = build_screen_view(ScreenView(fan=1.0, calipers=0.0, box_jitter=0.0), 64, seed=0)
    out, out_masks = (np.asarray(t) for t in screen(images, masks))
    fan = out[..., 0] > 0
    assert (~fan[:, 0, 0]).all() and fan[:, -1, 32].all()        # top corners gone, the deep middle kept
    np.testing.assert_allclose(out[fan], images[fan], atol=1e-4)  # inside the fan: the same pixels
    assert (out_masks[..., 0] <= masks[..., 0]).all()             # the mask is cut by the fan, never grown


def test_the_box_jitter_moves_image_and_mask_together():
    images, masks = _batch()
    images[:] = 0
    images[masks[..., 0] > 0] = 255                               # the lesion is the only bright thing
    screen = build_screen_view(ScreenView(fan=0.0, calipers=0.0, box_jitter=0.1), 64, seed=0)
    out, out_masks = (np.asarray(t) for t in screen(images, masks))
    assert out.shape == images.shape and set(np.unique(out_masks)) <= {0.0, 1.0}
    assert not np.allclose(out, images)                           # the box moved
    bright = out[..., 0] > 127
    overlap = (bright & (out_masks[..., 0] > 0)).sum() / np.maximum((bright | (out_masks[..., 0] > 0)).sum(), 1)
    assert overlap > 0.8


def test_training_batches_double_with_the_screen_view_and_validation_stays_plain():
    from train.data import PAIR_OUTPUT, LesionTargets, PairViews, make_tf_dataset
    images = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 1, 0])
    weights = {0: 0.5, 1: 2.0}
    lesion = LesionTargets(np.zeros((6, 32, 32), np.uint8), np.ones(6, bool), weights, per_sample_weight=True)
    pair = PairViews(ScreenView(), weights)
    spec = PreprocessSpec(image_size=32)
    x, targets, sample_weights = next(iter(make_tf_dataset(images, labels, spec, 6, True, lesion=lesion, pair=pair)))
    assert x.shape[0] == 12
    y = targets["malignancy"].numpy()
    np.testing.assert_array_equal(y[:6], y[6:])                  # the second half repeats the first's images
    np.testing.assert_array_equal(targets[PAIR_OUTPUT].numpy(), np.zeros(12))
    np.testing.assert_array_equal(sample_weights["malignancy"].numpy(), np.where(y > 0.5, 2.0, 0.5))
    _, val_targets, _ = next(iter(make_tf_dataset(images, labels, spec, 6, False, lesion=lesion, pair=pair)))
    assert PAIR_OUTPUT not in val_targets and val_targets["malignancy"].shape[0] == 6


def test_pair_loss_is_zero_for_agreeing_views_and_teaches_only_the_screen_view():
    from train.tf_setup import tf
    from train.trainer import pair_consistency_loss
    same = tf.constant([[0.2], [0.9], [0.2], [0.9]])
    np.testing.assert_allclose(pair_consistency_loss(None, same).numpy(), 0.0, atol=1e-6)
    p = tf.Variable([[0.2], [0.9], [0.6], [0.5]])
    with tf.GradientTape() as tape:
        loss = pair_consistency_loss(None, p)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, p).numpy()[:, 0]
    assert loss.numpy()[0] == 0 and loss.numpy()[1] == 0 and (loss.numpy()[2:] > 0).all()
    assert grad[0] == 0 and grad[1] == 0                           # the plain view is held fixed
    assert grad[2] > 0 and grad[3] < 0                             # the screen views move toward 0.2 and 0.9


def test_negative_consistency_weight_is_refused():
    from train.config import TrainConfig
    with pytest.raises(ValueError, match="consistency"):
        TrainConfig(out="x", consistency=-1)
    with pytest.raises(ValueError, match="pair calipers"):
        TrainConfig(out="x", pair_calipers="red")


def test_new_runs_pair_white_calipers_and_older_runs_load_as_any():
    from train.config import TrainConfig
    new = TrainConfig(out="x")
    assert new.pair_calipers == "white"
    older = {k: v for k, v in new.to_dict().items() if k != "pair_calipers"}     # run.json from before the option
    assert TrainConfig.from_dict(older).pair_calipers == "any"


@pytest.mark.slow
def test_tiny_run_with_consistency_records_its_loss_and_saves_the_classifier_alone(tmp_path):
    from bcd.cli import main
    from train.tf_setup import keras
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--image-size", "32", "--epochs", "2", "--arch", "vgg16-bn",
                 "--width", "0.25", "--batch-size", "8", "--augment", "scanner", "--consistency", "1",
                 "--lesion-weight", "1", "--pair-calipers", "white"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["consistency"] == 1 and "KL loss weight 1" in info["model"]["consistency"]
    assert info["config"]["pair_calipers"] == "white" and "white_calipers_only=True" in info["model"]["consistency"]
    history = json.loads((out / "history.json").read_text())
    assert len(history["pair_loss"]) == 2 and all(np.isfinite(history["pair_loss"]))
    model = keras.models.load_model(out / "model.keras", compile=False)
    assert len(model.outputs) == 1 and "pair" not in [layer.name for layer in model.layers]
    # slimming keeps the parent's pairs: the thinner model learns the same invariance
    slim = tmp_path / "slim"
    assert main(["slim", str(out), "--ratio", "0.5", "--epochs", "1", "--out", str(slim)]) == 0
    assert "white_calipers_only=True" in json.loads((slim / "run.json").read_text())["model"]["consistency"]
    slim_history = json.loads((slim / "history.json").read_text())
    assert slim_history["pair_loss"] and np.isfinite(slim_history["pair_loss"][-1])


def test_lesion_crops_get_no_fan_in_the_screen_view():
    images, masks = _batch(4)
    screen = build_screen_view(ScreenView(fan=1.0, calipers=0.0, box_jitter=0.0), 64, seed=0)
    whole = np.array([True, False, True, False])
    out, _ = (np.asarray(t) for t in screen(images, masks, whole=whole))
    assert (out[whole, 0, 0] == 0).all()                          # whole scans: the fan's corner is black
    np.testing.assert_allclose(out[~whole], images[~whole], atol=1e-4)   # crops: untouched
