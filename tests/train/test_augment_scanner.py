"""The scanner augmentation (issue 20): calipers drawn on the lesion and probe fans, in
the training graph."""
from __future__ import annotations

import numpy as np

from train.augment import AugmentConfig, build_augment, draw_calipers_batch, fan_bank, fan_mask


def test_scanner_preset_is_ultrasound_plus_calipers_and_fans():
    ultrasound, scanner = AugmentConfig.preset("ultrasound"), AugmentConfig.preset("scanner")
    assert (ultrasound.calipers, ultrasound.fan) == (0.0, 0.0)
    assert scanner.calipers > 0 and scanner.fan > 0
    assert scanner.marks == ultrasound.marks and scanner.speckle == ultrasound.speckle


def test_fan_bank_holds_curved_and_sector_fans():
    bank = fan_bank(64, n=8, seed=1)
    assert bank.shape == (8, 64, 64) and set(np.unique(bank)) == {0.0, 1.0}
    assert (bank[:, -1, 32] == 1).all()                    # the fan's deep middle is inside
    assert (bank[:, 0, 0] == 0).all()                      # its top corners are not
    sector = fan_mask(64, 64, "sector")
    assert sector[8, 32] > 0 and sector[8, 0] == 0 and sector[0, 10] == 0      # a point apex at the top


def test_calipers_are_drawn_on_the_lesion():
    images = np.full((24, 64, 64, 3), 60.0, np.float32)
    masks = np.zeros((24, 64, 64, 1), np.float32)
    masks[:, 20:40, 16:48] = 1
    drawn = draw_calipers_batch(images, masks, 1.0, np.int64(3))
    changed = np.abs(drawn - images).sum(axis=-1) > 0
    assert changed.any(axis=(1, 2)).all()
    around = [10 <= np.median(np.nonzero(c)[0]) <= 50 and 6 <= np.median(np.nonzero(c)[1]) <= 58 for c in changed]
    assert np.mean(around) >= 0.6            # mostly around the lesion (some text or calipers elsewhere)
    assert np.array_equal(draw_calipers_batch(images, masks, 0.0, np.int64(3)), images)


def test_build_augment_applies_fans_and_keeps_shapes():
    config = AugmentConfig(flip=False, rotation_degrees=0, zoom=0, brightness=0, contrast=0, fan=1.0, calipers=1.0)
    augment = build_augment(config, 64, seed=0)
    images = np.full((4, 64, 64, 3), 100.0, np.float32)
    masks = np.zeros((4, 64, 64, 1), np.float32)
    out_images, out_masks = augment(images, masks)
    out_images = np.asarray(out_images)
    assert out_images.shape == images.shape and np.asarray(out_masks).shape == masks.shape
    assert (out_images[:, 0, 0] == 0).all()                # outside every fan: black
    assert (out_images[:, -1, 32] > 0).all()               # inside: the image


def test_fan_bank_sectors_vary_with_the_scans_aspect_ratio():
    bank = fan_bank(64, n=30, seed=2)
    sectors = bank[::3]                                    # every third fan is a sector
    square = fan_mask(64, 64, "sector") > 0
    differs = [(sector.astype(bool) != square).mean() for sector in sectors]
    assert max(differs) > 0.05 and min(differs) < max(differs) - 0.03   # drawn on scans of several shapes


def test_tgc_bands_change_the_gain_by_depth_only():
    config = AugmentConfig(flip=False, rotation_degrees=0, zoom=0, brightness=0, contrast=0, tgc=0.5)
    augment = build_augment(config, 64, seed=0)
    images = np.full((8, 64, 64, 3), 100.0, np.float32)
    out = np.asarray(augment(images, np.zeros((8, 64, 64, 1), np.float32))[0])
    rows = out[..., 0]
    assert np.allclose(rows, rows[:, :, :1], atol=1e-3)          # one gain across each row
    assert np.allclose(out[..., 0], out[..., 2])                 # grey stays grey
    depth = rows[:, :, 0]                                        # (8, 64) gain profile of each image
    assert depth.min() >= 100 * np.exp(-0.5) - 1e-3 and depth.max() <= 100 * np.exp(0.5) + 1e-3
    assert (depth.max(axis=1) - depth.min(axis=1)).mean() > 10   # it varies with depth...
    assert np.abs(np.diff(depth, axis=1)).max() < 100 * (np.exp(1.0) - 1) / 12   # ...smoothly, no steps
    assert not np.allclose(depth[0], depth[1])                   # and differs between images


def test_bcd_train_tgc_option_adds_bands_to_the_preset():
    from dataclasses import replace

    from bcd.cli import build_parser, train_config
    from train.config import TrainConfig

    args = build_parser().parse_args(["train", "--out", "x", "--augment", "scanner", "--tgc", "0.4"])
    augment = train_config(args).augment
    assert augment.tgc == 0.4 and augment.fan == AugmentConfig.preset("scanner").fan
    assert train_config(build_parser().parse_args(["train", "--out", "x"])).augment.tgc == 0.0
    alone = train_config(build_parser().parse_args(["train", "--out", "x", "--tgc", "0.3"])).augment
    assert alone == replace(TrainConfig(out="x").augment, tgc=0.3)


def test_screen_view_draws_white_calipers_when_asked():
    from train.augment import ScreenView, build_screen_view

    assert ScreenView.with_calipers("white").white_calipers_only
    assert not ScreenView.with_calipers("any").white_calipers_only and ScreenView.with_calipers("any") == ScreenView()
    images = np.full((12, 64, 64, 3), 40.0, np.float32)
    masks = np.zeros((12, 64, 64, 1), np.float32)
    masks[:, 20:44, 16:48] = 1

    def drawn_colours(white: bool) -> np.ndarray:
        view = ScreenView(fan=0.0, calipers=1.0, box_jitter=0.0, white_calipers_only=white)
        out = np.asarray(build_screen_view(view, 64, seed=0)(images, masks)[0])
        changed = np.abs(out - images).max(axis=-1) > 0
        assert changed.any(axis=(1, 2)).all()                 # every image got its calipers
        return out[changed]

    white = drawn_colours(True)
    assert np.abs(white[:, 0] - white[:, 2]).max() <= 1e-3 and np.abs(white[:, 1] - white[:, 2]).max() <= 1e-3
    coloured = drawn_colours(False)
    assert (coloured.max(axis=1) - coloured.min(axis=1)).max() > 60     # yellow, green or sky among them


def _speckle(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Grey speckle-like scans: a dark 'lesion' in grainy tissue, the same in every channel."""
    rng = np.random.default_rng(seed)
    grey = 120 + 40 * rng.standard_normal((n, size, size))
    grey[:, 20:40, 20:44] -= 70
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def test_texture_kernels_sum_to_one_and_vary():
    from train.augment import TEXTURE_RADIUS, texture_kernels

    kernels = np.asarray(texture_kernels(200))
    side = 2 * TEXTURE_RADIUS + 1
    assert kernels.shape == (200, side, side)
    assert np.allclose(kernels.sum(axis=(1, 2)), 1.0, atol=1e-5)     # mean brightness kept
    assert kernels[:, 0, 0].std() > 0 and (kernels[:, 0, 0] == 0).mean() > 0.3   # several sizes: 3x3 .. 7x7
    assert np.abs(kernels - kernels.mean(axis=0)).mean() > 0.005            # a different filter per image


def test_texture_filter_changes_the_grain_not_the_brightness():
    from train.augment import texture_filter

    images = _speckle(6)
    out = np.asarray(texture_filter(images, 1.0))
    assert out.shape == images.shape
    assert np.allclose(out[..., 0], out[..., 2])                              # grey stays grey
    lesion, tissue = (slice(24, 36), slice(24, 40)), (slice(48, 60), slice(4, 60))
    for before, after in zip(images[..., 0], out[..., 0]):
        assert abs(after[lesion].mean() - before[lesion].mean()) < 6          # the lesion stays as dark
        assert abs(after[tissue].mean() - before[tissue].mean()) < 6          # and the tissue as bright
    assert np.abs(out - images).mean() > 2                                    # but the grain changed
    assert np.array_equal(np.asarray(texture_filter(images, 0.0)), images)    # share 0: untouched


def test_bcd_train_texture_option_adds_the_filter_to_the_preset():
    from bcd.cli import build_parser, train_config

    augment = train_config(build_parser().parse_args(["train", "--out", "x", "--augment", "scanner",
                                                      "--texture", "0.5"])).augment
    assert augment.texture == 0.5 and augment.fan == AugmentConfig.preset("scanner").fan
    assert train_config(build_parser().parse_args(["train", "--out", "x"])).augment.texture == 0.0
    config = AugmentConfig(flip=False, rotation_degrees=0, zoom=0, brightness=0, contrast=0, texture=1.0)
    out = np.asarray(build_augment(config, 64, seed=0)(_speckle(4), np.zeros((4, 64, 64, 1), np.float32))[0])
    assert np.abs(out - _speckle(4)).mean() > 2                               # in the training graph
