"""`bcd slim` (structured filter pruning): real TensorFlow, no mocks.

1. the numpy core keeps the highest-L1 filters and slices consistent shapes;
2. pruning exactly the filters that were zeroed beforehand leaves the network's output
   unchanged (to 1e-5), which proves the weight copy (conv outputs, next conv's inputs,
   dense rows after GAP) is right;
3. `bcd slim` end to end on the tiny 32x32 run gives a run that export accepts, with the
   MACs computed independently from the kept channel counts.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from bcd.cli import main
from train import prune


# --------------------------------------------------------------------------- numpy core

def test_keep_count_rounds_up_and_respects_the_floor():
    assert prune.keep_count(64, 0.5) == 32
    assert prune.keep_count(512, 0.75) == 128
    assert prune.keep_count(10, 0.25) == 8          # ceil(7.5)
    assert prune.keep_count(64, 0.95) == 8          # never below min_filters
    assert prune.keep_count(4, 0.5) == 4            # never more than the layer has
    with pytest.raises(ValueError):
        prune.keep_count(64, 1.0)


def test_core_keeps_highest_l1_filters_with_consistent_shapes():
    rng = np.random.default_rng(0)
    k1 = rng.normal(size=(3, 3, 3, 6)).astype(np.float32)
    k2 = rng.normal(size=(3, 3, 6, 4)).astype(np.float32)
    scale1 = np.array([5, 0.1, 3, 0.2, 4, 0.3], np.float32)   # filters 0, 2, 4 dominate
    scale2 = np.array([0.1, 2, 3, 0.2], np.float32)           # filters 1, 2 dominate
    k1, k2 = k1 * scale1, k2 * scale2
    b1, b2 = np.arange(6, dtype=np.float32), np.arange(4, dtype=np.float32)
    dense = np.arange(4 * 5, dtype=np.float32).reshape(4, 5)

    keep1, keep2 = prune.kept_filters(k1, 3), prune.kept_filters(k2, 2)
    l1 = np.abs(k1).sum(axis=(0, 1, 2))
    assert set(keep1) == set(np.argsort(l1)[-3:]) == {0, 2, 4}
    assert list(keep2) == [1, 2]

    (c1, c2), d = prune.slice_chain([(k1, b1), (k2, b2)], [keep1, keep2], dense)
    assert c1[0].shape == (3, 3, 3, 3) and c1[1].shape == (3,)
    assert c2[0].shape == (3, 3, 3, 2) and c2[1].shape == (2,)
    assert d.shape == (2, 5)
    np.testing.assert_array_equal(c1[0], k1[..., [0, 2, 4]])
    np.testing.assert_array_equal(c2[0], k2[:, :, [0, 2, 4]][..., [1, 2]])
    np.testing.assert_array_equal(c2[1], b2[[1, 2]])
    np.testing.assert_array_equal(d, dense[[1, 2]])


def test_ratio_for_target_is_the_least_pruning_that_fits():
    shapes = [prune.ConvShape("a", 100, 9, 3, 64), prune.ConvShape("b", 25, 9, 64, 128)]

    def macs(r):
        return prune.chain_macs(shapes, [prune.keep_count(s.filters, r) for s in shapes], 10)

    target = macs(0.5)
    r = prune.ratio_for_target(shapes, 10, 0, target)
    assert macs(r) <= target
    assert macs(r - 0.01) > target
    assert prune.ratio_for_target(shapes, 10, 0, macs(0.0)) == 0.0
    with pytest.raises(ValueError, match="below the smallest"):
        prune.ratio_for_target(shapes, 10, 0, 10)


# --------------------------------------------------------------------------- weight copy

def test_pruning_zeroed_filters_keeps_the_output():
    from train.cost import model_cost
    from train.model import LAST_CONV_LAYER, ModelConfig, build_model
    from train.tf_setup import keras

    model, _ = build_model(ModelConfig(image_size=32, seed=3))
    rng = np.random.default_rng(1)
    ratio = 0.25
    zeroed = {}
    for name in prune.conv_layer_names(model):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        n = kernel.shape[-1]
        drop = rng.choice(n, size=n - prune.keep_count(n, ratio), replace=False)
        kernel[..., drop] = 0.0
        bias = rng.normal(0.0, 0.1, n).astype(np.float32)   # non-zero biases must be carried over
        bias[drop] = 0.0
        layer.set_weights([kernel, bias])
        zeroed[name] = np.setdiff1d(np.arange(n), drop)
    # a head with non-zero biases too, so the test sees them copied
    for name in ("head_dense", "malignancy"):
        w, b = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([w * 0.05, rng.normal(0.0, 0.1, b.shape).astype(np.float32)])

    keep = prune.plan_keep(model, ratio)
    for name, idx in keep.items():
        np.testing.assert_array_equal(idx, zeroed[name])
    thin = prune.prune_model(model, keep)

    assert [layer.name for layer in thin.layers] == [layer.name for layer in model.layers]
    assert thin.get_layer(LAST_CONV_LAYER).filters == len(keep[LAST_CONV_LAYER])
    assert model_cost(thin)["macs"] < model_cost(model)["macs"]
    x = rng.normal(0.0, 30.0, (4, 32, 32, 3)).astype(np.float32)
    for out in ("head_dense", "malignancy"):
        full_out = keras.Model(model.inputs, model.get_layer(out).output)(x, training=False).numpy()
        thin_out = keras.Model(thin.inputs, thin.get_layer(out).output)(x, training=False).numpy()
        assert np.abs(full_out).max() > 1e-3, "degenerate test: the head outputs nothing"
        np.testing.assert_allclose(thin_out, full_out, atol=1e-5, rtol=1e-5)
    p = thin(x, training=False).numpy()
    assert 0.001 < p.min() and p.max() < 0.999, "probabilities saturated: the comparison would be trivial"


# --------------------------------------------------------------------------- end to end

def _expected_macs(full, ratio: float) -> int:
    """Conv + dense MACs with keep_count filters per conv layer, from the full model's
    layer shapes (independently of prune.chain_macs)."""
    from train.tf_setup import keras

    total, cin = 0, 3
    for layer in full.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output_shape
            kept = prune.keep_count(cout, ratio)
            total += h * w * 9 * cin * kept
            cin = kept
    units = full.get_layer("head_dense").units
    return total + cin * units + units * 1


@pytest.mark.slow   # prunes, fine-tunes and exports
def test_slim_end_to_end_gives_an_exportable_run(graded_run, tmp_path):
    from export import ExportConfig, export_run
    from train.cost import count_macs
    from train.tf_setup import keras

    out = tmp_path / "slim"
    assert main(["slim", str(graded_run), "--out", str(out), "--ratio", "0.5", "--epochs", "1"]) == 0
    for name in ("model.keras", "run.json", "split.json", "metrics.json", "metrics.md", "history.json",
                 "predictions.json", "train.log"):
        assert (out / name).is_file(), name
    assert (out / "split.json").read_text() == (graded_run / "split.json").read_text()
    info = json.loads((out / "run.json").read_text())
    parent = json.loads((graded_run / "run.json").read_text())
    assert info["status"] == "complete"
    for key in ("preprocessing", "labels", "data"):
        assert info[key] == parent[key]
    assert 0.0 <= info["threshold"]["value"] <= 1.0

    full = keras.models.load_model(graded_run / "model.keras", compile=False)
    slim_model = keras.models.load_model(out / "model.keras", compile=False)
    pruning = info["pruning"]
    assert pruning["ratio"] == 0.5 and pruning["criterion"] == "l1"
    assert pruning["filters"]["block1_conv1"] == [64, 32] and pruning["filters"]["block5_conv3"] == [512, 256]
    assert slim_model.get_layer("block5_conv3").filters == 256
    assert pruning["macs_before"] == count_macs(full) == parent["model"]["cost"]["macs"]
    assert pruning["macs_after"] == info["model"]["cost"]["macs"] == _expected_macs(full, 0.5)
    assert pruning["params_after"] == slim_model.count_params() < pruning["params_before"] == full.count_params()
    # half the filters in every layer: a quarter of the MACs, a bit more for the 3-channel first layer
    assert 0.25 < pruning["macs_after"] / pruning["macs_before"] < 0.26
    assert "slim" in info and info["slim"]["learning_rate"] == 1e-4
    assert "epoch 1/1 [slim]" in (out / "train.log").read_text()

    exp = tmp_path / "export"
    result = export_run(ExportConfig(run_dir=str(out), out=str(exp), formats=("onnx-fp32",),
                                     max_auc_drop=1.0, max_flip_rate=1.0))
    assert (exp / "manifest.json").is_file()
    assert [v.name for v in result.manifest.variants] == ["onnx-fp32"]


def test_train_records_model_cost(tiny_run):
    info = json.loads((tiny_run / "run.json").read_text())
    cost = info["model"]["cost"]
    assert cost["macs"] > 0 and cost["params"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--ratio", "1.5"], "between 0 and 1"),
    (["--ratio", "0"], "between 0 and 1"),
    (["--ratio", "0.5", "--target-macs", "1G"], "not both"),
])
def test_bad_slim_options_are_usage_errors(graded_run, tmp_path, capsys, extra, message):
    assert main(["slim", str(graded_run), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_slim_refuses_a_non_run_and_a_used_out_dir(graded_run, tmp_path, capsys):
    assert main(["slim", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["slim", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "model.keras").write_text("x")
    assert main(["slim", str(graded_run), "--out", str(used)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (used / "model.keras").read_text() == "x"


def test_target_macs_picks_a_ratio_that_fits():
    from train.cost import count_macs
    from train.model import ModelConfig, build_model
    from train.slim import SlimConfig, _choose_ratio

    model, _ = build_model(ModelConfig(image_size=32))
    target = 0.3 * count_macs(model)
    ratio = _choose_ratio(SlimConfig(parent="p", out="o", target_macs=target), model)
    thin = prune.prune_model(model, prune.plan_keep(model, ratio))
    assert count_macs(thin) <= target
    looser = prune.prune_model(model, prune.plan_keep(model, ratio - 0.01))
    assert count_macs(looser) > target        # the least pruning that fits, not just any


@pytest.mark.slow   # fine-tunes twice
def test_slim_resume_continues_with_the_pruned_model(graded_run, tmp_path):
    out = tmp_path / "slim"
    assert main(["slim", str(graded_run), "--out", str(out), "--ratio", "0.75", "--epochs", "1"]) == 0
    first = json.loads((out / "run.json").read_text())
    assert main(["slim", str(graded_run), "--out", str(out), "--ratio", "0.75", "--epochs", "2", "--resume"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["epochs_trained"] == 2 and info["status"] == "complete"
    assert info["pruning"] == first["pruning"]
    assert info["pruning"]["filters"]["block1_conv1"] == [64, 16]
    # resuming with another pruning setting is refused
    assert main(["slim", str(graded_run), "--out", str(out), "--ratio", "0.5", "--resume"]) == 2


def test_activation_criterion_prunes_filters_that_never_fire():
    # Filters whose bias is hugely negative output 0 after ReLU on every image: the
    # activation criterion must drop exactly those first, whatever their kernel norms.
    from train.tf_setup import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="malignancy")(x))
    dead = [1, 4, 6]
    for name in ("block1_conv1", "block1_conv2"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        kernel[..., dead] *= 10.0            # the largest L1 norms: l1 would keep them
        bias[dead] = -1e6
        layer.set_weights([kernel, bias])
    images = np.random.default_rng(0).normal(0, 50, (12, 16, 16, 3)).astype(np.float32)
    keep = prune.plan_keep(model, 3 / 8, "activation", min_filters=1, images=images)
    for name in ("block1_conv1", "block1_conv2"):
        assert list(keep[name]) == [0, 2, 3, 5, 7]
    assert set(dead) <= set(prune.plan_keep(model, 3 / 8, "l1", min_filters=1)["block1_conv1"])
    with pytest.raises(ValueError, match="needs images"):
        prune.plan_keep(model, 0.5, "activation")


def test_fine_tuning_must_beat_the_pruned_model(tmp_path):
    # The pruned model is saved as epoch 0; a worse fine-tuning epoch must leave it in
    # place, weight for weight, and only a better one may replace it.
    from train.run_dir import RunDir
    from train.slim import _pruned_model_is_epoch_zero
    from train.tf_setup import keras
    from train.trainer import EpochCheckpoint, Phase, new_state

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    run = RunDir(tmp_path)
    run.checkpoint_dir.mkdir(parents=True)
    state = new_state()
    pruned = [w.copy() for w in model.get_weights()]
    _pruned_model_is_epoch_zero(model, run, state, 0.8)
    assert (state["best_val_auc"], state["best_epoch"]) == (0.8, 0)
    cb = EpochCheckpoint(run, state, Phase("slim", 0, 5, "all", 1e-3), patience=5)
    cb.set_model(model)
    cb.set_params({"epochs": 5})
    logs = {"loss": 0.5, "auc": 0.9, "val_loss": 0.6}

    model.set_weights([w + 1.0 for w in pruned])            # a worse epoch
    cb.on_epoch_end(0, {**logs, "val_auc": 0.7})
    kept = keras.models.load_model(run.model, compile=False).get_weights()
    for a, b in zip(pruned, kept):
        np.testing.assert_array_equal(a, b)
    assert state["best_epoch"] == 0

    better = [w + 2.0 for w in pruned]                     # a better one
    model.set_weights(better)
    cb.on_epoch_end(1, {**logs, "val_auc": 0.85})
    kept = keras.models.load_model(run.model, compile=False).get_weights()
    for a, b in zip(better, kept):
        np.testing.assert_array_equal(a, b)
    assert (state["best_epoch"], state["best_val_auc"]) == (2, 0.85)
