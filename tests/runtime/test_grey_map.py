"""The grey map (preprocessing grey_map "equalize"): another scanner's gain or grey map
curve, a monotone change of the grey levels, hardly changes the model input; a fan's
black corners do not change how the tissue is mapped; grey stays grey."""
import cv2
import numpy as np
import pytest

from runtime.preprocessing import EQUALIZE_FLOOR, PreprocessSpec, equalize_grey, prepare

EQUALIZE = PreprocessSpec(image_size=128, grey_map="equalize")
KEEP = PreprocessSpec(image_size=128)


def _tissue(h=300, w=400, seed=0) -> np.ndarray:
    """Speckle-like texture, brighter with depth, with a dark oval lesion."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 2)
    img = 70 + np.linspace(0, 50, h)[:, None] + 35 * noise / noise.std()
    cv2.ellipse(img, (200, 150), (60, 35), 0, 0, 360, 30, -1)
    return cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _remap(img: np.ndarray, gamma: float, gain: float) -> np.ndarray:
    """Another grey map: a gamma curve and a gain, as a scanner's settings would give."""
    return np.clip(255 * (img / 255.0) ** gamma * gain, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("gamma, gain", [(0.6, 1.0), (1.5, 1.2), (1.0, 0.7)])
def test_another_grey_map_hardly_changes_the_input(gamma, gain):
    plain = _tissue()
    other = _remap(plain, gamma, gain)
    keep = np.abs(prepare(plain, KEEP) - prepare(other, KEEP)).mean()
    equalized = np.abs(prepare(plain, EQUALIZE) - prepare(other, EQUALIZE)).mean()
    assert keep > 10                       # the grey map moves the raw input by many grey levels
    assert equalized < 0.15 * keep and equalized < 3


def test_black_corners_do_not_change_how_the_tissue_is_mapped():
    plain = _tissue()
    corners = np.zeros(plain.shape[:2], np.uint8)
    cv2.fillPoly(corners, [np.array([[0, 0], [120, 0], [0, 200]]), np.array([[399, 0], [280, 0], [399, 200]])], 1)
    tissue = corners == 0

    def moved(background: int) -> float:
        """How far the tissue's mapping moves when the corners become `background`."""
        fan = plain.copy()
        fan[corners > 0] = background
        a, b = equalize_grey(plain.astype(np.float32)), equalize_grey(fan.astype(np.float32))
        return float(np.abs(a[tissue] - b[tissue]).mean())
    # A fan's black corners (here a sixth of the image, the shallow tissue's) leave the
    # tissue's mapping nearly as it was: what moves it is the tissue they cut away, which
    # grey corners of the same size show to be far less than the corners themselves would.
    assert moved(0) == moved(EQUALIZE_FLOOR) < 6
    assert moved(100) > 2 * moved(0)
    fan = plain.copy()
    fan[corners > 0] = 3
    assert (equalize_grey(fan.astype(np.float32))[corners > 0] == 0).all()      # background stays black


def test_grey_stays_grey_and_levels_spread_over_the_range():
    out = equalize_grey(_tissue().astype(np.float32))
    assert out.dtype == np.float32 and out.shape == (300, 400, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out.max() == 255 and 115 < out.mean() < 140     # about uniform over 0..255
    batch = np.stack([_tissue(seed=1), _tissue(seed=2)]).astype(np.float32)
    assert np.array_equal(equalize_grey(batch)[1], equalize_grey(batch[1]))   # a batch maps image by image


def test_spec_records_it_and_older_specs_load_without_it():
    assert "grey_map" not in KEEP.to_dict()                   # as before the setting: older runtimes read it
    assert EQUALIZE.to_dict()["grey_map"] == "equalize"
    assert PreprocessSpec.from_dict(EQUALIZE.to_dict()) == EQUALIZE
    assert PreprocessSpec.from_dict(KEEP.to_dict()).grey_map == "keep"
    with pytest.raises(ValueError, match="grey_map"):
        PreprocessSpec(image_size=64, grey_map="clahe")


def test_tensors_are_refused_by_the_numpy_grey_map():
    from runtime.preprocessing import normalize

    class NotAnArray:
        pass
    with pytest.raises(TypeError, match="normalize_tensor"):
        normalize(NotAnArray(), EQUALIZE)
