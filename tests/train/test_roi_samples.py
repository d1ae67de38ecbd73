"""Lesion-centred crops for training (issue 21): cut from the full-resolution scan like a
clinician's box, and swapped in for a share of the training images."""
import numpy as np
import pytest

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


# --- lesion-free crops (TrainConfig.lesion_free_share) ---

def test_lesion_free_boxes_stay_clear_of_the_lesion():
    from runtime.lesion_box import mask_box
    from train.roi_samples import FREE_MIN_SIDE, lesion_free_box
    _, mask = _scan_with_lesion()
    lesion = mask_box(mask > 0)
    rng = np.random.default_rng(3)
    boxes = [lesion_free_box(lesion, 400, 300, rng) for _ in range(200)]
    for box in boxes:
        assert box.x >= 0 and box.y >= 0 and box.right <= 400 and box.bottom <= 300
        assert box.width >= FREE_MIN_SIDE * 400 - 1 and box.height >= FREE_MIN_SIDE * 300 - 1
        assert not box.crop(mask).any()
        # the margin: nothing within 4 px of the lesion's box
        grown = np.zeros_like(mask)
        grown[lesion.y - 4:lesion.bottom + 4, lesion.x - 4:lesion.right + 4] = 1
        assert not box.crop(grown).any()
    # all four bands beside this lesion are wide enough, and each is used
    sides = {("left" if b.right <= lesion.x else "right" if b.x >= lesion.right else
              "above" if b.bottom <= lesion.y else "below") for b in boxes}
    assert sides == {"left", "right", "above", "below"}


def test_a_lesion_that_fills_the_scan_leaves_no_lesion_free_crop():
    image, _ = _scan_with_lesion()
    mask = np.zeros((300, 400), np.uint8)
    mask[40:260, 50:350] = 255
    assert crops_of_image(image, mask, SPEC, 2, np.random.default_rng(0), kind="free") is None


def test_lesion_free_crops_hold_tissue_only():
    image, mask = _scan_with_lesion()
    crops, masks = crops_of_image(image, mask, SPEC, 4, np.random.default_rng(1), kind="free")
    assert crops.shape == (4, 32, 32, 3)
    assert (crops == 90).all() and not masks.any()          # the plain tissue, none of the dark lesion


def test_training_batches_show_lesion_free_crops_as_benign():
    from train.data import BiradsTargets, LesionTargets
    n = 64
    images = np.zeros((n, 32, 32, 3), np.uint8)            # whole images: black
    crops = np.full((n, 2, 32, 32, 3), 200, np.uint8)      # lesion-free crops: bright
    has = np.arange(n) % 2 == 0                            # only even images have a lesion
    free = RoiCrops(crops, np.zeros((n, 2, 32, 32), np.uint8), has)
    labels = np.ones(n, np.int64)                          # every image malignant
    masks = np.ones((n, 32, 32), np.uint8)
    weights = {0: 1.0, 1: 1.0}
    lesion = LesionTargets(masks, np.ones(n, bool), weights, per_sample_weight=True)
    birads = BiradsTargets(np.full(n, 5), weights)
    ds = make_tf_dataset(images, labels, SPEC, n, True, seed=2, augment=_no_augment(), lesion=lesion,
                         birads=birads, free=free, free_share=0.5)
    shares = []
    for _ in range(10):
        x, targets, w = next(iter(ds))
        crop = x.numpy().mean(axis=(1, 2, 3)) > 0
        y = targets["malignancy"].numpy()
        assert (y[crop] == 0).all() and (y[~crop] == 1).all()         # a crop is benign, the rest keep their label
        assert (targets["lesion"].numpy()[crop] == 0).all()           # with an empty lesion map
        assert (targets["lesion"].numpy()[~crop] > 0).all()
        assert (w["birads"].numpy()[crop] == 0).all() and (w["birads"].numpy()[~crop] == 1).all()
        assert crop.sum() <= has.sum()
        shares.append(crop.mean())
    assert 0.15 < np.mean(shares) < 0.35                   # half of the half that has crops
    val = make_tf_dataset(images, labels, SPEC, n, False, lesion=lesion, free=free, free_share=0.5)
    assert (next(iter(val))[1]["malignancy"].numpy() == 1).all()     # never in validation


def test_lesion_crops_and_lesion_free_crops_never_take_the_same_image():
    n = 64
    images = np.zeros((n, 32, 32, 3), np.uint8)
    roi = RoiCrops(np.full((n, 2, 32, 32, 3), 100, np.uint8), np.zeros((n, 2, 32, 32), np.uint8), np.ones(n, bool))
    free = RoiCrops(np.full((n, 2, 32, 32, 3), 250, np.uint8), np.zeros((n, 2, 32, 32), np.uint8), np.ones(n, bool))
    ds = make_tf_dataset(images, np.ones(n, np.int64), SPEC, n, True, seed=4, augment=_no_augment(),
                         roi=roi, roi_share=0.5, free=free, free_share=1.0)
    x, y = next(iter(ds))
    brightness = x.numpy()[:, 0, 0, 0] + SPEC.mean[0]                  # undo the mean (std 1)
    lesion_crop, free_crop = np.isclose(brightness, 100), np.isclose(brightness, 250)
    assert (lesion_crop | free_crop).all()                 # share 1.0: every image not shown as a lesion crop
    assert 0.3 < lesion_crop.mean() < 0.7
    assert (y.numpy()[lesion_crop] == 1).all() and (y.numpy()[free_crop] == 0).all()


def test_lesion_free_share_option_reaches_the_config_and_bad_shares_are_refused():
    from bcd.cli import build_parser, train_config
    from train.config import TrainConfig
    args = build_parser().parse_args(["train", "--out", "x", "--lesion-free-share", "0.25"])
    assert train_config(args).lesion_free_share == 0.25
    assert TrainConfig(out="x").lesion_free_share == 0.0            # off by default, as in runs from before it
    with pytest.raises(ValueError, match="lesion-free"):
        TrainConfig(out="x", lesion_free_share=1.5)


# --- scans with the lesion erased (TrainConfig.lesion_free_kind "erased") ---

def _banded_scan_with_lesion(seed=0):
    """Tissue whose brightness changes with depth (rows) and not across, with speckle, and
    a dark lesion in it."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(60, 200, 300)[:, None]
    grey = np.clip(rows + rng.normal(0, 12, (300, 400)), 0, 255)
    mask = np.zeros((300, 400), np.uint8)
    mask[110:170, 150:230] = 255
    grey[mask > 0] = 15
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2), mask


def test_erasing_fills_the_lesion_with_the_tissue_at_its_depth():
    from train.roi_samples import erase_lesion
    image, mask = _banded_scan_with_lesion()
    erased, = erase_lesion(image, mask, np.random.default_rng(0))
    assert erased.shape == image.shape and erased.dtype == np.uint8
    lesion = erased[110:170, 150:230, 0].astype(float)
    tissue = image[110:170, :100, 0].astype(float)                 # the same rows, clear of the lesion
    assert abs(lesion.mean() - tissue.mean()) < 8                    # no dark lesion left
    assert abs(lesion.mean(axis=1) - tissue.mean(axis=1)).max() < 12   # each depth its own brightness
    assert lesion.std() > 0.6 * tissue.std()                         # speckle, not a smooth smear
    assert (erased[:, :100] == image[:, :100]).all() and (erased[:60] == image[:60]).all()   # the rest untouched


def test_a_lesion_with_no_tissue_beside_it_is_not_erased():
    from train.roi_samples import erase_lesion
    image, _ = _banded_scan_with_lesion()
    mask = np.zeros((300, 400), np.uint8)
    mask[100:180, :] = 255                                           # across the whole scan
    assert erase_lesion(image, mask, np.random.default_rng(0)) is None
    assert crops_of_image(image, mask, SPEC, 2, np.random.default_rng(0), kind="erased") is None


def test_erased_samples_are_whole_scans_with_an_empty_mask():
    image, mask = _banded_scan_with_lesion(1)
    scans, masks = crops_of_image(image, mask, SPEC, 2, np.random.default_rng(2), kind="erased")
    assert scans.shape == (2, 32, 32, 3) and not masks.any()
    whole = resize(image, SPEC)
    assert np.abs(scans[0].astype(int) - whole).mean() < np.abs(scans[0].astype(int) - 128).mean()   # the scan, not a crop
    assert scans[0, 12:18, 12:18].mean() > 2 * whole[12:18, 12:18].mean()       # where the dark lesion was


def test_lesion_free_kind_option_reaches_the_config_and_bad_kinds_are_refused():
    from bcd.cli import build_parser, train_config
    from train.config import TrainConfig
    args = build_parser().parse_args(["train", "--out", "x", "--lesion-free-share", "0.25",
                                      "--lesion-free-kind", "erased"])
    assert train_config(args).lesion_free_kind == "erased"
    assert TrainConfig(out="x").lesion_free_kind == "crop"          # as runs from before it did
    from train.config import LESION_FREE_KINDS
    for kind in LESION_FREE_KINDS:                                   # the CLI offers every kind the config takes
        assert train_config(build_parser().parse_args(["train", "--out", "x", "--lesion-free-kind", kind])
                            ).lesion_free_kind == kind
    with pytest.raises(ValueError, match="lesion-free kind"):
        TrainConfig(out="x", lesion_free_kind="blur")


@pytest.mark.slow
@pytest.mark.parametrize("kind, made", [("crop", "lesion-free crops"), ("erased", "scans with the lesion erased"),
                                        ("erased-benign", "of them, benign")])
def test_tiny_run_with_lesion_free_samples(tmp_path, kind, made):
    """A CSV source of 16 generated scans with a lesion mask each: the run makes two
    lesion-free samples per scan (crops beside the lesion, or the scan with it erased),
    trains on them and records the share and the kind."""
    import csv
    import json
    import re

    import cv2

    from bcd.cli import main
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        image = rng.integers(60, 140, (120, 160), dtype=np.uint8)
        mask = np.zeros((120, 160), np.uint8)
        x, y = int(rng.integers(10, 110)), int(rng.integers(10, 70))
        mask[y:y + 30, x:x + 40] = 255
        image[mask > 0] //= 4 if i % 2 else 2
        cv2.imwrite(str(tmp_path / f"im{i}.png"), image)
        cv2.imwrite(str(tmp_path / f"im{i}_lesion.png"), mask)
        rows.append([f"im{i}", "malignant" if i % 2 else "benign", f"P{i}"])
    with open(tmp_path / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows([["ID", "Pathology", "Case"], *rows])
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "index.csv"),
                 "--csv-map", "path={ID}.png,label=Pathology,group=Case,mask={ID}_lesion.png",
                 "--out", str(out), "--image-size", "32", "--epochs", "1", "--arch", "vgg16-bn", "--width", "0.25",
                 "--batch-size", "8", "--lesion-weight", "1", "--roi-share", "0.3", "--lesion-free-share", "0.5",
                 "--lesion-free-kind", kind, "--scan-region", "off"]) == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["lesion_free_share"] == 0.5 and config["lesion_free_kind"] == kind
    found = re.search(made + r": (\d+) images", (out / "train.log").read_text())
    expected = (5, 8) if kind == "erased-benign" else (12, 16)       # half of them benign
    assert found and expected[0] <= int(found.group(1)) <= expected[1]   # a lesion with no room beside it gives none
