"""How onnx-int8 stores its weights (--int8-weights): 7 bits, uint8, or auto (7 bits, and
uint8 again when the 7-bit file fails the parity checks)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from bcd.cli import main
from runtime.manifest import read_manifest

DEAD_UNIT = 0
OUTLIER = 140.0     # the dead unit's output weight, in multiples of the largest other one


@pytest.fixture(scope="module")
def outlier_run(graded_run, tiny_dataset, tmp_path_factory) -> Path:
    """graded_run with one head unit that is always 0 (zero kernel, negative bias) and a
    large output weight on it. The weight changes nothing in float; but the output layer
    has a single channel, so that weight alone sets its quantization step: 7 bits (step =
    weight / 63) round every other output weight (at most 1/140 of it) to zero and every
    image gets the same probability, while uint8's 255 steps keep them. The output bias is
    moved so that the threshold (0.5) stays at the median image of tiny_dataset."""
    from tests.conftest import head_logits
    from train.tf_setup import keras

    run = tmp_path_factory.mktemp("runs") / "outlier"
    shutil.copytree(graded_run, run)
    model = keras.models.load_model(run / "model.keras", compile=False)
    head, out = model.get_layer("head_dense"), model.get_layer("malignancy")
    kernel, bias = head.get_weights()
    kernel[:, DEAD_UNIT], bias[DEAD_UNIT] = 0.0, -1.0
    head.set_weights([kernel, bias])
    weights, out_bias = out.get_weights()
    out.set_weights([weights, out_bias - float(np.median(head_logits(model, run, tiny_dataset)))])
    weights, out_bias = out.get_weights()
    weights[DEAD_UNIT, 0] = OUTLIER * float(np.abs(np.delete(weights[:, 0], DEAD_UNIT)).max())
    out.set_weights([weights, out_bias])
    model.save(run / "model.keras")
    return run


def export(run: Path, out: Path, data: Path, weights: str):
    from export import ExportConfig, export_run
    # the parity checks on the 20 images of tiny_dataset: the 3 of the tiny validation split
    # are too few to tell 7-bit from uint8 weights
    return export_run(ExportConfig(run_dir=str(run), out=str(out), formats=("onnx-int8",), int8_weights=weights,
                                   parity_data=str(data), ood=False))


def weight_types(path: Path) -> set[int]:
    """The element types of the quantized conv and dense weights (the constants that the
    DequantizeLinear nodes feeding a Conv's or MatMul's second input read)."""
    model = onnx.load(str(path))
    types = {init.name: init.data_type for init in model.graph.initializer}
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}
    found = {types[n.input[0]] for n in model.graph.node
             if n.op_type == "DequantizeLinear" and n.output[0] in weights and n.input[0] in types}
    assert found, "no quantized weights"
    return found


def test_the_outlier_changes_nothing_in_float(outlier_run, tiny_dataset):
    from tests.conftest import head_logits
    from train.tf_setup import keras
    model = keras.models.load_model(outlier_run / "model.keras", compile=False)
    with_outlier = head_logits(model, outlier_run, tiny_dataset)
    out = model.get_layer("malignancy")
    weights, bias = out.get_weights()
    assert np.abs(weights[DEAD_UNIT, 0]) >= OUTLIER * np.abs(np.delete(weights[:, 0], DEAD_UNIT)).max() * 0.999
    weights[DEAD_UNIT, 0] = 0.0
    out.set_weights([weights, bias])
    assert np.allclose(with_outlier, head_logits(model, outlier_run, tiny_dataset), atol=1e-5)
    assert float(np.std(with_outlier)) > 0.1 and abs(float(np.median(with_outlier))) < 1e-4


@pytest.mark.slow   # exports twice
def test_auto_quantizes_again_with_uint8_when_7_bits_fail(outlier_run, tiny_dataset, tmp_path):
    result = export(outlier_run, tmp_path / "auto", tiny_dataset, "auto")
    entry = read_manifest(result.export_dir).variant("onnx-int8")
    retry = [n for n in entry.notes if n.startswith("7-bit weights failed the parity checks")]
    assert len(retry) == 1 and retry[0].endswith("kept the uint8 file"), entry.notes
    assert any("uint8 weights in 8 bits" in n for n in entry.notes)
    assert weight_types(result.export_dir / entry.file) == {onnx.TensorProto.UINT8}
    assert entry.int8_weights == "uint8"          # the manifest says which file was kept
    # the file kept changes fewer calls than the 7-bit one, whose probabilities are all equal
    seven = export(outlier_run, tmp_path / "seven", tiny_dataset, "7bit")
    first = read_manifest(seven.export_dir).variant("onnx-int8")
    assert first.status == "failed" and first.parity.flip_rate >= 0.3, first.parity
    assert entry.parity.flip_rate < first.parity.flip_rate
    assert entry.parity.max_abs_diff < first.parity.max_abs_diff
    assert weight_types(seven.export_dir / first.file) == {onnx.TensorProto.INT8} and first.int8_weights == "7bit"
    assert not any(n.startswith("7-bit weights failed") for n in first.notes)   # 7bit: no second try
    settings = json.loads((result.export_dir / "manifest.json").read_text())["export_settings"]["calibration"]
    assert settings["int8_weights"] == "auto"


@pytest.mark.slow   # exports
def test_cli_uint8_weights_and_a_passing_file_is_not_quantized_again(graded_run, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "u8"
    assert main(["export", str(graded_run), "--out", str(out), "--formats", "onnx-int8", "--int8-weights", "uint8",
                 "--max-auc-drop", "1", "--max-flip-rate", "1", "--no-ood"]) == 0
    entry = read_manifest(out).variant("onnx-int8")
    assert weight_types(out / entry.file) == {onnx.TensorProto.UINT8} and entry.int8_weights == "uint8"
    assert not any(n.startswith("7-bit weights failed") for n in entry.notes)
    # auto, and the 7-bit file passes: it is kept as it is
    out = tmp_path / "auto"
    assert main(["export", str(graded_run), "--out", str(out), "--formats", "onnx-int8",
                 "--max-auc-drop", "1", "--max-flip-rate", "1", "--no-ood"]) == 0
    entry = read_manifest(out).variant("onnx-int8")
    assert weight_types(out / entry.file) == {onnx.TensorProto.INT8} and entry.int8_weights == "7bit"
    assert not any(n.startswith("7-bit weights failed") for n in entry.notes)
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["export", str(graded_run), "--out", str(tmp_path / "x"), "--int8-weights", "int4"])
    assert refused.value.code == 2 and "--int8-weights" in capsys.readouterr().err


def test_the_manifest_knows_every_kind_of_int8_weights():
    from export.onnx_convert import INT8_WEIGHTS
    from runtime.manifest import INT8_WEIGHT_KINDS

    assert set(INT8_WEIGHTS) == set(INT8_WEIGHT_KINDS)
