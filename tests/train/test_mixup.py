"""mixup (`bcd train --mixup S`, AugmentConfig.mixup): a share of each training batch is
blended with other images of the batch, and the labels, lesion maps and BI-RADS targets
with the same weights; validation batches never are."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.preprocessing import PreprocessSpec


def _batch(n=16, size=32):
    """Each image a flat grey level that encodes its index, so a blend can be read back."""
    images = np.stack([np.full((size, size, 3), 10 * i, np.uint8) for i in range(n)])
    labels = np.array([i % 2 for i in range(n)])
    masks = np.zeros((n, size, size), np.uint8)
    masks[labels == 1, :16, :16] = 1             # malignant images: a lesion in the top-left cell
    return images, labels, masks


def _first_batch(share, training=True, **kw):
    from train.augment import AugmentConfig
    from train.data import BiradsTargets, LesionTargets, make_tf_dataset
    images, labels, masks = _batch()
    aug = AugmentConfig(flip=False, rotation_degrees=0, zoom=0, brightness=0, contrast=0, mixup=share)
    weights = {0: 0.5, 1: 2.0}
    ds = make_tf_dataset(images, labels, PreprocessSpec(image_size=32), 16, training, augment=aug,
                         lesion=LesionTargets(masks, np.ones(16, bool), weights),
                         birads=BiradsTargets(np.where(labels == 1, 5, 2), weights), **kw)
    x, targets, w = next(iter(ds))
    return x.numpy() + np.array(PreprocessSpec().mean, np.float32), {k: v.numpy() for k, v in targets.items()}, \
        {k: v.numpy() for k, v in w.items()}


def test_blended_images_carry_blended_targets():
    x, targets, weights = _first_batch(1.0)
    grey = x[:, 0, 0, 0]                                 # each image is still flat: one grey level
    y = targets["malignancy"]
    assert not np.allclose(grey % 10, 0)                 # images were blended ...
    # ... and an image's label is the share of malignant (odd-index) grey in it: grey = lam*10i + (1-lam)*10j
    for g, label, lesion, bi in zip(grey, y, targets["lesion"], targets["birads"]):
        assert 0.0 <= label <= 1.0
        assert lesion[0, 0, 0] == pytest.approx(label, abs=1e-5)      # the lesion cell, as much as the label
        np.testing.assert_allclose(bi, label, atol=1e-5)                # BI-RADS 2 (benign) or 5 (malignant)
    assert ((y > 0) & (y < 1)).any()
    # the folded weight keeps each image at least half itself: its class weight is its own
    np.testing.assert_array_equal(weights["malignancy"] == 2.0, y > 0.5)


def test_share_zero_and_validation_leave_the_batch_alone():
    for x, targets, _ in (_first_batch(0.0), _first_batch(1.0, training=False)):
        np.testing.assert_allclose(np.sort(x[:, 0, 0, 0]), 10 * np.arange(16), atol=1e-3)
        assert set(np.unique(targets["malignancy"])) == {0.0, 1.0}


def test_the_option_reaches_the_augmentation_and_is_checked():
    from bcd.cli import build_parser, train_config
    from train.augment import AugmentConfig
    from train.config import TrainConfig
    args = build_parser().parse_args(["train", "--out", "x", "--augment", "scanner", "--mixup", "0.5"])
    augment = train_config(args).augment
    assert augment.mixup == 0.5 and augment.fan == AugmentConfig.preset("scanner").fan
    assert train_config(build_parser().parse_args(["train", "--out", "x"])).augment.mixup == 0.0
    with pytest.raises(ValueError, match="mixup"):
        TrainConfig(out="x", augment=AugmentConfig(mixup=2.0))


def test_screen_views_blend_as_their_plain_views():
    from train.augment import ScreenView
    from train.data import PairViews
    still = ScreenView(fan=0.0, calipers=0.0, box_jitter=0.0)     # a screen view that changes nothing
    x, targets, weights = _first_batch(1.0, pair=PairViews(still, {0: 0.5, 1: 2.0}))
    assert len(x) == 32
    np.testing.assert_allclose(x[16:], x[:16], atol=1e-4)
    for name in ("malignancy", "lesion", "birads"):
        np.testing.assert_allclose(targets[name][16:], targets[name][:16], atol=1e-5)
        np.testing.assert_allclose(weights[name][16:], weights[name][:16])
