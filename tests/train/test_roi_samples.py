"""Lesion-centred crops for training (issue 21): cut from the full-resolution scan like a
clinician's box, and swapped in for a share of the training images."""
import numpy as np

from runtime.preprocessing import PreprocessSpec, resize
from train.data import make_tf_dataset
from train.roi_samples import RoiCrops, crops_of_image

SPEC = PreprocessSpec(image_size=32)


def _scan_with_lesion():
    image = np.full((300, 400, 3), 90, np.uint8)
    mask = np.zeros((300, 400), np.uint8)
    mask[120:160, 200:260] = 255
    image[mask > 0] = 20                      # a dark lesion
    return image, mask


def test_crops_hold_the_lesion_at_full_resolution():
    image, mask = _scan_with_lesion()
    crops, masks = crops_of_image(image, mask, SPEC, 4, np.random.default_rng(0))
    assert crops.shape == (4, 32, 32, 3) and masks.shape == (4, 32, 32)
    whole_share = (resize(image, SPEC)[..., 0] < 50).mean()
    for crop, m in zip(crops, masks):
        lesion_share = (crop[..., 0] < 50).mean()
        assert lesion_share > 3 * whole_share             # the lesion fills much more of a crop
        assert abs(m.mean() - lesion_share) < 0.1         # the mask was cut the same way
    assert len({c.tobytes() for c in crops}) == 4         # four different boxes


def test_no_lesion_no_crop():
    image, _ = _scan_with_lesion()
    assert crops_of_image(image, np.zeros((300, 400), np.uint8), SPEC, 2, np.random.default_rng(0)) is None


def test_training_batches_swap_in_crops_at_the_share_asked():
    n = 64
    images = np.zeros((n, 32, 32, 3), np.uint8)            # whole images: black
    crops = np.full((n, 2, 32, 32, 3), 200, np.uint8)      # crops: bright
    has = np.arange(n) % 2 == 0                            # only even images have a lesion
    roi = RoiCrops(crops, np.zeros((n, 2, 32, 32), np.uint8), has)
    labels = np.zeros(n, np.int64)
    ds = make_tf_dataset(images, labels, SPEC, n, True, seed=1, roi=roi, roi_share=0.5,
                         augment=_no_augment())
    swapped = []
    for _ in range(10):
        x, _ = next(iter(ds))
        bright = x.numpy().mean(axis=(1, 2, 3)) > 0
        swapped.append(bright.mean())
        # only images with a lesion are ever swapped; order is shuffled, so check by count
        assert bright.sum() <= has.sum()
    assert 0.15 < np.mean(swapped) < 0.35                  # half of the half that has crops
    val = make_tf_dataset(images, labels, SPEC, n, False, roi=roi, roi_share=0.5)
    assert (next(iter(val))[0].numpy().mean(axis=(1, 2, 3)) < 0).all()   # never in validation


def _no_augment():
    from train.augment import AugmentConfig
    return AugmentConfig(flip=False, rotation_degrees=0, zoom=0, brightness=0, contrast=0)
