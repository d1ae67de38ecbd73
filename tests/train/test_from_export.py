"""A run rebuilt from an export (`python -m train.from_export`): the classifier's weights
read back from the ONNX files, so that a model whose Keras original is gone can be
fine-tuned (`bcd train --weights REBUILT`)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WEIGHTED = ("Conv2D", "Dense")


def _weighted_layers(model):
    return [layer for layer in model.layers if type(layer).__name__ in WEIGHTED]


def _load(path):
    from train.tf_setup import keras
    return keras.models.load_model(path / "model.keras", compile=False)


def test_a_float_export_gives_back_the_original_weights(tiny_export, graded_run, tmp_path):
    from train.from_export import rebuild

    rebuild(tiny_export, tmp_path / "rebuilt")
    original, rebuilt = _load(graded_run), _load(tmp_path / "rebuilt")
    layers = _weighted_layers(original)
    assert len(layers) == 13 + 2
    for layer in layers:
        for mine, theirs in zip(rebuilt.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6, err_msg=layer.name)


def test_an_int8_export_gives_weights_within_half_a_quantization_step(tiny_export, graded_run, tiny_dataset,
                                                                       tmp_path):
    from tests.conftest import head_logits
    from train.from_export import rebuild

    info = rebuild(tiny_export, tmp_path / "rebuilt", variant="onnx-int8")
    assert info["rebuilt_from_export"]["file"] == "onnx-int8.onnx"
    original, rebuilt = _load(graded_run), _load(tmp_path / "rebuilt")
    changed = 0
    for layer in _weighted_layers(original):
        kernel, mine = layer.get_weights()[0], rebuilt.get_layer(layer.name).get_weights()[0]
        # per output channel, symmetric: a step is at most max|w| / 63 (7-bit range, reduce_range)
        step = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0) / 63
        assert np.all(np.abs(mine - kernel) <= step / 2 + 1e-7), layer.name
        changed += int(np.any(mine != kernel))
    assert changed >= 10                              # they really went through int8
    a, b = head_logits(original, graded_run, tiny_dataset), head_logits(rebuilt, graded_run, tiny_dataset)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_the_run_directory_is_what_fine_tuning_reads(tiny_export, tmp_path):
    from train.config import parent_input_settings
    from train.from_export import rebuild

    out = tmp_path / "rebuilt"
    rebuild(tiny_export, out)
    assert (out / "split.json").read_bytes() == (tiny_export / "split.json").read_bytes()
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    settings = parent_input_settings(out)
    assert settings["scan_region"] == manifest["scan_region"]["mode"]
    assert settings["thin_marks"] == manifest["preprocessing"].get("thin_marks", "keep")
    assert json.loads((out / "run.json").read_text())["config"]["image_size"] == manifest["preprocessing"]["image_size"]
    assert not (tmp_path / "rebuilt.partial").exists()


def test_plain_refusals(tiny_export, tmp_path, capsys):
    from train.from_export import main

    (tmp_path / "taken").mkdir()
    assert main([str(tiny_export), "--out", str(tmp_path / "taken")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([str(tmp_path / "taken"), "--out", str(tmp_path / "x")]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert main([str(tiny_export), "--out", str(tmp_path / "y"), "--variant", "tflite-int8"]) == 2
    err = capsys.readouterr().err
    assert "onnx-fp32" in err and "onnx-int8" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_fine_tuning_from_it_keeps_the_exports_split(tiny_export, tiny_dataset, tmp_path):
    from train.config import TrainConfig
    from train.from_export import rebuild
    from train.trainer import train

    parent = tmp_path / "rebuilt"
    rebuild(tiny_export, parent)
    run = train(TrainConfig(out=str(tmp_path / "tuned"), data=str(tiny_dataset), image_size=32, epochs=1,
                            head_epochs=0, batch_size=8, bootstrap_resamples=50, weights=str(parent))).root
    theirs = json.loads((parent / "split.json").read_text())["files"]
    mine = json.loads((run / "split.json").read_text())["files"]
    assert {f["path"] for f in mine["test"]} == {f["path"] for f in theirs["test"]}
    info = json.loads((run / "run.json").read_text())
    assert "from an earlier run" in json.dumps(info)
    shutil.rmtree(run)
