"""Training the lesion localiser: it must learn to find a lesion (a bright blob on generated
scans), its figures must say so, and what it learns must reach the runtime unchanged
through the export (ONNX) and the manifest."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.lesion_box import Box, iou
from runtime.preprocessing import PreprocessSpec
from runtime.scan_region import RegionConfig
from tests.runtime.test_localiser import classifier_manifest, scan_with_blob

SIZE = 64


def blob_part(n: int, seed: int, size: int = SIZE):
    """n generated scans (a sixth of them without a lesion) with their masks, two sources."""
    from train.localiser import Part

    rng = np.random.default_rng(seed)
    images, masks = [], []
    for k in range(n):
        if k % 6 == 5:
            images.append(scan_with_blob(size, size, (0, 0, 1, 1), seed=seed * 1000 + k))
            images[-1][0, 0] = 40                       # no blob at all
            masks.append(np.zeros((size, size), np.uint8))
            continue
        w, h = rng.integers(size // 6, size // 2, 2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        image = scan_with_blob(size, size, (int(x), int(y), int(w), int(h)), seed=seed * 1000 + k)
        images.append(image)
        masks.append((image[..., 0] > 200).astype(np.uint8))
    return Part(np.stack(images), np.stack(masks), np.array(["a", "b"] * (n // 2) + ["a"] * (n % 2)))


def small_config(out: Path, epochs: int):
    from train.localiser import LocaliserConfig
    return LocaliserConfig(run=str(out.parent), out=str(out), epochs=epochs, patience=epochs, base_filters=8,
                           levels=3, batch_size=16, learning_rate=3e-3, min_learning_rate=1e-4, seed=1)


@pytest.mark.slow   # trains a small network for a few epochs (~30 s)
def test_learns_to_find_a_blob_and_the_runtime_finds_it_too(tmp_path):
    from export.localiser import add_localiser
    from runtime.localiser import Localiser
    from runtime.manifest import write_manifest
    from train.localiser import LocaliserDir, Provenance, fit_localiser, rescore

    train, val, test = blob_part(192, 1), blob_part(48, 2), blob_part(48, 3)
    spec = PreprocessSpec(image_size=SIZE)
    provenance = Provenance("generated", None, RegionConfig(mode="off").to_dict())
    out = LocaliserDir(tmp_path / "localiser")
    # interrupted after 3 epochs, then resumed to 10: the checkpoint carries on
    fit_localiser(small_config(out.root, 3), out, train, val, test, spec, provenance)
    assert json.loads(out.state.read_text())["epochs_done"] == 3
    fit_localiser(small_config(out.root, 10), out, train, val, test, spec, provenance, resume=True)
    metrics = json.loads(out.metrics.read_text())
    history = json.loads(out.history.read_text())
    assert len(history["loss"]) == metrics["epochs_trained"] == 10
    assert history["loss"][-1] < history["loss"][0]
    found = metrics["figures"]["test"]["all"]
    assert found["mean_iou"] > 0.5 and found["found"] >= 0.7, found
    assert metrics["output_size"] == [SIZE // 2, SIZE // 2] and metrics["figures"]["test"]["a"]["lesion_images"] > 0

    # the box rule changed (a margin): the threshold is chosen again, nothing is retrained
    history_before = out.history.read_text()
    rescore(out, 0.1, train, val, test, spec, provenance)
    again = json.loads(out.metrics.read_text())
    assert again["margin"] == 0.1 and again["config"]["margin"] == 0.1 and again["epochs_trained"] == 10
    assert again["threshold"] == max(again["threshold_table"], key=lambda r: (r["found"], r["mean_iou"]))["threshold"]
    assert out.history.read_text() == history_before
    rescore(out, 0.0, train, val, test, spec, provenance)
    assert json.loads(out.metrics.read_text())["figures"] == metrics["figures"]

    export = tmp_path / "export"
    export.mkdir()
    manifest = classifier_manifest(SIZE)
    manifest.scan_region = RegionConfig(mode="off").to_dict()
    write_manifest(export, manifest)
    entry = add_localiser(out.root, export)
    assert entry.threshold == metrics["threshold"] and entry.figures == metrics["figures"]
    loc = Localiser.load(export)
    # new scans, larger than the network's input and not square: the box is in their pixels
    ious = []
    for k in range(12):
        truth = Box(40 + 7 * k, 30 + 3 * k, 60 + 2 * k, 50)
        image = scan_with_blob(160, 240, (truth.x, truth.y, truth.width, truth.height), seed=500 + k)
        heat = loc.lesion_map(image)
        assert heat.shape == (160, 240) and 0.0 <= heat.min() and heat.max() <= 1.0
        box = loc.propose(image)
        ious.append(iou(box, truth) if box is not None else 0.0)
    assert np.mean(np.array(ious) >= 0.5) >= 0.75, ious


def test_an_export_that_crops_otherwise_or_holds_another_split_is_refused(tmp_path):
    from export.localiser import check_fits
    from runtime.manifest import write_manifest
    from train.localiser import LocaliserError

    export = tmp_path / "export"
    export.mkdir()
    write_manifest(export, classifier_manifest(SIZE))   # no scan_region recorded: the default finder, auto
    metrics = {"scan_region": RegionConfig(mode="off").to_dict(), "split_sha256": "0" * 64, "source_run": "r"}
    with pytest.raises(LocaliserError, match="scan region"):
        check_fits(metrics, export)
    metrics["scan_region"] = RegionConfig().to_dict()
    check_fits(metrics, export)                        # no split.json in the export: nothing to compare
    (export / "split.json").write_text("{}")
    with pytest.raises(LocaliserError, match="not the split"):
        check_fits(metrics, export)


def test_network_shapes_and_config_checks():
    from train.localiser import LocaliserConfig, build_localiser

    for stride in (1, 2, 4):
        model = build_localiser(64, base_filters=4, levels=3, output_stride=stride)
        assert model.output_shape == (None, 64 // stride, 64 // stride, 1)
        assert model.input.name.startswith("image") and model.output_names == ["lesion"]
    with pytest.raises(ValueError, match="multiple of"):
        build_localiser(36, levels=3)
    for bad in ({"output_stride": 3}, {"epochs": 0}, {"margin": 2.0}, {"precision": "int8"}, {"max_minutes": 0}):
        with pytest.raises(ValueError):
            LocaliserConfig(run="r", **bad)


def test_loss_rewards_the_right_map():
    from train.localiser import BceDice

    target = np.zeros((2, 8, 8, 1), np.float32)
    target[0, 2:5, 2:6] = 1.0
    loss = BceDice(1.0)
    right = float(loss(target, target * 0.98 + 0.01))
    wrong = float(loss(target, 1.0 - target))
    flat = float(loss(target, np.full_like(target, target.mean())))
    assert right < 0.1 < flat < wrong


def test_no_lesion_masks_is_a_clear_error(tmp_path):
    from train.localiser import LocaliserError, Part, _check_parts
    from train.run_dir import RunDir

    run = RunDir(tmp_path)
    images = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    none = Part(images[:0], np.zeros((0, SIZE, SIZE), np.uint8), np.array([], str))
    empty = Part(images, np.zeros((4, SIZE, SIZE), np.uint8), np.array(["a"] * 4))
    with pytest.raises(LocaliserError, match="no images with a lesion mask"):
        _check_parts(run, none, empty)
    with pytest.raises(LocaliserError, match="every lesion mask .* is empty"):
        _check_parts(run, empty, empty)
    lesion = blob_part(6, 0)
    with pytest.raises(LocaliserError, match="validation split"):
        _check_parts(run, lesion, empty)


def test_cli_errors(tmp_path, capsys):
    from bcd.cli import main

    assert main(["localiser", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "complete", "threshold": {"value": 0.5}}))
    (run / "split.json").write_text("{}")
    (run / "model.keras").write_bytes(b"")
    assert main(["localiser", str(run), "--export", str(tmp_path)]) == 2
    assert "not an export directory" in capsys.readouterr().err
    assert main(["localiser", str(run), "--epochs", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def test_cli_defaults_are_the_library_defaults():
    from bcd.cli import build_parser, localiser_config
    from train.localiser import LocaliserConfig

    parse = lambda *argv: build_parser().parse_args(["localiser", *argv])  # noqa: E731
    assert localiser_config(parse("r")) == LocaliserConfig(run="r")
    given = localiser_config(parse("r", "--epochs", "3", "--lr", "0.01", "--max-minutes", "5", "--out", "o"))
    assert (given.epochs, given.learning_rate, given.max_minutes, given.out) == (3, 0.01, 5.0, "o")
