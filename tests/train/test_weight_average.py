"""--average-from: model.keras is the mean of the last epochs' weights (train.weight_average)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from train.config import TrainConfig
from train.weight_average import FILE_NAME, RunningAverage


def _weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]


def test_running_average_is_the_mean_and_survives_a_save(tmp_path):
    average = RunningAverage()
    lists = [_weights(s) for s in range(3)]
    for w in lists:
        average.add(w)
    average.save(tmp_path)
    loaded = RunningAverage.load(tmp_path)
    assert loaded.count == 3
    for got, *each in zip(loaded.mean(lists[0]), *lists):
        np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-6)
        assert got.dtype == np.float32


def test_running_average_refuses_weights_of_another_shape_and_an_empty_mean(tmp_path):
    average = RunningAverage()
    average.add(_weights(0))
    with pytest.raises(ValueError, match="changed shape"):
        average.add([np.zeros((3, 4), np.float32), np.zeros(6, np.float32)])
    with pytest.raises(ValueError, match="no epoch"):
        RunningAverage.load(tmp_path / "nothing-saved").mean(_weights(0))


def test_average_from_must_lie_within_the_epochs(tmp_path):
    with pytest.raises(ValueError, match="average-from"):
        TrainConfig(out=str(tmp_path), epochs=3, average_from=4)
    with pytest.raises(ValueError, match="average-from"):
        TrainConfig(out=str(tmp_path), epochs=3, average_from=-1)


@pytest.mark.slow
def test_tiny_run_saves_the_mean_of_its_last_epochs_and_resume_continues_it(tmp_path):
    from bcd.cli import main
    from train.tf_setup import keras
    out = tmp_path / "run"
    common = ["--image-size", "32", "--arch", "vgg16", "--width", "0.25", "--batch-size", "8", "--patience", "9"]
    assert main(["train", "--out", str(out), "--epochs", "3", "--average-from", "2", *common]) == 0
    info = json.loads((out / "run.json").read_text())
    record = info["weight_average"]
    assert (record["from_epoch"], record["to_epoch"], record["epochs"]) == (2, 3, 2)
    assert record["val_auc"] == info["threshold"]["validation"]["roc_auc"]   # the saved mean's own score
    saved = RunningAverage.load(out / "checkpoint")
    model = keras.models.load_model(out / "model.keras", compile=False)
    mean = saved.mean(model.get_weights())
    assert len(mean) == len(model.get_weights())
    for got, want in zip(model.get_weights(), mean):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    last = keras.models.load_model(out / "checkpoint" / "last.keras", compile=False)
    assert any(not np.allclose(a, b) for a, b in zip(model.get_weights(), last.get_weights()))
    # training on: the mean takes in the new epoch as well
    assert main(["train", "--out", str(out), "--epochs", "4", "--average-from", "2", "--resume", *common]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["weight_average"]["epochs"] == 3 and info["weight_average"]["to_epoch"] == 4
    assert RunningAverage.load(out / "checkpoint").count == 3 and (out / "checkpoint" / FILE_NAME).is_file()
