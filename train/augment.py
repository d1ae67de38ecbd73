"""Training augmentation for breast ultrasound from many scanners.

Three presets (`AugmentConfig.preset`):
- basic: left-right flips, small rotations and zoom, gain (brightness) and contrast;
- ultrasound: basic plus what differs between scanners and sites: gamma, speckle-like
  multiplicative noise, blur, crops with scale and aspect-ratio changes (a published
  cross-site study found aspect-ratio crops helped external AUC by about 0.03), and
  burned-in marks (calipers, text, scanner UI) pasted at random, so that marks stop
  being a shortcut to the label;
- scanner: ultrasound plus what a scanner's screen capture adds (issue 20): a
  sonographer's calipers drawn on the lesion, and curved or sector probes' fans.

The probe sits at the top of the image, so flips are left-right only. Geometric changes
move the lesion mask with the image (they run on image and mask stacked as 4
channels); photometric changes touch the image only. Everything runs on 0..255 pixels
inside tf.data, before `runtime.preprocessing.normalize`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

PRESETS = ("basic", "ultrasound", "scanner")
F32 = "float32"   # augmentation stays float32 under a mixed bfloat16 policy
TGC_KNOTS = 5     # a scanner's time-gain sliders: gain set separately at a few depths
PAIR_CALIPERS = ("any", "white")   # ScreenView.with_calipers


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    rotation_degrees: float = 10.0
    zoom: float = 0.10
    brightness: float = 0.10
    contrast: float = 0.20
    # ultrasound preset (0 = off)
    aspect: float = 0.0          # extra independent zoom of the width: aspect ratio changes
    translate: float = 0.0       # shift as a share of the size (a crop that moves)
    gamma: float = 0.0           # gamma drawn log-uniformly in [exp(-g), exp(g)]
    speckle: float = 0.0         # multiplicative noise: x * (1 + s * N(0, 1)), s up to this
    blur: float = 0.0            # mix with a Gaussian-blurred copy, weight up to this
    tgc: float = 0.0             # depth gain bands: log gain drawn in [-t, t] at TGC_KNOTS depths, smooth between
    texture: float = 0.0         # probability of a random point-spread filter (texture_filter): another scanner's
                                 # speckle grain, edge enhancement or smoothing
    marks: float = 0.0           # probability of pasting burned-in marks
    # scanner preset (issue 20: what a screen capture adds that tidy crops lack)
    calipers: float = 0.0        # probability of a sonographer's calipers drawn on the lesion (lesion_calipers)
    fan: float = 0.0             # probability of a curved or sector probe's fan (black outside it; fan_bank)
    # batch-level (needs the labels: train.data.make_tf_dataset applies it)
    mixup: float = 0.0           # share of the images blended with another of the batch, labels and masks alike

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        if name == "basic":
            return cls()
        if name in ("ultrasound", "scanner"):
            ultrasound = replace(cls(), zoom=0.15, aspect=0.15, translate=0.08, gamma=0.35, speckle=0.15,
                                 blur=0.7, marks=0.5)
            # benchmarks/frames.py: calipers on the lesion changed 9 % of the shipped model's calls and
            # fan-shaped scans 20-45 %; it had seen neither. Trained with 0.3 each, calipers still
            # changed 6-7 % and sector scans 11 %: now half the images get marks, 40 % a fan.
            return ultrasound if name == "ultrasound" else replace(ultrasound, calipers=0.5, fan=0.4)
        raise ValueError(f"unknown augmentation preset {name!r}; choose from {', '.join(PRESETS)}")


# ---- mixup ------------------------------------------------------------------------

MIXUP_ALPHA = 0.4


def mixup_weights(n, share: float):
    """For mixup (Zhang et al., ICLR 2018) on a share of a batch of n: (lam (n,), other (n,)),
    each image to be blended as lam * itself + (1 - lam) * image `other`. lam ~ Beta(0.4, 0.4)
    folded to [0.5, 1], so an image stays mostly itself (and keeps its own class weight); 1
    for the images not mixed."""
    from train.tf_setup import tf

    a, b = tf.random.gamma([n], MIXUP_ALPHA), tf.random.gamma([n], MIXUP_ALPHA)
    lam = a / (a + b + 1e-12)
    lam = tf.maximum(lam, 1.0 - lam)
    lam = tf.where(tf.random.uniform([n]) < share, lam, tf.ones_like(lam))
    return lam, tf.random.shuffle(tf.range(n))


def blend(t, lam, other):
    """lam * t + (1 - lam) * t[other], lam broadcast over t's other axes."""
    from train.tf_setup import tf

    w = tf.reshape(lam, tf.concat([tf.shape(lam), tf.ones([tf.rank(t) - 1], tf.int32)], 0))
    return w * t + (1.0 - w) * tf.gather(t, other)


# ---- burned-in marks ---------------------------------------------------------------

def mark_bank(size: int, n: int = 96, seed: int = 0) -> np.ndarray:
    """(n, size, size) float32 alpha maps of synthetic scanner marks: '+' calipers with
    dotted measurement lines, short text, and UI bars at the frame's edge."""
    rng = np.random.default_rng(seed)
    bank = np.zeros((n, size, size), np.float32)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:.-/ "
    for k in range(n):
        canvas = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, 4)):
            kind = rng.integers(0, 3)
            if kind == 0:       # two calipers and a dotted line between them
                a, b = rng.integers(size // 8, size - size // 8, size=(2, 2))
                arm = max(2, size // 40)
                for x, y in (a, b):
                    cv2.line(canvas, (int(x - arm), int(y)), (int(x + arm), int(y)), 255, 1)
                    cv2.line(canvas, (int(x), int(y - arm)), (int(x), int(y + arm)), 255, 1)
                for t in np.linspace(0, 1, 12)[1:-1]:
                    p = (a + t * (b - a)).astype(int)
                    canvas[int(p[1]) % size, int(p[0]) % size] = 255
            elif kind == 1:     # a line of text
                text = "".join(rng.choice(list(letters), rng.integers(3, 12)))
                scale = size / 400 * rng.uniform(0.8, 1.6)
                org = (int(rng.integers(0, size // 2)), int(rng.integers(size // 10, size)))
                cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 1, cv2.LINE_AA)
            else:               # a UI bar or tick scale at an edge
                w = int(rng.integers(1, max(2, size // 30)))
                if rng.random() < 0.5:
                    x = int(rng.choice([0, size - w - 1]))
                    for y in range(0, size, max(3, size // 16)):
                        canvas[y, x:x + w + 2] = 255
                else:
                    y = int(rng.choice([0, size - w - 1]))
                    canvas[y:y + w, int(rng.integers(0, size // 2)):int(rng.integers(size // 2, size))] = 255
        bank[k] = canvas / 255.0
    return bank


CALIPER_COLOURS = ((255, 255, 255), (0, 255, 255), (0, 230, 0), (255, 230, 120))   # BGR: white, yellow, green, sky


def lesion_calipers(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
                    extras: bool = True, white_only: bool = False, open_marks: bool = False) -> np.ndarray:
    """A copy of `image` (HxWx3 uint8) with a sonographer's measurement drawn where it is
    drawn in a clinic: calipers ('+' or 'x') on the lesion's edges (from `mask`, with a
    few px of slack; anywhere without one), a dotted line between them, a small number,
    in white, yellow, green or cyan (`white_only`: white to light grey, what is left once
    the runtime has erased coloured marks). With `extras`, some images also get a
    measurement text ("D1 1.23 cm") somewhere on the scan, an arrow, or calipers away from
    the lesion (a second structure measured), so that no mark means "lesion here".

    The marks are drawn on a canvas 1-5x the image's size and brought down with area
    averaging, as a scanner's 1-2 px marks reach the model after the screen is shrunk to
    its input: thin, partly transparent lines, not the bold 1 px lines of drawing at the
    model's own size (which the reference model had learnt to ignore while real-size
    marks still changed 6-7 % of its calls, benchmarks/frames.py). Issue 20.
    `build_augment` draws it (draw_calipers_batch) before the geometric changes, on a
    share `AugmentConfig.calipers` of the images.

    `open_marks` (a model whose preprocessing opens thin marks, thin_marks "open"): the
    image reaches training already opened, so marks drawn on it would reach the model
    as the runtime never shows them. They are drawn at the opening's scale instead, twice
    the input (the image brought up to it), opened there as the runtime opens a scan
    (runtime.preprocessing.open_thin_marks) and brought down; pixels away from the marks
    keep the image's own values."""
    h, w = image.shape[:2]
    scale = int(rng.integers(1, 6))
    canvas = np.zeros((h * scale, w * scale, 3), np.uint8)    # the marks' colour over black
    alpha = np.zeros((h * scale, w * scale), np.uint8)        # where they are
    colour = _caliper_colour(rng, white_only)
    off_lesion = extras and rng.random() < 0.25
    ends = _lesion_ends(None if off_lesion else mask, h, w, rng)
    size = max(4, int(round(max(h, w) * scale * rng.uniform(0.02, 0.045))))
    thick = 2 if scale >= 3 and rng.random() < 0.4 else 1
    marker = cv2.MARKER_CROSS if rng.random() < 0.6 else cv2.MARKER_TILTED_CROSS
    up = lambda p: (int(p[0] * scale + scale // 2), int(p[1] * scale + scale // 2))  # noqa: E731
    seed = int(rng.integers(0, 2**31))
    for layer, ink in ((canvas, colour), (alpha, 255)):
        draw = np.random.default_rng(seed)            # the same marks on both layers
        _draw_marks(layer, ink, [(up(a), up(b)) for a, b in ends], draw, size, thick, marker, scale,
                    extras, draw.random())
    if open_marks:
        return _opened_marks(image, canvas, alpha)
    small_alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255.0
    small_canvas = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = image.astype(np.float32) * (1.0 - small_alpha) + small_canvas
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _opened_marks(image: np.ndarray, canvas: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The marks (colour `canvas` over `alpha`, any multiple of the image's size) drawn on
    `image` at OPEN_SCALE x its size and opened there as the runtime opens a scan: the
    image plus what the marks still change after the opening (the difference between
    the opened scan with and without them, brought down), so that the tissue, already
    opened once, is not opened again."""
    from runtime.preprocessing import OPEN_SCALE, open_thin_marks

    h, w = image.shape[:2]
    mid = (OPEN_SCALE * w, OPEN_SCALE * h)
    to_mid = cv2.INTER_AREA if canvas.shape[0] >= OPEN_SCALE * h else cv2.INTER_LINEAR   # down, or up
    a = cv2.resize(alpha, mid, interpolation=to_mid).astype(np.float32)[..., None] / 255.0
    ink = cv2.resize(canvas, mid, interpolation=to_mid).astype(np.float32)
    big = cv2.resize(image, mid, interpolation=cv2.INTER_LINEAR)
    drawn = np.clip(np.round(big * (1.0 - a) + ink), 0, 255).astype(np.uint8)

    def opened(x):
        return cv2.resize(open_thin_marks(x, h), (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = image.astype(np.float32) + opened(drawn) - opened(big)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _caliper_colour(rng: np.random.Generator, white_only: bool) -> tuple[int, int, int]:
    if white_only:
        grey = int(rng.integers(190, 256))
        return (grey, grey, grey)
    return CALIPER_COLOURS[int(rng.integers(0, len(CALIPER_COLOURS)))]


def _draw_marks(layer, ink, ends, rng, size, thick, marker, scale, extras, extra_draw) -> None:
    """Calipers, dotted lines and numbers (and, with `extras`, a text or an arrow) on one
    layer; called with identically seeded generators for the colour and the alpha layer."""
    hh, ww = layer.shape[:2]
    colour = ink if isinstance(ink, tuple) else int(ink)
    n_pairs = int(rng.integers(1, 3))
    for k, (a, b) in enumerate(ends[:n_pairs], start=1):
        for p in (a, b):
            cv2.drawMarker(layer, p, colour, marker, size, thick, cv2.LINE_AA)
        n = max(2, int(np.hypot(b[0] - a[0], b[1] - a[1]) / max(3, size // 2)))
        for t in np.linspace(0, 1, n + 1)[1:-1]:
            cv2.circle(layer, (int(a[0] + t * (b[0] - a[0])), int(a[1] + t * (b[1] - a[1]))), max(0, thick - 1),
                       colour, -1)
        cv2.putText(layer, str(k), (b[0] + size // 2, b[1] + size), cv2.FONT_HERSHEY_SIMPLEX, size / 30, colour,
                    thick, cv2.LINE_AA)
    if not extras:
        return
    if extra_draw < 0.5:      # the measurement's text, somewhere on the scan
        text = f"D{int(rng.integers(1, 3))} {rng.uniform(0.3, 3.5):.2f} cm"
        org = (int(rng.uniform(0.02, 0.6) * ww), int(rng.uniform(0.08, 0.98) * hh))
        cv2.putText(layer, text, org, cv2.FONT_HERSHEY_SIMPLEX, max(0.3, scale * rng.uniform(0.25, 0.45)), colour,
                    thick, cv2.LINE_AA)
    elif extra_draw < 0.8:    # an arrow towards the first caliper
        tip = ends[0][0]
        tail = (int(np.clip(tip[0] - rng.uniform(0.08, 0.2) * ww, 0, ww - 1)),
                int(np.clip(tip[1] - rng.uniform(0.08, 0.2) * hh, 0, hh - 1)))
        cv2.arrowedLine(layer, tail, tip, colour, thick, cv2.LINE_AA, tipLength=0.3)


def draw_calipers_batch(images: np.ndarray, masks: np.ndarray, share: float, seed: np.ndarray,
                        white_only: bool = False, open_marks: bool = False) -> np.ndarray:
    """`lesion_calipers` on a random `share` of a batch (N,H,W,3 float 0..255 and their
    N,H,W,1 lesion masks); for tf.numpy_function, so `seed` varies per call."""
    rng = np.random.default_rng(int(seed))
    out = images.copy()
    for i in np.flatnonzero(rng.random(len(images)) < share):
        mask = masks[i, ..., 0] >= 0.5
        drawn = lesion_calipers(np.clip(images[i], 0, 255).astype(np.uint8), mask if mask.any() else None, rng,
                                white_only=bool(white_only), open_marks=bool(open_marks))
        out[i] = drawn.astype(np.float32)
    return out


# ---- probe fans --------------------------------------------------------------------

def fan_mask(height: int, width: int, probe: str, apex: float = 0.8) -> np.ndarray:
    """0/255 mask of a fan whose bounding box is the whole height x width: a curved
    probe's (an arc on top, the apex `apex` x height above the image) or a sector
    probe's (a point apex at the top edge); a linear probe's is everything."""
    if probe == "linear":
        return np.full((height, width), 255, np.uint8)
    apex_above = apex * height if probe == "curved" else 0.0
    r_out = apex_above + height
    half = math.asin(min(1.0, width / 2 / r_out))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = xx - (width - 1) / 2, yy + apex_above
    radius = np.sqrt(dx * dx + dy * dy)
    angle = np.abs(np.arctan2(dx, dy))
    inside = (radius >= apex_above) & (radius <= r_out) & (angle <= half + 1e-3)
    return inside.astype(np.uint8) * 255


def fan_bank(size: int, n: int = 32, seed: int = 0) -> np.ndarray:
    """(n, size, size) float32 0/1 fans: curved probes with the apex 0.3-1.5 x the height
    above the image, and sector probes (a third of them), each drawn on a scan 0.75-1.6 x
    as wide as it is tall and squashed to the square model input, as the finder's box
    around a fan on a real scan is (a wide scan's sector is wider than a square one's)."""
    rng = np.random.default_rng(seed)
    fans = []
    for k in range(n):
        apex, aspect = float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.75, 1.6))
        fan = fan_mask(size, max(8, round(size * aspect)), "sector" if k % 3 == 0 else "curved", apex)
        fans.append(cv2.resize(fan, (size, size), interpolation=cv2.INTER_NEAREST))
    return (np.stack(fans) > 0).astype(np.float32)


def _lesion_ends(mask, h, w, rng) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The lesion's width and depth through its centre (jittered a few px), else two
    random segments."""
    if mask is not None and np.count_nonzero(mask) >= 10:
        ys, xs = np.nonzero(mask)
        cy, cx = int(np.median(ys)), int(np.median(xs))
        jitter = lambda v, top: int(np.clip(v + rng.integers(-3, 4), 0, top - 1))  # noqa: E731
        return [((jitter(xs.min(), w), jitter(cy, h)), (jitter(xs.max(), w), jitter(cy, h))),
                ((jitter(cx, w), jitter(ys.min(), h)), (jitter(cx, w), jitter(ys.max(), h)))]
    pts = rng.integers((w // 8, h // 8), (w - w // 8, h - h // 8), size=(4, 2))
    return [(tuple(map(int, pts[0])), tuple(map(int, pts[1]))), (tuple(map(int, pts[2])), tuple(map(int, pts[3])))]


# ---- the tf.data function ----------------------------------------------------------

def _gaussian_kernel(sigma: float = 1.2, radius: int = 2) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k2 = np.outer(k, k) / np.outer(k, k).sum()
    return np.tile(k2[:, :, None, None], (1, 1, 3, 1)).astype(np.float32)


def build_augment(config: AugmentConfig, image_size: int, seed: int, open_marks: bool = False):
    """A function (images (N,H,W,3) float 0..255, masks (N,H,W,1) float 0/1) -> the same,
    augmented; masks follow every geometric change. `open_marks`: calipers are drawn as
    a model whose preprocessing opens thin marks sees them (lesion_calipers)."""
    from train.tf_setup import keras, tf

    geometric = []
    if config.flip:
        geometric.append(keras.layers.RandomFlip("horizontal", seed=seed, dtype=F32))
    if config.rotation_degrees:
        geometric.append(keras.layers.RandomRotation(config.rotation_degrees / 360, fill_mode="reflect", seed=seed + 1, dtype=F32))
    if config.zoom or config.aspect:
        z, a = config.zoom, config.aspect
        geometric.append(keras.layers.RandomZoom((-z, z), width_factor=(-z - a, z + a) if a else None,
                                                 fill_mode="reflect", seed=seed + 2, dtype=F32))
    if config.translate:
        geometric.append(keras.layers.RandomTranslation(config.translate, config.translate,
                                                        fill_mode="reflect", seed=seed + 5, dtype=F32))
    photometric = []
    if config.brightness:
        photometric.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed + 3, dtype=F32))
    if config.contrast:
        photometric.append(keras.layers.RandomContrast(config.contrast, seed=seed + 4, dtype=F32))
    geo = keras.Sequential(geometric, name="augment_geometric") if geometric else None
    photo = keras.Sequential(photometric, name="augment_photometric") if photometric else None
    marks = tf.constant(mark_bank(image_size, seed=seed)) if config.marks else None
    fans = tf.constant(fan_bank(image_size, seed=seed)) if config.fan else None
    blur_kernel = tf.constant(_gaussian_kernel())

    def per_sample(n, low, high):
        return tf.random.uniform([n, 1, 1, 1], low, high)

    def augment(images, masks):
        n = tf.shape(images)[0]
        if config.calipers:   # drawn on the lesion first, then moved with it
            drawn = tf.numpy_function(draw_calipers_batch, [images, masks, tf.constant(config.calipers, tf.float64),
                                                            tf.random.uniform([], 0, 2**31 - 1, dtype=tf.int64),
                                                            tf.constant(False), tf.constant(open_marks)],
                                      tf.float32, stateful=True)
            images = tf.ensure_shape(drawn, images.shape)
        if geo is not None:
            both = geo(tf.concat([images, masks * 255.0], axis=-1), training=True)
            images, masks = both[..., :3], tf.cast(both[..., 3:] >= 127.5, tf.float32)
        if config.tgc:   # on the tissue, before a fan's black and the burned-in marks
            images = images * depth_gain(n, tf.shape(images)[1], config.tgc)
        if config.texture:   # on the tissue too: a scanner's processing, under the marks it burns in
            images = texture_filter(images, config.texture)
        if fans is not None:   # after the geometry: a probe's fan does not rotate or zoom with the tissue
            fan = tf.gather(fans, tf.random.uniform([n], 0, fans.shape[0], dtype=tf.int32))[..., None]
            on = tf.cast(tf.random.uniform([n, 1, 1, 1]) < config.fan, tf.float32)
            keep = 1.0 - on * (1.0 - fan)
            images, masks = images * keep, masks * keep
        if marks is not None:
            pick = tf.gather(marks, tf.random.uniform([n], 0, marks.shape[0], dtype=tf.int32))[..., None]
            on = tf.cast(tf.random.uniform([n, 1, 1, 1]) < config.marks, tf.float32)
            alpha = pick * on
            images = images * (1 - alpha) + alpha * per_sample(n, 180.0, 255.0)
        if config.gamma:
            g = tf.exp(per_sample(n, -config.gamma, config.gamma))
            images = 255.0 * tf.pow(tf.clip_by_value(images / 255.0, 0.0, 1.0), g)
        if photo is not None:
            images = photo(images, training=True)
        if config.blur:
            blurred = tf.nn.depthwise_conv2d(images, blur_kernel, [1, 1, 1, 1], "SAME")
            w = per_sample(n, 0.0, config.blur)
            images = images * (1 - w) + blurred * w
        if config.speckle:
            s = per_sample(n, 0.0, config.speckle)
            images = images * (1.0 + s * tf.random.normal(tf.shape(images)[:3])[..., None])
        return tf.clip_by_value(images, 0.0, 255.0), masks

    return augment


def depth_gain(n, height, tgc: float):
    """(n, height, 1, 1) gains that vary smoothly with depth (row), as another sonographer's
    time-gain compensation sliders would set them: log gain uniform in [-tgc, tgc] at
    TGC_KNOTS depths, linear in between. Intensity bands by depth differ between sites
    (scanner presets, sonographers) in a way a global brightness change does not cover."""
    from train.tf_setup import tf

    knots = tf.random.uniform([n, TGC_KNOTS, 1, 1], -tgc, tgc)
    return tf.exp(tf.image.resize(knots, [height, 1], method="bilinear"))


TEXTURE_RADIUS = 3       # kernels up to 7x7 (at 128 px, a few speckle grains)
TEXTURE_BLUR = 0.8       # the smoothing part's weight is drawn in [0, this]
TEXTURE_STRENGTH = 0.6   # the zero-sum part's norm is drawn in [0, this]


def texture_kernels(n):
    """(n, 7, 7) random filters that sum to 1, one per image, each of a random size (3x3 to
    7x7): (1 - b) * identity + b * a random positive kernel (an anisotropic, lumpy blur) + s *
    a random zero-sum kernel of unit norm (sharpening and grain in random directions). Summing
    to 1 keeps every region's mean brightness (echogenicity), so the lesion reads as dark or
    bright as before; what changes is the speckle's grain and the edges' sharpness, which
    scanners and their speckle-reduction and edge-enhancement settings set differently (the
    idea of random convolutions, Xu et al., ICLR 2021, kept to filters a scanner could apply)."""
    from train.tf_setup import tf

    side = 2 * TEXTURE_RADIUS + 1
    offsets = tf.range(-TEXTURE_RADIUS, TEXTURE_RADIUS + 1)
    ring = tf.maximum(tf.abs(offsets)[:, None], tf.abs(offsets)[None, :])
    radius = tf.random.uniform([n, 1, 1], 1, TEXTURE_RADIUS + 1, dtype=tf.int32)
    support = tf.cast(ring[None] <= radius, tf.float32)
    identity = tf.reshape(tf.one_hot(side * side // 2, side * side), [1, side, side])
    positive = tf.abs(tf.random.normal([n, side, side])) * support
    positive /= tf.reduce_sum(positive, axis=[1, 2], keepdims=True)
    zero_sum = tf.random.normal([n, side, side]) * support
    mean = tf.reduce_sum(zero_sum, axis=[1, 2], keepdims=True) / tf.reduce_sum(support, axis=[1, 2], keepdims=True)
    zero_sum -= support * mean
    zero_sum /= tf.norm(zero_sum, axis=[1, 2], keepdims=True) + 1e-6
    b = tf.random.uniform([n, 1, 1], 0.0, TEXTURE_BLUR)
    s = tf.random.uniform([n, 1, 1], 0.0, TEXTURE_STRENGTH)
    return (1.0 - b) * identity + b * positive + s * zero_sum


def texture_filter(images, share: float):
    """Each image (N, H, W, C) filtered, with probability `share`, by its own kernel from
    `texture_kernels` (the same on every channel, so grey stays grey), with mirrored edges."""
    from train.tf_setup import tf

    n, h, w, c = (tf.shape(images)[i] for i in range(4))
    kernels = texture_kernels(n)
    r = TEXTURE_RADIUS
    stacked = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, h, w, n * c])     # every image's channels side by side
    stacked = tf.pad(stacked, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    per_channel = tf.repeat(tf.transpose(kernels, [1, 2, 0]), c, axis=2)[..., None]  # (7, 7, n * c, 1)
    filtered = tf.nn.depthwise_conv2d(stacked, per_channel, [1, 1, 1, 1], "VALID")
    filtered = tf.transpose(tf.reshape(filtered, [h, w, n, c]), [2, 0, 1, 3])
    on = tf.random.uniform([n, 1, 1, 1]) < share
    return tf.where(on, filtered, images)


# ---- paired screen views (consistency training) -----------------------------------

@dataclass(frozen=True)
class ScreenView:
    """How the second view of a consistency pair differs from the first: what a scanner's
    screen changes about the same tissue (benchmarks/frames.py measures each). Trained with
    fans and calipers as independent augmentations only, the model still changed 6-14 % of
    its calls on fan-shaped screens and 2-6 % with calipers: seeing the pairs side by side
    and paying for any difference teaches it that they are the same scan."""

    fan: float = 0.6             # probability of a curved or sector probe's fan
    calipers: float = 0.5        # probability of a sonographer's calipers on the lesion
    box_jitter: float = 0.03     # each edge of the finder's box moves by up to this share (in or out)
    white_calipers_only: bool = False   # True: the calipers are white to light grey (train.augment.lesion_calipers)

    @classmethod
    def with_calipers(cls, kind: str) -> "ScreenView":
        """The view for `TrainConfig.pair_calipers`. "any": every colour on half of the
        pairs. "white": where the runtime erases coloured marks (colour_marks: inpaint) a
        coloured caliper never reaches the model, so the pairs spend nothing on it and
        draw white to light-grey ones, on 80 %. Fine-tuned with "any" (three seeds), the
        reference model still changed 6.6, 6.8 and 7.6 % of its calls when white calipers
        were drawn; fine-tuned the same way with "white", 4.6, 3.2 and 5.4 % (runs h5,
        h5s7, h5s3 in docs/scanner-images.md)."""
        if kind not in PAIR_CALIPERS:
            raise ValueError(f"pair calipers must be one of {', '.join(PAIR_CALIPERS)}, got {kind!r}")
        return cls() if kind == "any" else cls(calipers=0.8, white_calipers_only=True)


def build_screen_view(view: ScreenView, image_size: int, seed: int, open_marks: bool = False):
    """A function (images (N,H,W,3) float 0..255, masks (N,H,W,1) 0/1) -> the same scans
    as a screen shows them: calipers drawn on the lesion, the box a finder gives (a few
    pixels off, black where it overshoots), then a fan. Masks follow the box.
    `open_marks`: as in build_augment."""
    from train.tf_setup import tf

    fans = tf.constant(fan_bank(image_size, seed=seed + 7))
    size = tf.constant([image_size, image_size])

    def screen(images, masks, whole=None):
        """`whole` (N,) bool: which images are whole scans; a lesion crop gets no fan (a
        clinician's box lies inside the fan; a fan on it would cut the lesion itself)."""
        n = tf.shape(images)[0]
        if view.calipers:
            drawn = tf.numpy_function(draw_calipers_batch, [images, masks, tf.constant(view.calipers, tf.float64),
                                                            tf.random.uniform([], 0, 2**31 - 1, dtype=tf.int64),
                                                            tf.constant(view.white_calipers_only),
                                                            tf.constant(open_marks)],
                                      tf.float32, stateful=True)
            images = tf.ensure_shape(drawn, images.shape)
        if view.box_jitter:
            j = view.box_jitter
            edges = tf.random.uniform([n, 4], -j, j)
            boxes = tf.constant([[0.0, 0.0, 1.0, 1.0]]) + edges
            both = tf.image.crop_and_resize(tf.concat([images, masks], axis=-1), boxes, tf.range(n), size,
                                            extrapolation_value=0.0)
            images, masks = both[..., :3], tf.cast(both[..., 3:] >= 0.5, tf.float32)
        if view.fan:
            fan = tf.gather(fans, tf.random.uniform([n], 0, fans.shape[0], dtype=tf.int32))[..., None]
            on = tf.random.uniform([n]) < view.fan
            if whole is not None:
                on = on & whole
            keep = 1.0 - tf.cast(on, tf.float32)[:, None, None, None] * (1.0 - fan)
            images, masks = images * keep, masks * keep
        return tf.clip_by_value(images, 0.0, 255.0), masks

    return screen
