"""The light runtime against real exported models (the tiny run exported by
`export.export_run`, see conftest.tiny_export): loading rules and refusals, agreement
with the original Keras model, Grad-CAM from the ONNX graph vs a GradientTape
Grad-CAM, threads, and the import footprint. No ONNX Runtime mocks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import gradcam
from runtime.classifier import Classifier, Prediction, choose_variant
from runtime.images import read_image
from runtime.manifest import MANIFEST_NAME, Manifest, read_manifest
from runtime.model_files import ModelLoadError, check_onnx_external_data, onnx_external_data, onnx_metadata
from runtime.overlay_marks import apply_marks
from runtime.preprocessing import PreprocessSpec, prepare_batch, resize
from runtime.session import physical_cores
from tests.conftest import missing, needs_module

REPO = Path(__file__).resolve().parents[2]
# openvino: an optional engine, imported only when a model is served with it
HEAVY = ("tensorflow", "tf_keras", "keras", "gradio", "sklearn", "torch", "onnx", "tf2onnx", "jax", "openvino")


def dataset_images(root: Path, n: int | None = None) -> list[Path]:
    files = sorted(p for p in root.rglob("*.png") if "_mask" not in p.stem)
    return files[:n] if n else files


def copy_export(src: Path, dst: Path, variants=("onnx-fp32",)) -> Path:
    """A private copy of the export (tests must not touch the shared one)."""
    dst.mkdir(parents=True, exist_ok=True)
    doc = json.loads((src / MANIFEST_NAME).read_text())
    for v in doc["variants"]:
        if v["name"] in variants and v.get("file"):
            shutil.copy(src / v["file"], dst / v["file"])
    doc["variants"] = [v for v in doc["variants"] if v["name"] in variants]
    (dst / MANIFEST_NAME).write_text(json.dumps(doc))
    return dst


def edit_manifest(export_dir: Path, edit) -> None:
    path = export_dir / MANIFEST_NAME
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def fp32(tiny_export) -> Classifier:
    return Classifier.load(tiny_export, variant="onnx-fp32")


@pytest.fixture(scope="module")
def keras_model(graded_run):
    """The Keras model tiny_export was exported from."""
    from train.tf_setup import keras
    return keras.models.load_model(graded_run / "model.keras", compile=False)


# ------------------------------------------------------------------------ loading


def test_export_dir_loads_default_variant(tiny_export):
    manifest = read_manifest(tiny_export)
    clf = Classifier.load(tiny_export)
    expected = "onnx-int8" if manifest.variant("onnx-int8").usable else "onnx-fp32"
    assert clf.variant == expected
    assert clf.info.sha256_verified and clf.info.source == "manifest"
    assert clf.threshold == pytest.approx(manifest.threshold_value)
    assert clf.spec == PreprocessSpec.from_dict(manifest.preprocessing)
    assert clf.labels == ("benign", "malignant") and clf.has_cam


def test_manifest_path_and_listed_file_load_the_same_variant(tiny_export, tiny_dataset, fp32):
    image = dataset_images(tiny_dataset, 1)[0]
    expected = fp32.predict(image).probability
    by_manifest = Classifier.load(tiny_export / MANIFEST_NAME, variant="onnx-fp32")
    by_file = Classifier.load(tiny_export / "onnx-fp32.onnx")
    assert by_file.variant == "onnx-fp32" and by_file.info.source == "manifest"
    for clf in (by_manifest, by_file):
        assert clf.predict(image).probability == pytest.approx(expected, abs=1e-7)


def test_lone_onnx_uses_embedded_metadata(tiny_export, tiny_dataset, fp32, tmp_path):
    lone = tmp_path / "model.onnx"
    shutil.copy(tiny_export / "onnx-fp32.onnx", lone)
    clf = Classifier.load(lone)
    assert clf.info.source == "embedded metadata" and clf.variant == "onnx-fp32"
    assert clf.threshold == pytest.approx(fp32.threshold)
    assert clf.spec == fp32.spec
    images = dataset_images(tiny_dataset, 3)
    got = [p.probability for p in clf.predict(images)]
    want = [p.probability for p in fp32.predict(images)]
    np.testing.assert_allclose(got, want, atol=1e-7)
    with pytest.raises(ModelLoadError, match="not 'onnx-int8'"):
        Classifier.load(lone, variant="onnx-int8")


def test_onnx_without_metadata_is_refused(tmp_path):
    onnx = needs_module("onnx")
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["malignancy"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("malignancy", TensorProto.FLOAT, [1, 1])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ModelLoadError, match="no 'bcd_manifest' metadata"):
        Classifier.load(path)


def test_predictions_match_keras_fp32(fp32, keras_model, tiny_dataset):
    from train.evaluate import predict_probabilities

    paths = dataset_images(tiny_dataset)
    # the marks step the export records (real BUSI scans carry white calipers); the
    # comparison is of the two engines on the same input
    marks = fp32.region_finder.colour_marks, fp32.region_finder.white_calipers
    images = [apply_marks(read_image(p), *marks) for p in paths]
    resized = np.stack([resize(img, fp32.spec) for img in images])
    keras_p = predict_probabilities(keras_model, resized, fp32.spec)
    preds = fp32.predict(paths)
    onnx_p = np.array([p.probability for p in preds])
    assert all(p.ok for p in preds)
    assert np.ptp(keras_p) > 0.2                       # not a saturated model: the comparison means something
    np.testing.assert_allclose(onnx_p, keras_p, atol=1e-4)
    clear = np.abs(keras_p - fp32.threshold) > 1e-4   # labels can only differ right at the threshold
    keras_labels = np.where(keras_p >= fp32.threshold, "malignant", "benign")
    assert clear.sum() >= len(paths) // 2
    assert [p.label for p, c in zip(preds, clear) if c] == list(keras_labels[clear])


def test_int8_close_to_fp32(tiny_export, fp32, tiny_dataset):
    int8 = Classifier.load(tiny_export, variant="onnx-int8", force=True)
    paths = dataset_images(tiny_dataset, 8)
    a = np.array([p.probability for p in int8.predict(paths)])
    b = np.array([p.probability for p in fp32.predict(paths)])
    assert np.all((a >= 0) & (a <= 1))
    # INT8 quality is gated by the export's parity checks; here: it runs and tracks FP32
    assert np.corrcoef(a, b)[0, 1] > 0.9 and np.mean(np.abs(a - b)) < 0.05


# ------------------------------------------------------------------------ Grad-CAM


def tape_gradcam(model, x: np.ndarray) -> np.ndarray:
    """Textbook Grad-CAM with a GradientTape, written independently of export/gradcam.py:
    gradient of the malignancy LOGIT w.r.t. block5_conv3's output, channel weights =
    spatial mean of that gradient, cam = relu(sum_k w_k A_k)."""
    from train.tf_setup import keras, tf

    conv = model.get_layer("block5_conv3")
    hidden_model = keras.Model(model.inputs, [conv.output, model.get_layer("head_dense").output])
    out = model.get_layer("malignancy")
    layers = model.layers[[layer.name for layer in model.layers].index("block5_conv3") + 1:]
    with tf.GradientTape() as tape:
        activations = hidden_model(tf.constant(x), training=False)[0]
        tape.watch(activations)
        h = activations
        for layer in layers:
            if layer is out:
                break
            h = layer(h, training=False)
        logit = tf.matmul(h, out.kernel) + out.bias
    grads = tape.gradient(logit, activations).numpy()
    weights = grads.mean(axis=(1, 2))
    return np.maximum((activations.numpy() * weights[:, None, None, :]).sum(axis=-1), 0.0)


def test_gradcam_from_onnx_matches_gradient_tape(fp32, keras_model, tiny_dataset):
    """The exported model's in-graph CAM equals the GradientTape Grad-CAM of the Keras
    model it came from. (Its 2x2 maps are often all zero after a 1-epoch training, so the
    correlation itself is tested on 4x4 maps below; here the raw values must agree.)"""
    paths = dataset_images(tiny_dataset)
    x = prepare_batch([read_image(p) for p in paths], fp32.spec)
    reference = tape_gradcam(keras_model, x)
    _, onnx_cams = fp32.backend.run(x.copy(), want_cam=True)
    assert onnx_cams.shape == reference.shape         # compared at the conv map resolution
    # the graph computes relu(sum_k g_k A_k) = h*w times Grad-CAM (export/gradcam.py): a
    # constant factor that the per-image normalisation removes
    h, w = reference.shape[1:]
    expected = reference * (h * w)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(onnx_cams, expected, rtol=1e-3, atol=1e-4 * scale + 1e-7)
    for got, want in zip(onnx_cams, reference):
        a, b = gradcam.normalize_cam(got).ravel(), gradcam.normalize_cam(want).ravel()
        if np.ptp(b) > 1e-6:
            assert np.corrcoef(a, b)[0, 1] >= 0.95


@pytest.mark.slow   # trains and exports a 64x64 model
def test_gradcam_matches_gradient_tape_on_a_4x4_map(tiny_export, tiny_dataset, tmp_path):
    """The tiny run's 32x32 input leaves a 2x2 conv map, which says little; a fresh
    (untrained, He-initialised) 64x64 model gives 4x4 maps with varied channel weights.
    Converted like the export does it, run through Classifier, compared per image."""
    from export.gradcam import with_cam_output
    from export.onnx_convert import keras_to_onnx, save, set_metadata
    from train.model import ModelConfig, build_model

    essentials = json.loads(onnx_metadata((tiny_export / "onnx-fp32.onnx").read_bytes())["bcd_manifest"])
    essentials["preprocessing"]["image_size"] = 64
    essentials["input"]["shape"] = [None, 64, 64, 3]
    spec = PreprocessSpec.from_dict(essentials["preprocessing"])
    paths = dataset_images(tiny_dataset)
    model, _ = build_model(ModelConfig(image_size=64, seed=3))
    x = prepare_batch([read_image(p) for p in paths], spec)
    reference = tape_gradcam(model, x)
    if sum(np.ptp(r) > 1e-6 for r in reference) < len(paths) // 2:
        # an untrained head often scores every location negative (relu -> flat maps);
        # flipping the output weights' sign turns those into informative maps
        out = model.get_layer("malignancy")
        kernel, bias = out.get_weights()
        out.set_weights([-kernel, -bias])
        reference = tape_gradcam(model, x)
    proto = keras_to_onnx(with_cam_output(model), 64)
    set_metadata(proto, "bcd_manifest", essentials)
    save(proto, tmp_path / "m64.onnx")
    clf = Classifier.load(tmp_path / "m64.onnx")

    assert clf.spec == spec
    _, cams = clf.backend.run(x.copy(), want_cam=True)
    assert cams.shape == reference.shape == (len(paths), 4, 4)
    correlations = [np.corrcoef(gradcam.normalize_cam(a).ravel(), gradcam.normalize_cam(b).ravel())[0, 1]
                    for a, b in zip(cams, reference) if np.ptp(b) > 1e-6]
    assert len(correlations) >= len(paths) // 2
    assert min(correlations) >= 0.95, correlations
    # and the comparison can tell maps apart: the maps of different images differ
    shuffled = [np.corrcoef(gradcam.normalize_cam(a).ravel(), gradcam.normalize_cam(b).ravel())[0, 1]
                for a, b in zip(cams, np.roll(reference, 1, axis=0)) if np.ptp(a) > 1e-6 and np.ptp(b) > 1e-6]
    assert np.mean(shuffled) < np.mean(correlations) - 0.05


def test_prediction_cam_has_original_size(fp32, tiny_dataset):
    path = dataset_images(tiny_dataset, 1)[0]
    image = read_image(path)
    pred = fp32.predict(path, with_cam=True)
    assert pred.cam.shape == image.shape[:2] and pred.cam.dtype == np.float32
    assert 0.0 <= pred.cam.min() and pred.cam.max() <= 1.0
    assert fp32.predict(path).cam is None


# ------------------------------------------------------------------------ predict API


def test_predict_input_kinds(fp32, tiny_dataset, tmp_path):
    path = dataset_images(tiny_dataset, 1)[0]
    bgr = read_image(path)
    by_path = fp32.predict(path)
    assert isinstance(by_path, Prediction) and by_path.path == str(path) and by_path.ok
    assert by_path.seconds > 0 and 0 <= by_path.probability <= 1
    same = [fp32.predict(bgr), fp32.predict(path.read_bytes()), fp32.predict(str(path))]
    for p in same:
        assert p.probability == pytest.approx(by_path.probability, abs=1e-7)
    gray = fp32.predict(bgr[..., 0])
    rgba = fp32.predict(np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))
    floats = fp32.predict(bgr.astype(np.float32) / 255.0)
    assert gray.ok and rgba.ok and floats.ok
    assert rgba.probability == pytest.approx(by_path.probability, abs=1e-7)
    assert floats.probability == pytest.approx(by_path.probability, abs=1e-7)
    batch = fp32.predict(np.stack([bgr, bgr]))
    assert len(batch) == 2 and batch[1].probability == pytest.approx(by_path.probability, abs=1e-7)
    with pytest.raises(TypeError):
        fp32.predict(42)


def test_bad_item_in_batch_does_not_stop_the_others(fp32, tiny_dataset, tmp_path):
    good = dataset_images(tiny_dataset, 3)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    inputs = [good[0], bad, good[1], tmp_path / "missing.png", np.zeros((0, 3), np.uint8), good[2]]
    preds = fp32.predict(inputs, batch_size=4)
    assert [p.ok for p in preds] == [True, False, True, False, False, True]
    assert "broken.png" in preds[1].error and "file not found" in preds[3].error
    assert "empty image" in preds[4].error
    for p in (preds[1], preds[3], preds[4]):
        assert p.label is None and p.probability is None and p.threshold == fp32.threshold
    alone = [fp32.predict(g).probability for g in good]
    assert [preds[i].probability for i in (0, 2, 5)] == pytest.approx(alone, abs=1e-7)


def test_max_pixels_guard(tiny_export, tiny_dataset):
    clf = Classifier.load(tiny_export, variant="onnx-fp32", max_pixels=100)
    pred = clf.predict(dataset_images(tiny_dataset, 1)[0])
    assert not pred.ok and "over the limit" in pred.error


# ------------------------------------------------------------------------ refusals


def test_sha256_mismatch_is_refused(tiny_export, tmp_path):
    export = copy_export(tiny_export, tmp_path / "export")
    with open(export / "onnx-fp32.onnx", "r+b") as f:   # flip one byte in the middle of the weights
        f.seek(os.path.getsize(export / "onnx-fp32.onnx") // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        Classifier.load(export)
    assert Classifier.load(export, verify=False).variant == "onnx-fp32"   # explicitly not verified


def test_missing_checksum_is_refused(tiny_export, tmp_path):
    export = copy_export(tiny_export, tmp_path / "export")
    edit_manifest(export, lambda d: d["variants"][0].update(sha256=None))
    with pytest.raises(ModelLoadError, match="no sha256"):
        Classifier.load(export)


@pytest.mark.parametrize("name", ["model.keras", "weights.h5", "model.pkl", "saved_model.pb"])
def test_code_carrying_files_are_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"never opened")
    with pytest.raises(ModelLoadError, match="refusing to load"):
        Classifier.load(path)


def test_training_run_is_refused_with_advice(tiny_run):
    with pytest.raises(ModelLoadError, match="refusing to load a Keras model"):
        Classifier.load(tiny_run / "model.keras")
    with pytest.raises(ModelLoadError, match="training run directory.*bcd export"):
        Classifier.load(tiny_run)


def test_manifest_listing_a_keras_file_is_refused(tiny_export, tmp_path):
    export = copy_export(tiny_export, tmp_path / "export")
    shutil.copy(export / "onnx-fp32.onnx", export / "model.keras")
    edit_manifest(export, lambda d: d["variants"][0].update(file="model.keras"))
    with pytest.raises(ModelLoadError, match="refusing to load a Keras model"):
        Classifier.load(export, verify=False)


@pytest.mark.parametrize("file", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx"])
def test_manifest_file_outside_the_export_is_refused(tiny_export, tmp_path, file):
    export = copy_export(tiny_export, tmp_path / "export")
    edit_manifest(export, lambda d: d["variants"][0].update(file=file))
    with pytest.raises(ModelLoadError, match="relative path inside|points outside"):
        Classifier.load(export)


def test_failed_variant_needs_force(tiny_export, tmp_path):
    export = copy_export(tiny_export, tmp_path / "export")
    edit_manifest(export, lambda d: d["variants"][0].update(status="failed", reason="flip rate 0.5 > 0.02"))
    with pytest.raises(ModelLoadError, match="no usable variant"):
        Classifier.load(export)
    with pytest.raises(ModelLoadError, match="status 'failed': flip rate 0.5.*force"):
        Classifier.load(export, variant="onnx-fp32")
    forced = Classifier.load(export, variant="onnx-fp32", force=True)
    assert forced.info.status == "failed" and forced.predict(np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8)).ok


def test_error_variant_without_file_is_refused_even_forced(tiny_export, tmp_path):
    export = copy_export(tiny_export, tmp_path / "export")
    edit_manifest(export, lambda d: d["variants"][0].update(status="error", reason="conversion crashed", file=None))
    with pytest.raises(ModelLoadError, match="status 'error'"):
        Classifier.load(export, variant="onnx-fp32")
    with pytest.raises(ModelLoadError, match="no file"):
        Classifier.load(export, variant="onnx-fp32", force=True)


def test_default_variant_order(tiny_export):
    doc = json.loads((tiny_export / MANIFEST_NAME).read_text())

    def manifest(statuses: dict[str, str]) -> Manifest:
        base = {v["name"]: v for v in doc["variants"]}
        variants = []
        for name, status in statuses.items():
            template = dict(base["onnx-fp32"])
            fmt = name.split("-")[0]
            template.update(name=name, status=status, format=fmt, file=f"{name}.{fmt}")
            variants.append(template)
        return Manifest.from_dict({**doc, "variants": variants})

    ok = "ok"
    assert choose_variant(manifest({"onnx-fp32": ok, "onnx-int8": ok}), None).name == "onnx-int8"
    assert choose_variant(manifest({"onnx-fp32": ok, "onnx-int8": "failed"}), None).name == "onnx-fp32"
    assert choose_variant(manifest({"tflite-fp32": ok, "onnx-fp16": ok, "onnx-fp32": "failed"}), None).name == "onnx-fp16"
    assert choose_variant(manifest({"tflite-fp32": ok, "onnx-fp32": "failed"}), None).name == "tflite-fp32"
    with pytest.raises(ModelLoadError, match="no usable variant.*onnx-fp32 \\(failed\\)"):
        choose_variant(manifest({"onnx-fp32": "failed"}), None)
    with pytest.raises(ModelLoadError, match="no variant 'onnx-fp99'"):
        choose_variant(manifest({"onnx-fp32": ok}), "onnx-fp99")


def test_not_an_export_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no manifest.json"):
        Classifier.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        Classifier.load(tmp_path / "nope")


# ------------------------------------------------------------------ external data


def external_copy(src_onnx: Path, model_dir: Path, data_name: str = "weights.bin") -> tuple[Path, "object"]:
    """Save the model with its weights as external data `model_dir/data_name`; return
    the model path and its ModelProto (with external references) for editing."""
    onnx = needs_module("onnx")
    model = onnx.load(src_onnx)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / "model.onnx"
    onnx.save_model(model, target, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return target, onnx.load(target, load_external_data=False)


def set_locations(proto, location: str) -> int:
    n = 0
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
                n += 1
    return n


def test_external_data_inside_the_folder_works(tiny_export, fp32, tiny_dataset, tmp_path):
    path, proto = external_copy(tiny_export / "onnx-fp32.onnx", tmp_path / "m")
    assert (tmp_path / "m" / "weights.bin").stat().st_size > path.stat().st_size
    assert {loc for _, loc in onnx_external_data(path.read_bytes())} == {"weights.bin"}
    clf = Classifier.load(path)                     # lone ONNX: embedded metadata survived
    images = dataset_images(tiny_dataset, 2)
    np.testing.assert_allclose([p.probability for p in clf.predict(images)],
                               [p.probability for p in fp32.predict(images)], atol=1e-7)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tiny_export, tmp_path, how):
    import onnxruntime as ort

    path, proto = external_copy(tiny_export / "onnx-fp32.onnx", tmp_path / "m")
    secret = tmp_path / "secret.bin"
    os.replace(tmp_path / "m" / "weights.bin", secret)   # the same bytes, now outside the model folder
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "weights.bin"}[how]
    if how == "symlink":
        os.symlink(secret, tmp_path / "m" / "weights.bin")
    assert set_locations(proto, location) > 0
    path.write_bytes(proto.SerializeToString())

    with pytest.raises(ModelLoadError, match="not inside the model's folder"):
        Classifier.load(path)
    with pytest.raises(ModelLoadError, match="not inside the model's folder"):
        check_onnx_external_data(path.read_bytes(), path.parent)
    # ONNX Runtime 1.32 refuses such models by itself too (from a path or from bytes);
    # the runtime's own check also covers releases from before that check.
    with pytest.raises(Exception, match="(?i)external data"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_external_data_walker_finds_attributes_and_subgraphs():
    needs_module("onnx")
    from onnx import TensorProto, helper

    def external(name: str, location: str) -> TensorProto:
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1])
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
        return t

    inner = helper.make_graph([helper.make_node("Constant", [], ["c"], value=external("in_branch", "../b.bin"))],
                              "branch", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Constant", [], ["k"], value=external("attr", "../a.bin")),
             helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              initializer=[external("init", "ok.bin")])
    model = helper.make_model(graph)
    model.metadata_props.add(key="k", value="v")
    data = model.SerializeToString()
    found = sorted(onnx_external_data(data))
    assert found == sorted([("attr", "../a.bin"), ("in_branch", "../b.bin"), ("in_branch", "../b.bin"),
                            ("init", "ok.bin")])
    assert onnx_metadata(data) == {"k": "v"}


def test_truncated_onnx_is_a_clear_error(tiny_export, tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes((tiny_export / "onnx-fp32.onnx").read_bytes()[:5000])
    with pytest.raises(ModelLoadError):
        Classifier.load(path)


# ------------------------------------------------------------------------ threads


def test_physical_core_parsing():
    # 2 sockets x 2 cores x 2 hyper-threads = 8 logical CPUs, 4 physical cores
    blocks = []
    cpu = 0
    for socket in range(2):
        for thread in range(2):
            for core in range(2):
                blocks.append(f"processor\t: {cpu}\nphysical id\t: {socket}\ncore id\t\t: {core}\n")
                cpu += 1
    text = "\n".join(blocks)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if allowed is None or set(range(8)) <= allowed:
        assert physical_cores(text) == 4
    assert physical_cores("no such fields") >= 1


def test_threads_default_and_override(tiny_export):
    assert Classifier.load(tiny_export, variant="onnx-fp32").threads == physical_cores()
    one = Classifier.load(tiny_export, variant="onnx-fp32", threads=1)
    assert one.threads == 1 and one.backend.options.intra_op_num_threads == 1
    with pytest.raises(ValueError, match="positive integer"):
        Classifier.load(tiny_export, threads=0)


def test_threads_are_honoured_by_onnx_runtime(tiny_export):
    """ONNX Runtime starts threads-1 intra-op worker threads (the caller is the first):
    count the process's threads in a fresh interpreter (Linux /proc)."""
    if not Path("/proc/self/task").is_dir():
        missing("needs /proc")
    code = textwrap.dedent(f"""
        import os, sys, numpy as np
        from runtime.classifier import Classifier
        before = len(os.listdir('/proc/self/task'))
        clf = Classifier.load({str(tiny_export)!r}, variant='onnx-fp32', threads=int(sys.argv[1]))
        clf.predict(np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8))
        print(len(os.listdir('/proc/self/task')) - before)
    """)
    for threads in (1, 3):
        out = subprocess.run([sys.executable, "-c", code, str(threads)], cwd=REPO, capture_output=True,
                             text=True, timeout=120, check=True)
        assert int(out.stdout.split()[-1]) == threads - 1


# ------------------------------------------------------------------------ light import


def test_runtime_imports_no_heavy_packages(tiny_export, tiny_dataset):
    """Importing every runtime module and classifying an image (with Grad-CAM) loads
    none of TensorFlow, Keras, Gradio, scikit-learn, torch or onnx."""
    image = dataset_images(tiny_dataset, 1)[0]
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import runtime
        for m in pkgutil.iter_modules(runtime.__path__):
            importlib.import_module('runtime.' + m.name)
        from runtime.classifier import Classifier
        from runtime.predict_files import predict_paths
        clf = Classifier.load({str(tiny_export)!r})
        [pred] = predict_paths(clf, [{str(image)!r}])
        assert pred.ok, pred.error
        heavy = {HEAVY!r}
        print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------ TFLite


@pytest.fixture(scope="module")
def tflite_export(graded_run, tmp_path_factory) -> Path:
    needs_module("ai_edge_litert")
    from export import ExportConfig, export_run

    out = tmp_path_factory.mktemp("tflite-export")
    export_run(ExportConfig(run_dir=str(graded_run), out=str(out), formats=("tflite-fp32",),
                            max_flip_rate=1.0, max_auc_drop=1.0))
    return out


@pytest.mark.slow   # exports TFLite
def test_tflite_variant_matches_onnx(tflite_export, fp32, tiny_dataset):
    clf = Classifier.load(tflite_export)
    assert clf.info.format == "tflite" and clf.has_cam and clf.threads == physical_cores()
    paths = dataset_images(tiny_dataset, 5)
    tfl = clf.predict(paths, with_cam=True, batch_size=3)   # batch sizes 3 then 2: resizing
    ref = fp32.predict(paths, with_cam=True)
    np.testing.assert_allclose([p.probability for p in tfl], [p.probability for p in ref], atol=1e-4)
    for a, b in zip(tfl, ref):
        assert a.cam.shape == b.cam.shape
        assert np.abs(a.cam - b.cam).max() < 1e-2
    assert Classifier.load(tflite_export / "tflite-fp32.tflite", threads=1).threads == 1


@pytest.mark.slow   # exports TFLite
def test_lone_tflite_is_refused(tflite_export, tmp_path):
    shutil.copy(tflite_export / "tflite-fp32.tflite", tmp_path / "m.tflite")
    with pytest.raises(ModelLoadError, match="carries no preprocessing"):
        Classifier.load(tmp_path / "m.tflite")


# ------------------------------------------------------------------------ heat maps


def test_normalize_cam():
    np.testing.assert_allclose(gradcam.normalize_cam(np.array([[0.0, 2.0], [-1.0, 4.0]])),
                               [[0.0, 0.5], [0.0, 1.0]])
    assert not gradcam.normalize_cam(np.zeros((3, 3))).any()
    assert not gradcam.normalize_cam(np.full((2, 2), np.nan)).any()


def test_overlay_and_save(tmp_path):
    image = np.full((50, 80, 3), 128, np.uint8)
    cam = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)   # hot top-right corner
    out = gradcam.overlay(image, cam)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[5, 75, 2] > out[45, 5, 2]                  # JET: hot = red, cold = blue
    assert out[45, 5, 0] > out[45, 5, 2]
    target = tmp_path / "sub" / "x_gradcam.png"
    gradcam.save_overlay(image, cam, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(target)).shape == image.shape
    assert [p.name for p in target.parent.iterdir()] == ["x_gradcam.png"]   # no temp files left
