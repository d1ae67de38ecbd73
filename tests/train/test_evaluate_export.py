"""`bcd evaluate EXPORT_DIR`: scoring an export through the runtime, as a clinic runs it
(the shipped reference model has no model.keras to score)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bcd.cli import main


def _keras_probabilities(run: Path, files: list[dict]) -> np.ndarray:
    from runtime.preprocessing import PreprocessSpec
    from train.data import load_files
    from train.evaluate import predict_probabilities
    from train.tf_setup import keras

    split = json.loads((run / "split.json").read_text())
    spec = PreprocessSpec.from_dict(json.loads((run / "run.json").read_text())["preprocessing"])
    model = keras.models.load_model(run / "model.keras", compile=False)
    images = load_files(Path(split["data_root"]), [f["path"] for f in files], spec)
    return predict_probabilities(model, images, spec)


def test_export_carries_its_split(graded_run, tiny_export):
    assert (tiny_export / "split.json").read_bytes() == (graded_run / "split.json").read_bytes()


def test_evaluate_export_rescores_the_test_split_like_keras(graded_run, tiny_export, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_export), "--variant", "onnx-fp32", "--out", str(out),
                 "--bootstrap", "100"]) == 0
    assert "Research and education only" in capsys.readouterr().out
    files = json.loads((graded_run / "split.json").read_text())["files"]["test"]
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["path"] for p in preds] == [f["path"] for f in files]
    # FP32 ONNX reading the original files must agree with Keras on the same split.
    expected = _keras_probabilities(graded_run, files)
    np.testing.assert_allclose([p["probability"] for p in preds], expected, atol=1e-4)
    doc = json.loads((out / "metrics.json").read_text())
    block = doc["at_operating_threshold"]
    assert doc["threshold"]["value"] == 0.5 and doc["threshold"]["chosen_on"] == "validation split"
    labels = [f["label"] for f in files]
    assert block["confusion_matrix"]["tp"] == sum(y == 1 and p >= 0.5 for y, p in zip(labels, expected))
    assert doc["model"] == f"{tiny_export.name}/onnx-fp32"


def test_evaluate_export_val_split_and_folder(graded_run, tiny_export, tiny_dataset, tmp_path):
    split = json.loads((graded_run / "split.json").read_text())
    assert main(["evaluate", str(tiny_export), "--split", "val", "--out", str(tmp_path / "v"),
                 "--bootstrap", "50"]) == 0
    doc = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert doc["at_operating_threshold"]["n"] == len(split["files"]["val"])
    from runtime.classifier import Classifier
    with Classifier.load(tiny_export) as default:       # the runtime's default variant is scored
        assert doc["model"] == f"{tiny_export.name}/{default.variant}"
        chosen = default.manifest.variant(default.variant).ood
    # the OOD flags are counted; on the split its threshold was chosen on, as many as the export saw
    ood = doc["out_of_distribution"]
    assert ood["n"] == chosen["n"] and ood["threshold"] == chosen["threshold"]
    assert ood["flagged"] == round(chosen["false_alarm_rate"] * chosen["n"]) == len(ood["flagged_paths"])
    assert "Out-of-distribution flag:" in (tmp_path / "v" / "metrics.md").read_text()
    assert main(["evaluate", str(tiny_export), "--data", str(tiny_dataset), "--out", str(tmp_path / "f"),
                 "--bootstrap", "50"]) == 0
    n_images = len([p for p in tiny_dataset.rglob("*.png") if "_mask" not in p.stem])
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["at_operating_threshold"]["n"] == n_images


def test_evaluate_export_errors_are_clear(tiny_export, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_export, bare)
    (bare / "split.json").unlink()
    assert main(["evaluate", str(bare)]) == 2
    assert "no split.json" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_export), "--split-root", str(tmp_path / "moved")]) == 2
    assert "--split-root" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "no such run or export directory" in capsys.readouterr().err


def test_evaluate_export_counts_images_it_cannot_classify(tiny_export, tiny_dataset, tmp_path):
    """A refused image (2x2) and an unreadable one are counted under not_classified and
    left out of the metrics; the others are scored."""
    import cv2

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    cv2.imwrite(str(data / "benign" / "tiny.png"), np.zeros((2, 2), np.uint8))
    (data / "malignant" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_export), "--data", str(data), "--out", str(out), "--bootstrap", "50"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    n_images = len([p for p in tiny_dataset.rglob("*.png") if "_mask" not in p.stem])
    assert doc["at_operating_threshold"]["n"] == n_images
    assert doc["not_classified"]["count"] == 2
    errors = " ".join(doc["not_classified"]["errors"])
    assert "tiny.png: refused, not a usable ultrasound scan" in errors and "broken.png: not a readable image" in errors
