"""The runtime's lesion localiser: loading from an export directory (checks as strict as the
classifier's), the map's shape and range, the proposed box, the manifest section, the
box figures. The ONNX graph here is built by hand (no TensorFlow): a brightness detector
that maps the prepared image's channel mean through a sigmoid at half resolution, so a
bright blob is "the lesion" and the assertions are about a real computation."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from runtime.lesion_box import Box, box_from_map, iou, mask_box
from runtime.lesion_scores import BoxScore, choose_threshold, score_box, summary, summary_by
from runtime.localiser import Localiser, map_to_image
from runtime.manifest import (LOCALISER_FILE, LocaliserEntry, Manifest, VariantEntry, read_manifest, write_localiser,
                              write_manifest)
from runtime.model_files import ModelLoadError, sha256_file
from runtime.shipped import shipped_models
from tests.conftest import needs_module

SIZE = 32
SPEC = {"image_size": SIZE, "channel_order": "BGR", "layout": "NHWC", "interpolation": "area",
        "mean": [100.0, 100.0, 100.0], "std": [1.0, 1.0, 1.0], "version": 1}


def brightness_localiser() -> bytes:
    """image (N, 32, 32, 3) prepared -> lesion (N, 16, 16, 1) = sigmoid(mean over channels
    and 2x2 cells / 10): ~1 where the pixels are well above the mean (100), ~0 below."""
    onnx = needs_module("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["nchw"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mul", ["pooled", "scale"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["prob"]),
        helper.make_node("Transpose", ["prob"], ["lesion"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes, "brightness",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("lesion", TensorProto.FLOAT, ["batch", SIZE // 2, SIZE // 2, 1])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def classifier_manifest(size: int = SIZE) -> Manifest:
    """A valid manifest of a classifier export (its variant file is not needed here)."""
    return Manifest(
        tool={"name": "breast-cancer-edge", "version": "0"}, created="2024-01-01T00:00:00+00:00",
        source_model={"path": "run/model.keras", "sha256": "1" * 64}, preprocessing=dict(SPEC, image_size=size),
        labels={"names": ["benign", "malignant"], "positive": "malignant"},
        threshold={"value": 0.3, "chosen_on": "validation split", "policy": "p"},
        input={"name": "image", "shape": [None, size, size, 3], "dtype": "float32", "layout": "NHWC"},
        training_data={}, baseline={"auc": 0.9, "n": 10},
        variants=[VariantEntry(name="onnx-fp32", format="onnx", precision="fp32", file="onnx-fp32.onnx",
                               sha256="0" * 64, size_bytes=10, outputs=["malignancy"], status="ok")])


def entry_for(path: Path, **changes) -> LocaliserEntry:
    entry = LocaliserEntry(file=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size,
                           preprocessing=dict(SPEC), output_size=[SIZE // 2, SIZE // 2], threshold=0.5, margin=0.0,
                           source_run="run", params=0,
                           figures={"test": {"all": {"lesion_images": 3, "found": 1.0}}})
    return replace(entry, **changes)


@pytest.fixture
def export_dir(tmp_path) -> Path:
    out = tmp_path / "export"
    out.mkdir()
    (out / LOCALISER_FILE).write_bytes(brightness_localiser())
    manifest = classifier_manifest()
    manifest.localiser = entry_for(out / LOCALISER_FILE)
    write_manifest(out, manifest)
    return out


def scan_with_blob(height: int, width: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A dark noisy picture with a bright rectangle-ish blob (an ellipse filling `box`)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 10, (height, width)).clip(0, 255)
    x, y, w, h = box
    yy, xx = np.mgrid[:height, :width]
    inside = ((xx - (x + w / 2)) / (w / 2)) ** 2 + ((yy - (y + h / 2)) / (h / 2)) ** 2 <= 1
    image[inside] = 220
    return np.repeat(image[..., None], 3, axis=2).astype(np.uint8)


# --------------------------------------------------------------------------- loading

def test_loads_from_the_export_and_maps_at_the_image_size(export_dir):
    loc = Localiser.load(export_dir)
    assert loc is not None and loc.threshold == 0.5 and loc.spec.image_size == SIZE
    image = scan_with_blob(300, 420, (200, 90, 120, 100))
    heat = loc.lesion_map(image)
    assert heat.shape == (300, 420) and heat.dtype == np.float32
    assert 0.0 <= float(heat.min()) and float(heat.max()) <= 1.0
    assert heat[140, 260] > 0.9 and heat[20, 20] < 0.1          # the blob, the background
    box = loc.propose(image)
    assert box is not None and iou(box, Box(200, 90, 120, 100)) > 0.7
    # the manifest path works as well as the folder; a batch gives the same maps
    again = Localiser.load(export_dir / "manifest.json")
    np.testing.assert_allclose(again.lesion_maps([image, image[:200]])[0], heat, atol=1e-6)


def test_nothing_bright_proposes_no_box(export_dir):
    loc = Localiser.load(export_dir)
    dark = np.full((64, 64, 3), 30, np.uint8)
    assert float(loc.lesion_map(dark).max()) < 0.01
    assert loc.propose(dark) is None


def test_a_manifest_without_localiser_gives_none(export_dir):
    write_localiser(export_dir, None)
    assert read_manifest(export_dir).localiser is None
    assert "localiser" not in json.loads((export_dir / "manifest.json").read_text())
    assert Localiser.load(export_dir) is None


def test_shipped_models_load_without_a_localiser_section(tmp_path):
    shipped = [p for p in shipped_models() if "localiser" not in json.loads((p / "manifest.json").read_text())]
    if not shipped:
        if not shipped_models():
            pytest.skip("no shipped models")
        # every shipped model carries one now: a copy of the first with the section removed
        copy = tmp_path / "plain"
        shutil.copytree(shipped_models()[0], copy, ignore=shutil.ignore_patterns("eval-*"))
        write_localiser(copy, None)
        shipped = [copy]
    assert Localiser.load(shipped[0]) is None


def test_sha256_mismatch_is_refused(export_dir):
    data = bytearray((export_dir / LOCALISER_FILE).read_bytes())
    data[-1] ^= 0xFF
    (export_dir / LOCALISER_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        Localiser.load(export_dir)


def test_a_file_outside_the_export_or_missing_is_refused(export_dir, tmp_path):
    (tmp_path / "elsewhere.onnx").write_bytes((export_dir / LOCALISER_FILE).read_bytes())
    manifest = read_manifest(export_dir)
    write_localiser(export_dir, replace(manifest.localiser, file="../elsewhere.onnx"))
    with pytest.raises(ModelLoadError, match="outside"):
        Localiser.load(export_dir)
    write_localiser(export_dir, replace(manifest.localiser, file="gone.onnx"))
    with pytest.raises(FileNotFoundError, match="gone.onnx"):
        Localiser.load(export_dir)
    write_localiser(export_dir, replace(manifest.localiser, output="mask"))
    with pytest.raises(ModelLoadError, match="outputs"):
        Localiser.load(export_dir)


def test_bad_images_are_a_clear_error(export_dir):
    loc = Localiser.load(export_dir)
    for bad in (np.zeros((32, 32), np.uint8), np.zeros((32, 32, 3), np.float32), "scan.png"):
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            loc.lesion_map(bad)


# --------------------------------------------------------------------------- the manifest section

def test_manifest_section_round_trips_and_is_checked(export_dir):
    manifest = read_manifest(export_dir)
    doc = manifest.to_dict()
    assert Manifest.from_dict(json.loads(json.dumps(doc))) == manifest
    assert manifest.localiser.input_size == SIZE

    def broken(mutate) -> dict:
        d = json.loads(json.dumps(doc))
        mutate(d["localiser"])
        return d

    for mutate, message in [
        (lambda d: d.update(threshold=1.5), "localiser.threshold"),
        (lambda d: d.update(output_size=[16]), "localiser.output_size"),
        (lambda d: d.update(format="tflite"), "localiser.format"),
        (lambda d: d.pop("sha256"), "localiser.sha256: missing"),
        (lambda d: d.update(colour="blue"), "unknown field(s) 'colour'"),
        (lambda d: d["preprocessing"].pop("image_size"), "image_size: missing"),
    ]:
        with pytest.raises(ValueError, match=__import__("re").escape(message)):
            Manifest.from_dict(broken(mutate))


# --------------------------------------------------------------------------- the figures

def test_box_scores():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:60, 30:70] = 1
    exact = score_box(mask_box(mask), mask)
    assert exact == BoxScore(True, True, 1.0, True) and exact.found
    shifted = score_box(Box(50, 20, 40, 40), mask)         # half the lesion, centre (49.5, 39.5) outside
    assert shifted.iou == pytest.approx(20 * 40 / (2 * 1600 - 800)) and not shifted.found
    assert not shifted.centre_inside
    assert score_box(None, mask) == BoxScore(True, False, 0.0, False)
    empty = np.zeros_like(mask)
    assert score_box(Box(0, 0, 5, 5), empty) == BoxScore(False, True, 0.0, False)
    s = summary([exact, shifted, score_box(None, mask), score_box(Box(0, 0, 5, 5), empty), score_box(None, empty)])
    assert s["lesion_images"] == 3 and s["found"] == pytest.approx(1 / 3) and s["no_box"] == pytest.approx(1 / 3)
    assert s["images_without_lesion"] == 2 and s["box_without_lesion"] == 0.5
    by = summary_by([exact, shifted], ["a", "b"])
    assert by["a"]["found"] == 1.0 and by["b"]["found"] == 0.0 and by["all"]["found"] == 0.5


def test_threshold_choice_finds_the_level_that_separates_lesions():
    # maps: the lesion at 0.8, a halo around it at 0.5, background 0.1: thresholds
    # at or below 0.5 give the halo's (too big) box, above it the lesion's
    masks, maps = [], []
    for k in range(6):
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + k:30 + k, 12:40] = 1
        heat = np.full((64, 64), 0.1, np.float32)
        heat[0:50, 0:60] = 0.5
        heat[mask > 0] = 0.8
        masks.append(mask)
        maps.append(heat)
    threshold, table = choose_threshold(maps, masks, ["s"] * 6, (0.3, 0.5, 0.6, 0.9), margin=0.0)
    assert threshold == 0.6
    assert {r["threshold"]: r["found"] for r in table} == {0.3: 0.0, 0.5: 0.0, 0.6: 1.0, 0.9: 0.0}


def test_map_to_image_stretches_and_clips():
    raw = np.array([[0.0, 1.0], [2.0, np.nan]], np.float32)
    out = map_to_image(raw[None, ..., None], 4, 6)
    assert out.shape == (4, 6) and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    assert box_from_map(out, 0.99, 0.0) is not None
