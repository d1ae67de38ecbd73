"""The grey map (`bcd train --grey-map equalize`) reaches the model the same way in
training (tf.data), in the export's manifest and at run time (runtime.preprocessing)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.preprocessing import PreprocessSpec, normalize

EQUALIZE = PreprocessSpec(image_size=32, grey_map="equalize")


def test_training_batches_get_exactly_the_runtime_input():
    from train.tf_setup import normalize_tensor, tf
    batch = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    batch[..., 1] = batch[..., 2] = batch[..., 0]
    ds = tf.data.Dataset.from_tensor_slices(batch).batch(2).map(lambda x: normalize_tensor(x, EQUALIZE))
    got = np.concatenate([b.numpy() for b in ds])
    assert np.array_equal(got, normalize(batch, EQUALIZE))
    assert not np.allclose(got, normalize(batch, PreprocessSpec(image_size=32)), atol=1)   # it did something
    assert next(iter(ds)).shape == (2, 32, 32, 3)


def test_option_reaches_the_config_and_a_fine_tuning_run_inherits_it(tmp_path):
    from bcd.cli import build_parser, train_config
    from train.config import TrainConfig

    def config(*argv):
        return train_config(build_parser().parse_args(["train", "--out", "x", *argv]))
    assert config("--grey-map", "equalize").grey_map == "equalize"
    assert config().grey_map == "keep" and TrainConfig(out="x").grey_map == "keep"
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "run.json").write_text(json.dumps({"config": {"grey_map": "equalize"}}))
    assert config("--weights", str(parent)).grey_map == "equalize"
    (parent / "run.json").write_text(json.dumps({"config": {}}))          # a run from before it
    assert config("--weights", str(parent)).grey_map == "keep"
    with pytest.raises(ValueError, match="grey map"):
        TrainConfig(out="x", grey_map="clahe")


def test_the_export_records_it_and_the_runtime_applies_it(graded_run, tiny_dataset, tmp_path):
    """The tiny model with its preprocessing switched to equalize (the plumbing, not the
    accuracy): the runtime's probability is the Keras model's on the equalized input."""
    from export import ExportConfig, export_run
    from runtime.classifier import Classifier
    from runtime.images import read_image
    from runtime.preprocessing import prepare_batch
    from train.tf_setup import keras

    run = tmp_path / "run"
    shutil.copytree(graded_run, run)
    info = json.loads((run / "run.json").read_text())
    info["preprocessing"]["grey_map"] = "equalize"
    (run / "run.json").write_text(json.dumps(info))
    out = tmp_path / "export"
    export_run(ExportConfig(run_dir=str(run), out=str(out), formats=("onnx-fp32",)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocessing"]["grey_map"] == "equalize"

    files = sorted(p for p in tiny_dataset.rglob("*.png") if "_mask" not in p.stem)[:6]
    images = [read_image(p) for p in files]
    model = keras.models.load_model(run / "model.keras", compile=False)
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    keras_equalized = np.asarray(model(prepare_batch(images, spec), training=False))[:, 0]
    keras_plain = np.asarray(model(prepare_batch(images, PreprocessSpec(image_size=spec.image_size)),
                                   training=False))[:, 0]
    with Classifier.load(out, variant="onnx-fp32") as clf:
        runtime = np.array([clf.predict(p).probability for p in files])
    assert np.abs(runtime - keras_equalized).max() < 1e-3
    assert np.abs(keras_plain - keras_equalized).max() > 0.01          # the two inputs are told apart


@pytest.mark.slow
def test_tiny_run_with_the_grey_map(tiny_dataset, tmp_path):
    from bcd.cli import main
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(out), "--image-size", "32", "--epochs", "1",
                 "--arch", "vgg16-bn", "--width", "0.25", "--batch-size", "8", "--grey-map", "equalize",
                 "--scan-region", "off"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["grey_map"] == "equalize" and info["preprocessing"]["grey_map"] == "equalize"
