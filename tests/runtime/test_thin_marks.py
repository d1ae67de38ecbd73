"""Thin bright marks (issue 20): with the preprocessing's thin_marks "open", a caliper's
one-pixel strokes and dotted line mostly leave the model input, on the scan and on the
same scan resampled by a screen capture, while tissue-sized structures stay."""
import cv2
import numpy as np
import pytest

from runtime.preprocessing import PreprocessSpec, prepare

OPEN = PreprocessSpec(image_size=128, thin_marks="open")
KEEP = PreprocessSpec(image_size=128)


def _tissue(h=400, w=520, seed=0) -> np.ndarray:
    """Smooth speckle-like texture with a dark oval lesion and a bright band (a fascia)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3)
    img = 90 + 40 * noise / noise.std()
    cv2.ellipse(img, (260, 200), (70, 45), 0, 0, 360, 25, -1)
    img[60:80, :] += 70                                    # a bright band 20 px thick
    return cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def _with_calipers(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    for cx, cy in ((190, 200), (330, 200)):                # '+' marks on the lesion's edges, 1 px strokes
        cv2.line(out, (cx - 6, cy), (cx + 6, cy), (255, 255, 255), 1)
        cv2.line(out, (cx, cy - 6), (cx, cy + 6), (255, 255, 255), 1)
    for x in range(196, 326, 6):                           # the dotted line between them
        out[200, x:x + 2] = 255
    cv2.putText(out, "D1 2.1cm", (330, 360), cv2.FONT_HERSHEY_PLAIN, 1.0, (255, 255, 255), 1)
    return out


def _change(a: np.ndarray, b: np.ndarray, spec: PreprocessSpec) -> float:
    """How much of the model input the marks change: the summed absolute difference."""
    return float(np.abs(prepare(a, spec) - prepare(b, spec)).sum())


def test_opening_removes_most_of_what_calipers_change():
    plain = _tissue()
    marked = _with_calipers(plain)
    keep, opened = _change(plain, marked, KEEP), _change(plain, marked, OPEN)
    assert keep > 5000                                     # the strokes leak into the 128 px input
    assert opened < 0.35 * keep                            # two thirds of that is gone


@pytest.mark.parametrize("scale", [0.8, 1.6, 2.3])
def test_opening_removes_them_from_a_resampled_screen_too(scale):
    plain = _tissue()
    marked = _with_calipers(plain)
    size = (round(plain.shape[1] * scale), round(plain.shape[0] * scale))
    plain_s, marked_s = (cv2.resize(x, size, interpolation=cv2.INTER_LINEAR) for x in (plain, marked))
    assert _change(plain_s, marked_s, OPEN) < 0.4 * _change(plain_s, marked_s, KEEP)


def test_opening_keeps_the_lesion_and_the_bright_band():
    plain = _tissue()
    keep, opened = prepare(plain, KEEP), prepare(plain, OPEN)
    lesion = (slice(56, 72), slice(56, 72))                # inside the oval at 128 px
    band = (slice(21, 24), slice(8, 120))                  # inside the band at 128 px
    assert abs(opened[lesion].mean() - keep[lesion].mean()) < 2
    assert abs(opened[band].mean() - keep[band].mean()) < 8
    assert opened[band].mean() - opened[lesion].mean() > 100    # the contrast the model reads is still there
    # the opening only ever darkens (it removes bright detail), and only by a little on average
    assert -8 < (opened - keep).mean() < 0


def test_spec_records_it_and_older_specs_load_without_it():
    assert PreprocessSpec.from_dict(OPEN.to_dict()) == OPEN
    old = {k: v for k, v in KEEP.to_dict().items() if k != "thin_marks"}
    assert PreprocessSpec.from_dict(old).thin_marks == "keep"
    with pytest.raises(ValueError, match="thin_marks"):
        PreprocessSpec(image_size=64, thin_marks="erase")


def test_a_spec_with_a_step_this_code_does_not_know_is_refused():
    newer = {**OPEN.to_dict(), "denoise": "strong"}
    with pytest.raises(ValueError, match="newer version"):
        PreprocessSpec.from_dict(newer)


def test_an_input_already_at_the_model_size_is_left_alone():
    small = cv2.resize(_tissue(), (128, 128), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(prepare(small, OPEN), prepare(small, KEEP))


# ------------------------------------------------- the setting from training to the runtime


def test_train_setting_defaults_to_keep_and_old_runs_load_as_keep():
    from bcd.cli import build_parser, train_config
    from train.config import TrainConfig

    assert TrainConfig(out="r").thin_marks == "keep"
    assert train_config(build_parser().parse_args(["train", "--out", "r", "--thin-marks", "open"])).thin_marks == "open"
    old = TrainConfig(out="r", thin_marks="open").to_dict()
    old.pop("thin_marks")                                  # a run.json from before the setting
    assert TrainConfig.from_dict(old).thin_marks == "keep"
    with pytest.raises(ValueError, match="thin marks must be one of keep, open"):
        TrainConfig(out="r", thin_marks="erase")


def test_a_served_model_opens_marks_when_its_manifest_says_so(tiny_export, tmp_path):
    from runtime.classifier import Classifier
    from tests.runtime.test_classifier import copy_export, edit_manifest

    opened = copy_export(tiny_export, tmp_path / "open")
    edit_manifest(opened, lambda doc: doc["preprocessing"].update(thin_marks="open"))
    keep = Classifier.load(tiny_export, variant="onnx-fp32")
    clf = Classifier.load(opened, variant="onnx-fp32")
    assert (keep.spec.thin_marks, clf.spec.thin_marks) == ("keep", "open")
    marked = _with_calipers(_tissue())
    small = cv2.resize(marked, (clf.spec.image_size,) * 2, interpolation=cv2.INTER_AREA)
    # a scan larger than the input is opened before the resize; one at the input size is not
    assert keep.predict(marked).probability != clf.predict(marked).probability
    assert keep.predict(small).probability == pytest.approx(clf.predict(small).probability, abs=1e-6)


@pytest.mark.slow   # trains (1 epoch, 32 px) and exports a model
def test_a_run_trained_with_open_marks_exports_and_serves_them(tiny_dataset, tmp_path):
    import json

    from export import ExportConfig, export_run
    from runtime.classifier import Classifier
    from runtime.manifest import MANIFEST_NAME
    from train.config import TrainConfig
    from train.trainer import train

    run = train(TrainConfig(out=str(tmp_path / "run"), data=str(tiny_dataset), image_size=32, epochs=1,
                            batch_size=8, bootstrap_resamples=50, thin_marks="open")).root
    assert json.loads((run / "run.json").read_text())["preprocessing"]["thin_marks"] == "open"
    out = tmp_path / "export"
    # lenient parity: a 1-epoch model's probabilities sit at 0 or 1 with the threshold there too,
    # so float noise between Keras and ONNX can flip a call; this test is about the setting
    export_run(ExportConfig(run_dir=str(run), out=str(out), formats=("onnx-fp32",), max_auc_drop=1.0,
                            max_flip_rate=1.0))
    assert json.loads((out / MANIFEST_NAME).read_text())["preprocessing"]["thin_marks"] == "open"
    assert Classifier.load(out).spec.thin_marks == "open"
