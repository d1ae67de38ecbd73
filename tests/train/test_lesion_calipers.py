"""train.augment.lesion_calipers: realistic measurement marks on the lesion (issue 20)."""
from __future__ import annotations

import cv2
import numpy as np

from benchmarks.screens import synthetic_scan
from train.augment import lesion_calipers


def test_calipers_are_drawn_on_the_lesion_edges_and_are_seeded():
    scan, mask = synthetic_scan(256, 256, np.random.default_rng(0))
    a = lesion_calipers(scan, mask, np.random.default_rng(3), extras=False)
    assert np.array_equal(a, lesion_calipers(scan, mask, np.random.default_rng(3), extras=False))
    changed = np.any(a != scan, axis=2)
    assert 0.0005 < changed.mean() < 0.05
    ys, xs = np.nonzero(mask)
    near = np.zeros_like(mask)
    near[max(0, ys.min() - 12):ys.max() + 13, max(0, xs.min() - 12):xs.max() + 13] = True
    assert changed[near].sum() >= 0.8 * changed.sum()       # the marks sit on the lesion
    assert a.dtype == np.uint8 and a.shape == scan.shape


def test_without_a_mask_the_marks_go_anywhere():
    scan, _ = synthetic_scan(200, 240, np.random.default_rng(1))
    out = lesion_calipers(scan, None, np.random.default_rng(0))
    assert np.any(out != scan)


def test_marks_are_drawn_large_and_shrunk_so_they_arrive_thin_and_soft():
    """Drawn 1-5x larger and brought down with area averaging, as a screen's marks reach
    the model: most draws leave partly transparent pixels, not only solid ink."""
    scan = np.full((96, 96, 3), 40, np.uint8)
    soft = 0
    for seed in range(20):
        out = lesion_calipers(scan, None, np.random.default_rng(seed)).astype(int)
        changed = np.abs(out - 40).max(axis=2)
        assert changed.any()
        soft += (changed[changed > 0] < 150).mean() > 0.3      # mostly blended, not solid
    assert soft >= 8


def test_extras_sometimes_put_marks_away_from_the_lesion():
    scan, mask = synthetic_scan(256, 256, np.random.default_rng(0))
    ys, xs = np.nonzero(mask)
    near = np.zeros(mask.shape, bool)
    near[max(0, ys.min() - 12):ys.max() + 13, max(0, xs.min() - 12):xs.max() + 13] = True
    away = []
    for seed in range(40):
        changed = np.any(lesion_calipers(scan, mask, np.random.default_rng(seed)) != scan, axis=2)
        away.append(changed[~near].sum() > 0.5 * changed.sum())
    assert 0.1 <= np.mean(away) <= 0.8       # text, arrows and off-lesion calipers, but not always


# --- calipers for a model whose preprocessing opens thin marks (thin_marks "open") ---

def _opened_scan(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A training image as a thin_marks "open" model gets it (a smooth textured scan, opened
    and resized by the preprocessing) and a lesion mask in its middle."""
    from runtime.preprocessing import PreprocessSpec, resize
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (4 * size, 4 * size)).astype(np.float32), (0, 0), 4)
    scan = cv2.cvtColor(np.clip(90 + 40 * noise / noise.std(), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    image = resize(scan, PreprocessSpec(image_size=size, thin_marks="open"))
    mask = np.zeros((size, size), bool)
    mask[size // 3:2 * size // 3, size // 4:3 * size // 4] = True
    return image, mask


def test_calipers_drawn_for_an_opening_model_are_opened_as_the_runtime_opens_them():
    image, mask = _opened_scan()
    change = {"thin": [0.0, 0.0], "bold": [0.0, 0.0]}        # drawn as they are / for an opening model
    for seed in range(40):
        # the canvas scale, lesion_calipers' first draw: 1 draws strokes an input pixel wide
        kind = "bold" if np.random.default_rng(seed).integers(1, 6) == 1 else "thin"
        drawn = lesion_calipers(image, mask, np.random.default_rng(seed), extras=False, white_only=True)
        opened = lesion_calipers(image, mask, np.random.default_rng(seed), extras=False, white_only=True,
                                 open_marks=True)
        change[kind][0] += np.abs(drawn.astype(float) - image).sum()
        change[kind][1] += np.abs(opened.astype(float) - image).sum()
        far = cv2.dilate((drawn != image).any(-1).astype(np.uint8), np.ones((7, 7), np.uint8)) == 0
        assert np.array_equal(opened[far], image[far])          # away from the marks nothing moves
    # strokes thinner than an input pixel (a real scan's, brought down) mostly go, as the
    # runtime's opening removes them from a scan (tests/runtime/test_thin_marks.py) ...
    assert 0 < change["thin"][1] < 0.4 * change["thin"][0]
    # ... while strokes as wide as an input pixel mostly stay, as they would there
    assert change["bold"][1] > 0.5 * change["bold"][0]


def test_training_draws_opened_calipers_when_the_preprocessing_opens_thin_marks():
    from runtime.preprocessing import PreprocessSpec
    from train.augment import AugmentConfig
    from train.data import LesionTargets, make_tf_dataset
    from train.tf_setup import tf
    image, mask = _opened_scan()
    images, masks = np.stack([image] * 8), np.stack([mask] * 8).astype(np.uint8)
    still = AugmentConfig(flip=False, rotation_degrees=0, zoom=0, brightness=0, contrast=0, calipers=1.0)
    change = {}
    for thin in ("keep", "open"):
        tf.random.set_seed(3)      # the same calipers in both: the difference is the opening's alone
        spec = PreprocessSpec(image_size=64, thin_marks=thin)
        ds = make_tf_dataset(images, np.zeros(8), spec, 8, True, seed=1, augment=still,
                             lesion=LesionTargets(masks, np.ones(8, bool), {0: 1.0, 1: 1.0}))
        x = next(iter(ds))[0].numpy() + np.array(spec.mean, np.float32)
        change[thin] = float(np.abs(x - images).sum())
    # with texts, arrows and bold strokes, which stay, not all goes (about half with these calipers)
    assert 0 < change["open"] < 0.9 * change["keep"]
