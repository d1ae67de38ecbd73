"""BI-RADS as an auxiliary training target (issue 22): the cumulative targets, the
ordinal head, and a tiny run on a generated CSV dataset with a BI-RADS column."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.preprocessing import PreprocessSpec


def test_cumulative_targets_and_unknown_rows_weigh_nothing():
    from train.data import BiradsTargets, make_tf_dataset
    levels = np.array([2, 3, 4, 5, 0])
    labels = np.array([0, 0, 1, 1, 0])
    images = np.zeros((5, 32, 32, 3), np.uint8)
    ds = make_tf_dataset(images, labels, PreprocessSpec(image_size=32), 5, training=False,
                         birads=BiradsTargets(levels, {0: 0.5, 1: 2.0}))
    _, targets, weights = next(iter(ds))
    np.testing.assert_array_equal(targets["birads"].numpy(),
                                  [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(weights["birads"].numpy(), [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(weights["malignancy"].numpy(), [0.5, 0.5, 2.0, 2.0, 0.5])
    assert set(targets) == {"malignancy", "birads"}


def test_negative_birads_weight_is_refused():
    from train.config import TrainConfig
    with pytest.raises(ValueError, match="BI-RADS"):
        TrainConfig(out="x", birads_weight=-1)


@pytest.fixture(scope="module")
def birads_csv(tmp_path_factory) -> Path:
    """24 generated images whose brightness follows their BI-RADS (2-5); malignant from 4
    up; a third of the rows without BI-RADS."""
    root = tmp_path_factory.mktemp("birads")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        level = 2 + i % 4
        image = rng.integers(0, 60, (48, 48), dtype=np.uint8) + np.uint8(40 * level)
        cv2.imwrite(str(root / f"im{i}.png"), image)
        rows.append([f"im{i}.png", "malignant" if level >= 4 else "benign", f"P{i}", "" if i % 3 == 0 else str(level)])
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "Pathology", "Case", "BIRADS"])
        w.writerows(rows)
    return root / "index.csv"


@pytest.mark.slow
def test_tiny_run_learns_birads_beside_the_label_and_saves_the_classifier_alone(birads_csv, tmp_path):
    from bcd.cli import main
    from train.tf_setup import keras
    out = tmp_path / "run"
    assert main(["train", "--data", str(birads_csv), "--csv-map", "path={file},label=Pathology,group=Case,birads=BIRADS",
                 "--out", str(out), "--image-size", "32", "--epochs", "2", "--arch", "vgg16-bn", "--width", "0.25",
                 "--batch-size", "8", "--birads-weight", "0.5", "--lesion-weight", "1"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["birads_weight"] == 0.5
    assert "16 images have a BI-RADS" in info["model"]["birads_head"]
    history = json.loads((out / "history.json").read_text())
    assert len(history["birads_loss"]) == 2 and all(np.isfinite(history["birads_loss"]))
    model = keras.models.load_model(out / "model.keras", compile=False)
    assert len(model.outputs) == 1 and "birads" not in [layer.name for layer in model.layers]


def test_cosine_schedule_runs_from_the_phase_rate_down_to_the_floor():
    from train.trainer import LrDecay, Phase
    decay = LrDecay(schedule="cosine", min_lr=1e-6)
    phase = Phase("finetune", 5, 15, "all", 3e-4)       # 10 epochs, 0-based 5..14
    rates = [decay.cosine_rate(phase, e) for e in range(5, 15)]
    assert rates[0] == pytest.approx(3e-4) and rates[-1] == pytest.approx(1e-6)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[4] > (3e-4 + 1e-6) / 2 > rates[5]           # the half-way point lies between epochs 4 and 5
