"""Hostile or broken model files: each is built for real and must be refused with a
clear ModelLoadError/ValueError, never run, never crash the process. (External data
outside the folder, code-carrying suffixes and a flipped byte are in test_classifier.py.)"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.classifier import Classifier
from runtime.manifest import MANIFEST_NAME
from runtime.model_files import ModelLoadError
from tests.conftest import needs_module

REPO = Path(__file__).resolve().parents[2]


def export_with(tiny_export: Path, dst: Path, name: str, fmt: str, data: bytes, *, checksum: bool = True) -> Path:
    """A copy of the tiny export's manifest with one variant whose file holds `data`
    (its sha256 recorded, so the file itself is what gets tested, not the checksum)."""
    dst.mkdir(parents=True)
    doc = json.loads((tiny_export / MANIFEST_NAME).read_text())
    entry = dict(next(v for v in doc["variants"] if v["name"] == "onnx-fp32"))
    file = f"{name}.{fmt}"
    (dst / file).write_bytes(data)
    entry.update(name=name, format=fmt, file=file, size_bytes=len(data),
                 sha256=hashlib.sha256(data).hexdigest() if checksum else entry["sha256"])
    if fmt == "tflite":
        entry.update(outputs=["malignancy"])
        entry.pop("ood", None)      # a one-output variant has no out-of-distribution threshold
    doc["variants"] = [entry]
    (dst / MANIFEST_NAME).write_text(json.dumps(doc))
    return dst


RANDOM = np.random.default_rng(7).integers(0, 256, 200_000, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "empty"])
def test_broken_onnx_files_are_refused(tiny_export, tmp_path, kind):
    good = (tiny_export / "onnx-fp32.onnx").read_bytes()
    data = {"truncated": good[:len(good) // 3], "random bytes": RANDOM, "empty": b""}[kind]
    export = export_with(tiny_export, tmp_path / "export", "onnx-fp32", "onnx", data)
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load it|not a valid|cannot"):
        Classifier.load(export)
    lone = tmp_path / "lone.onnx"                      # the same bytes as a lone file
    lone.write_bytes(data)
    with pytest.raises(ModelLoadError):
        Classifier.load(lone)


@pytest.mark.parametrize("kind", ["truncated onnx bytes", "random bytes", "tflite header only"])
def test_broken_tflite_files_are_refused(tiny_export, tmp_path, kind):
    needs_module("ai_edge_litert")   # LiteRT, the 'tflite' extra
    data = {"truncated onnx bytes": (tiny_export / "onnx-fp32.onnx").read_bytes()[:4000],
            "random bytes": RANDOM,
            # the FlatBuffer file identifier "TFL3" at offset 4, then garbage offsets
            "tflite header only": b"\x1c\x00\x00\x00TFL3" + RANDOM[:2000]}[kind]
    export = export_with(tiny_export, tmp_path / "export", "tflite-fp32", "tflite", data)
    with pytest.raises(ModelLoadError):
        Classifier.load(export)


def test_tampered_file_with_a_stale_checksum_is_refused(tiny_export, tmp_path):
    export = export_with(tiny_export, tmp_path / "export", "onnx-fp32", "onnx", RANDOM, checksum=False)
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        Classifier.load(export)


def _copy(tiny_export: Path, dst: Path) -> Path:
    dst.mkdir()
    shutil.copy(tiny_export / "onnx-fp32.onnx", dst / "onnx-fp32.onnx")
    doc = json.loads((tiny_export / MANIFEST_NAME).read_text())
    doc["variants"] = [v for v in doc["variants"] if v["name"] == "onnx-fp32"]
    (dst / MANIFEST_NAME).write_text(json.dumps(doc))
    return dst


MANIFEST_EDITS = {
    "unknown top-level field": (lambda d: d.update(run_this="import os"), r"unknown field\(s\) 'run_this'"),
    "unknown variant field": (lambda d: d["variants"][0].update(loader="pickle"), r"unknown field\(s\) 'loader'"),
    "missing threshold": (lambda d: d.pop("threshold"), r"threshold: missing"),
    "missing preprocessing.mean": (lambda d: d["preprocessing"].pop("mean"), r"preprocessing\.mean: missing"),
    "missing variant sha256 field": (lambda d: d["variants"][0].pop("sha256"), r"no sha256"),
    "missing labels": (lambda d: d.pop("labels"), r"labels: missing"),
    "threshold not a probability": (lambda d: d["threshold"].update(value=7), r"not a probability"),
    "wrong type": (lambda d: d.update(variants={"a": 1}), r"variants: expected list"),
    "unknown int8 weights": (lambda d: d["variants"][0].update(int8_weights="int4"), r"int8_weights"),
    "other schema version": (lambda d: d.update(schema_version=99), r"unknown manifest schema version 99"),
}


@pytest.mark.parametrize("case", MANIFEST_EDITS, ids=list(MANIFEST_EDITS))
def test_manifest_with_unknown_or_missing_fields_is_refused(tiny_export, tmp_path, case):
    edit, message = MANIFEST_EDITS[case]
    export = _copy(tiny_export, tmp_path / "export")
    doc = json.loads((export / MANIFEST_NAME).read_text())
    edit(doc)
    (export / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        Classifier.load(export)


def test_manifest_that_is_not_json_is_refused(tiny_export, tmp_path):
    export = _copy(tiny_export, tmp_path / "export")
    (export / MANIFEST_NAME).write_bytes(RANDOM[:3000])
    with pytest.raises(ValueError, match="not valid JSON"):
        Classifier.load(export)


def test_the_untouched_copy_loads(tiny_export, tmp_path):
    """The edits above are what make the loads fail: the same copy unedited works."""
    export = _copy(tiny_export, tmp_path / "export")
    assert Classifier.load(export).variant == "onnx-fp32"


# ------------------------------------------------------------------- Keras files


def test_no_code_loads_keras_files_with_safe_mode_off():
    """safe_mode=False would let a Lambda layer's marshalled bytecode run on load."""
    offenders = []
    for folder in ("train", "export", "benchmarks", "runtime", "demo", "bcd"):
        for path in (REPO / folder).rglob("*.py"):
            if re.search(r"safe_mode\s*=\s*False|enable_unsafe_deserialization", path.read_text()):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_keras_file_with_a_lambda_layer_is_refused(tmp_path):
    """The loaders training, evaluation and export use (keras.models.load_model with
    the default safe_mode) refuse a model.keras that carries a Python lambda."""
    from train.evaluate import _load_keras
    from train.tf_setup import keras

    marker = tmp_path / "ran.txt"
    # the path is a constant inside the lambda's bytecode (a closure would not serialise)
    payload = eval(f"lambda x: x * 2 + (open({str(marker)!r}, 'w').close() or 0)")  # noqa: S307
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(payload)(inputs)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    assert marker.exists()                             # building the model ran the payload once
    os.remove(marker)
    with pytest.raises(ValueError, match="(?i)lambda.*(unsafe|safe_mode)|safe_mode"):
        _load_keras(path)
    assert not marker.exists()
