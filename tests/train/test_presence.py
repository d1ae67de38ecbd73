"""The lesion-presence model (--presence-weight): the probability is P(malignant | a
lesion) x P(a lesion); each factor learns from its own images; the saved, exported and
explained model stays one probability."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.preprocessing import PreprocessSpec


def _tiny(presence: bool = True):
    from train.model import ModelConfig, build_model
    model, _ = build_model(ModelConfig(32, "none", seed=1, batch_norm=False, width=0.25, presence=presence))
    return model


def test_probability_is_the_product_of_the_two_factors():
    from train.model import CONDITIONAL_LAYER, PRESENCE_LAYER, probability_dense
    from train.tf_setup import keras
    model = _tiny()
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    factors = keras.Model(model.inputs, [model.get_layer(CONDITIONAL_LAYER).output,
                                         model.get_layer(PRESENCE_LAYER).output])
    given, present = (np.asarray(t) for t in factors(x, training=False))
    np.testing.assert_allclose(np.asarray(model(x, training=False)), given * present, rtol=1e-6)
    assert probability_dense(model).name == CONDITIONAL_LAYER
    assert model.output_names == ["malignancy"]        # what export and the runtime read
    assert probability_dense(_tiny(presence=False)).name == "malignancy"


def test_scans_without_a_lesion_teach_the_presence_factor_only():
    from train.data import make_tf_dataset
    from train.model import CONDITIONAL_LAYER, PRESENCE_LAYER
    labels = np.array([0, 1, 0, 0])
    normal = np.array([False, False, True, False])
    ds = make_tf_dataset(np.zeros((4, 32, 32, 3), np.uint8), labels, PreprocessSpec(image_size=32), 4,
                         training=False, no_lesion=normal)
    _, targets, weights = next(iter(ds))
    np.testing.assert_array_equal(targets[PRESENCE_LAYER].numpy(), [1, 1, 0, 1])
    np.testing.assert_array_equal(weights[PRESENCE_LAYER].numpy(), [1, 1, 1, 1])
    np.testing.assert_array_equal(targets[CONDITIONAL_LAYER].numpy(), labels)
    # balanced class weights (3 benign, 1 malignant), nothing for the normal scan
    np.testing.assert_allclose(weights[CONDITIONAL_LAYER].numpy(), [2 / 3, 2.0, 0.0, 2 / 3])


def test_gradcam_explains_the_first_factor_in_and_out_of_the_graph():
    from export.gradcam import gradcam_reference, with_cam_output
    model = _tiny()
    x = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
    prob, cam = (np.asarray(t) for t in with_cam_output(model)(x, training=False))
    np.testing.assert_allclose(prob, np.asarray(model(x, training=False)), rtol=1e-6)
    reference = gradcam_reference(model, x)
    assert reference.shape == cam.shape and reference.max() > 0
    # equal up to the map's size (h w), which the runtime's normalisation to 0..1 removes
    np.testing.assert_allclose(cam / cam.max(), reference / reference.max(), atol=1e-4)


def test_negative_presence_weight_is_refused():
    from train.config import TrainConfig
    with pytest.raises(ValueError, match="presence"):
        TrainConfig(out="x", presence_weight=-0.5)


@pytest.fixture(scope="module")
def folders_with_normals(tmp_path_factory) -> Path:
    """Class folders benign / malignant / normal: a bright blob (the 'lesion') in the first
    two, dim for benign and bright for malignant, none in the normal scans."""
    root = tmp_path_factory.mktemp("presence")
    rng = np.random.default_rng(0)
    for name in ("benign", "malignant", "normal"):
        (root / name).mkdir()
        for i in range(20):
            image = cv2.resize(rng.integers(10, 90, (6, 6), dtype=np.uint8), (48, 48))   # distinct scans
            image = image + rng.integers(0, 20, (48, 48), dtype=np.uint8)
            if name != "normal":
                centre = tuple(int(c) for c in rng.integers(14, 34, 2))
                cv2.circle(image, centre, int(rng.integers(6, 11)), 140 if name == "benign" else 230, -1)
            cv2.imwrite(str(root / name / f"{name}{i}.png"), image)
    return root


@pytest.mark.slow
def test_tiny_run_learns_both_factors_and_saves_one_probability(folders_with_normals, tmp_path):
    from bcd.cli import main
    from train.model import CONDITIONAL_LAYER, PRESENCE_LAYER
    from train.tf_setup import keras
    out = tmp_path / "run"
    assert main(["train", "--data", str(folders_with_normals), "--out", str(out), "--image-size", "32",
                 "--epochs", "2", "--width", "0.25", "--batch-size", "8", "--presence-weight", "0.5"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["presence_weight"] == 0.5
    assert "normal class show none" in info["model"]["presence"]
    history = json.loads((out / "history.json").read_text())
    assert len(history["auc"]) == 2 and all(np.isfinite(history["loss"]))
    model = keras.models.load_model(out / "model.keras", compile=False)
    names = [layer.name for layer in model.layers]
    assert len(model.outputs) == 1 and CONDITIONAL_LAYER in names and PRESENCE_LAYER in names
    assert model.output_names == ["malignancy"]


@pytest.mark.slow
def test_presence_run_slims_exports_and_rebuilds(folders_with_normals, tmp_path):
    """The whole chain keeps the product: a slimmed child, its ONNX export (named output
    "malignancy", the same probabilities as Keras), and the rebuild from that export."""
    import onnxruntime as ort

    from bcd.cli import main
    from export import ExportConfig, export_run
    from runtime.manifest import read_manifest
    from train.from_export import rebuild
    from train.model import PRESENCE_LAYER
    from train.tf_setup import keras
    run, slim, exported = tmp_path / "run", tmp_path / "slim", tmp_path / "export"
    assert main(["train", "--data", str(folders_with_normals), "--out", str(run), "--image-size", "32",
                 "--epochs", "1", "--width", "0.25", "--batch-size", "8", "--presence-weight", "0.5"]) == 0
    assert main(["slim", str(run), "--ratio", "0.5", "--epochs", "1", "--out", str(slim)]) == 0
    slim_history = json.loads((slim / "history.json").read_text())
    assert np.isfinite(slim_history["loss"][-1])
    export_run(ExportConfig(run_dir=str(slim), out=str(exported), formats=("onnx-fp32", "onnx-int8"),
                            max_flip_rate=1.0, max_auc_drop=1.0))
    variants = {v.name: v for v in read_manifest(exported).usable_variants()}
    assert set(variants) == {"onnx-fp32", "onnx-int8"}        # the product quantizes after training too
    variant = variants["onnx-fp32"]
    session = ort.InferenceSession(str(exported / variant.file), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(size=(3, 32, 32, 3)).astype(np.float32)
    model = keras.models.load_model(slim / "model.keras", compile=False)
    onnx_prob = session.run(["malignancy"], {"image": x})[0]
    np.testing.assert_allclose(onnx_prob, np.asarray(model(x, training=False)), atol=1e-5)
    rebuild(exported, tmp_path / "rebuilt")
    rebuilt = keras.models.load_model(tmp_path / "rebuilt" / "model.keras", compile=False)
    for a, b in zip(rebuilt.get_layer(PRESENCE_LAYER).get_weights(), model.get_layer(PRESENCE_LAYER).get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rebuilt(x, training=False)), np.asarray(model(x, training=False)), atol=1e-5)


def test_quantization_aware_training_refuses_a_presence_model_clearly():
    from export.qat import quantization_aware_finetune
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="presence model.*onnx-int8"):
        quantization_aware_finetune(_tiny(), images, np.array([0, 1, 0, 1]), PreprocessSpec(image_size=32), epochs=1)
