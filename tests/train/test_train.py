"""A real tiny training run through the library and the CLI."""
import json

import numpy as np
import pytest

from bcd.cli import main
from train.config import TrainConfig
from train.trainer import RunExists, plan_phases, train

METRIC_KEYS = {"accuracy", "precision", "recall", "sensitivity", "specificity", "f1", "roc_auc",
               "pr_auc", "brier", "ece", "confusion_matrix", "threshold", "n_positive", "n_negative", "ci95"}
PLOTS = {"roc.png", "pr.png", "confusion.png", "reliability.png", "training_curves.png"}


def test_tiny_run_writes_every_artifact(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"model.keras", "run.json", "split.json", "metrics.json", "metrics.md", "history.json",
            "predictions.json", "checkpoint"} <= names
    assert PLOTS <= {p.name for p in (tiny_run / "plots").iterdir()}
    for png in (tiny_run / "plots").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    block = metrics["at_operating_threshold"]
    assert METRIC_KEYS <= set(block)
    assert set(block["ci95"]) >= {"sensitivity", "specificity", "roc_auc"}
    assert metrics["n_per_class"]["benign"] + metrics["n_per_class"]["malignant"] == block["n"]
    assert "at_0.5" in metrics

    info = json.loads((tiny_run / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["threshold"]["chosen_on"] == "validation split"
    assert block["threshold"] == pytest.approx(info["threshold"]["value"])
    assert info["model"]["initialisation"].startswith("he_normal")
    assert info["preprocessing"]["image_size"] == 32

    split = json.loads((tiny_run / "split.json").read_text())
    files = [f["path"] for s in ("train", "val", "test") for f in split["files"][s]]
    assert len(files) == len(set(files)) == info["data"]["images"]
    preds = json.loads((tiny_run / "predictions.json").read_text())
    assert [p["path"] for p in preds] == [f["path"] for f in split["files"]["test"]]
    assert all(0.0 <= p["probability"] <= 1.0 for p in preds)


def test_scratch_model_is_he_initialised():
    from train.model import ModelConfig, build_model
    model, info = build_model(ModelConfig(image_size=32, weights="none", seed=3))
    kernel, bias = model.get_layer("block3_conv1").get_weights()
    fan_in = 3 * 3 * 128
    # He: sqrt(2 / 1152) = 0.042; Keras' default Glorot-uniform gives sqrt(2 / (1152 + 2304)) = 0.024.
    assert np.std(kernel) == pytest.approx(np.sqrt(2 / fan_in), rel=0.03)
    assert not bias.any()
    assert info["initialisation"].startswith("he_normal")


def _rank_auc(labels, probs) -> float:
    """AUC as the share of (malignant, benign) pairs ordered correctly, ties counting half."""
    pos = [p for y, p in zip(labels, probs) if y == 1]
    neg = [p for y, p in zip(labels, probs) if y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_evaluate_rescores_the_saved_test_split(graded_run, tmp_path, capsys):
    # graded_run's probabilities spread over 0..1 (tiny_run's are saturated at 0/1, where
    # any scoring would agree); copy it because evaluate rewrites the run's metrics.
    import shutil
    from pathlib import Path

    from runtime.preprocessing import PreprocessSpec
    from train.data import load_files
    from train.evaluate import predict_probabilities
    from train.tf_setup import keras

    run = tmp_path / "run"
    shutil.copytree(graded_run, run)
    assert main(["evaluate", str(run), "--bootstrap", "200"]) == 0
    assert "Research and education only" in capsys.readouterr().out

    split = json.loads((run / "split.json").read_text())
    info = json.loads((run / "run.json").read_text())
    files = split["files"]["test"]
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    model = keras.models.load_model(run / "model.keras", compile=False)
    expected = predict_probabilities(model, load_files(Path(split["data_root"]), [f["path"] for f in files], spec), spec)

    preds = json.loads((run / "predictions.json").read_text())
    assert [p["path"] for p in preds] == [f["path"] for f in files]
    np.testing.assert_allclose([p["probability"] for p in preds], expected, atol=1e-6)
    labels = [f["label"] for f in files]
    block = json.loads((run / "metrics.json").read_text())["at_operating_threshold"]
    t = info["threshold"]["value"]
    assert block["threshold"] == t
    tp = sum(y == 1 and p >= t for y, p in zip(labels, expected))
    assert block["confusion_matrix"]["tp"] == tp
    assert 0 < sum(labels) < len(labels)  # the stratified split gives test both classes
    assert block["roc_auc"] == pytest.approx(_rank_auc(labels, expected), abs=1e-9)


def test_evaluate_external_folder_uses_frozen_threshold(tiny_run, tiny_dataset, tmp_path):
    out = tmp_path / "external"
    assert main(["evaluate", str(tiny_run), "--data", str(tiny_dataset), "--out", str(out),
                 "--bootstrap", "100"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    info = json.loads((tiny_run / "run.json").read_text())
    assert doc["threshold"]["value"] == info["threshold"]["value"]
    assert doc["at_operating_threshold"]["n"] == info["data"]["images"]


def test_existing_run_is_never_overwritten(tiny_run, tiny_dataset, capsys):
    before = (tiny_run / "model.keras").stat().st_mtime_ns
    code = main(["train", "--data", str(tiny_dataset), "--out", str(tiny_run), "--image-size", "32", "--epochs", "1"])
    assert code == 2
    assert "already holds files" in capsys.readouterr().err
    assert (tiny_run / "model.keras").stat().st_mtime_ns == before


@pytest.mark.slow   # trains twice
def test_resume_continues_from_last_epoch(tiny_dataset, tmp_path):
    out = tmp_path / "resumable"
    config = TrainConfig(out=str(out), data=str(tiny_dataset), image_size=32, epochs=1,
                         batch_size=8, bootstrap_resamples=50)
    train(config)
    longer = TrainConfig(**{**config.to_dict(), "epochs": 2, "augment": config.augment})
    train(longer, resume=True)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 2
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 2
    with pytest.raises(RunExists, match="differ"):
        train(TrainConfig(**{**longer.to_dict(), "image_size": 48, "augment": config.augment}), resume=True)


def test_bad_cli_input_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r2"), "--image-size", "16"]) == 2
    assert "at least 32" in capsys.readouterr().err


def test_offline_imagenet_download_fails_clearly(tmp_path, monkeypatch):
    from train.model import ModelConfig, WeightsUnavailable, build_model
    # Point Keras' cache at an empty folder so a cached file cannot hide the failure.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="--weights /path/to/"):
        build_model(ModelConfig(image_size=32, weights="imagenet"))


def test_local_weights_file_is_loaded_and_checked(tmp_path):
    from train.model import ModelConfig, WeightsUnavailable, build_model
    from train.tf_setup import keras
    donor = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.h5"
    donor.save_weights(str(path))
    model, info = build_model(ModelConfig(image_size=32, weights=str(path)))
    np.testing.assert_allclose(model.get_layer("block1_conv1").get_weights()[0], donor.get_layer("block1_conv1").get_weights()[0])
    assert info["weights"] == "local file vgg16_notop.h5"
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        build_model(ModelConfig(image_size=32, weights=str(tmp_path / "junk.h5")))
    with pytest.raises(WeightsUnavailable, match="not found"):
        build_model(ModelConfig(image_size=32, weights=str(tmp_path / "missing.h5")))


def test_pretrained_runs_have_head_then_finetune_phases():
    phases = plan_phases(TrainConfig(out="x", weights="imagenet", epochs=8, head_epochs=3))
    assert [(p.name, p.start, p.end, p.blocks) for p in phases] == [("head", 0, 3, "none"), ("finetune", 3, 8, "last")]
    assert plan_phases(TrainConfig(out="x", epochs=4))[0].blocks == "all"


def test_learning_rate_decays_on_a_validation_plateau(tmp_path):
    # A real optimizer: the callback must lower its rate after `patience` epochs
    # without a validation AUC gain, record it, and never go below min_lr.
    from train.run_dir import RunDir
    from train.tf_setup import keras
    from train.trainer import EpochCheckpoint, LrDecay, Phase, new_state

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    run = RunDir(tmp_path)
    run.checkpoint_dir.mkdir(parents=True)
    state = new_state()
    cb = EpochCheckpoint(run, state, Phase("full", 0, 10, "all", 1e-3), patience=99,
                         decay=LrDecay(patience=2, factor=0.1, min_lr=2e-5))
    cb.set_model(model)
    cb.set_params({"epochs": 10})
    aucs = [0.7, 0.6, 0.65, 0.8, 0.5, 0.5, 0.5, 0.5]
    for epoch, auc in enumerate(aucs):
        cb.on_epoch_end(epoch, {"val_auc": auc, "loss": 0.5, "auc": 0.9, "val_loss": 0.6})
    lrs = state["history"]["learning_rate"]
    # wait: 0,1,2(decay),0 (gain),1,2(decay),3,4(decay, clipped at min_lr)
    np.testing.assert_allclose(lrs, [1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5 * 2, 2e-5, 2e-5], rtol=1e-5)
    assert state["best_epoch"] == 4


def test_batch_norms_restarted_from_a_folded_run_keep_its_function(tmp_path):
    """A vgg16-bn model initialised from a plain (folded) run: before matching, its batch
    norms in training mode compute another network; after, both modes compute the run's."""
    from runtime.preprocessing import PreprocessSpec, normalize
    from train.bn_restart import match_batch_norms
    from train.model import ModelConfig, build_model
    from train.tf_setup import keras

    donor, _ = build_model(ModelConfig(image_size=32, width=0.1, seed=1))
    rng = np.random.default_rng(0)
    for layer in donor.layers:               # conv biases that matter, as a trained run has
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0.0, 0.5, bias.shape).astype(np.float32)])
    donor.save(tmp_path / "donor.keras")
    config = ModelConfig(image_size=32, width=0.1, seed=2, batch_norm=True, weights=str(tmp_path / "donor.keras"))
    spec = PreprocessSpec(image_size=32)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    x = normalize(images[:32].astype(np.float32), spec)
    want = keras.Model(donor.inputs, donor.get_layer("block5_conv3").output)(x, training=False).numpy()

    def gap(model, training: bool) -> float:
        got = keras.Model(model.inputs, model.get_layer("block5_conv3_relu").output)(x, training=training).numpy()
        return float(np.abs(got - want).mean() / np.abs(want).mean())

    restarted, info = build_model(config)
    assert len(info["batch_norms_restarted"]) == 13
    assert gap(restarted, False) < 1e-4      # inference mode: identity batch norms, the run's function
    before = gap(restarted, True)
    assert before > 0.5                      # training mode: another network
    # matched right after initialisation, as `bcd train` does (a training-mode call moves
    # the moving statistics, and the matching measures through them)
    matched, info = build_model(config)
    match_batch_norms(matched, info["batch_norms_restarted"], images, spec)
    assert gap(matched, False) < 1e-3
    assert gap(matched, True) < 0.1 * before
