"""The out-of-distribution flag: the score's statistics (export/ood.py), its place in the
manifest, a real tiny export carrying it, and the runtime's flag."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest

# --------------------------------------------------------------------------- statistics


def _two_class_features(rng, n=300, dim=40):
    """Correlated features of two classes with different means."""
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    labels = (np.arange(n) % 2).astype(int)
    means = np.stack([np.zeros(dim), np.full(dim, 0.5)])
    return rng.normal(size=(n, dim)) @ mix + means[labels], labels, mix, means


def test_score_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    from sklearn.covariance import LedoitWolf

    from export.ood import fit_stats

    rng = np.random.default_rng(0)
    x, y, _, _ = _two_class_features(rng)
    stats = fit_stats(x, y)
    means = np.stack([x[y == c].mean(0) for c in (0, 1)])
    precision = LedoitWolf(assume_centered=True).fit(x - means[y]).precision_
    probe = rng.normal(size=(5, x.shape[1])) * 3
    direct = np.sqrt(np.min([np.einsum("nd,de,ne->n", probe - m, precision, probe - m) for m in means], axis=0))
    np.testing.assert_allclose(stats.scores(probe), direct, rtol=1e-6)
    assert stats.classes == [0, 1] and stats.n_train == len(x) and 0 < stats.shrinkage < 1


def test_far_features_score_higher_than_held_out_ones():
    from export.ood import choose_threshold, fit_stats

    rng = np.random.default_rng(1)
    x, y, mix, means = _two_class_features(rng, n=400)
    stats = fit_stats(x[:300], y[:300])
    held_out = stats.scores(x[300:])
    # the same spread, shifted along a direction the training data hardly varies in
    far = stats.scores(x[300:] + 4 * np.linalg.svd(mix)[2][-1])
    record = choose_threshold(held_out, 0.95)
    assert record["n"] == 100 and 0.04 <= record["false_alarm_rate"] <= 0.06
    assert (far >= record["threshold"]).mean() > 0.9


def test_choose_threshold_counts_non_finite_scores_as_flagged():
    from export.ood import choose_threshold

    record = choose_threshold(np.array([1.0, 2.0, 3.0, np.inf]), 0.5)
    assert record["threshold"] == 2.0 and record["false_alarm_rate"] == 0.75
    with pytest.raises(ValueError):
        choose_threshold(np.array([]))


# --------------------------------------------------------------------------- a real export


@pytest.fixture(scope="module")
def ood_manifest(tiny_export) -> Manifest:
    return read_manifest(tiny_export)


def test_export_records_the_ood_section_and_per_variant_thresholds(ood_manifest):
    ood = ood_manifest.ood
    assert ood is not None and ood["output"] == "ood" and ood["feature_layers"] == ["block3_pool", "gap"]
    assert ood["quantile"] == 0.99 and ood["n_train"] == 14 and ood["classes"] == [0, 1]
    assert ood_manifest.export_settings["ood"] == {"enabled": True, "quantile": 0.99,
                                                   "layers": ["block3_pool", "gap"]}
    assert ood["dim"] == 256 + 512
    for v in ood_manifest.variants:
        assert v.outputs == ["malignancy", "cam", "ood"], v.name
        assert v.ood["n"] == 3 and v.ood["chosen_on"] == "validation split"
        # 99th percentile of 3 scores: only the largest is at or above it
        assert v.ood["false_alarm_rate"] == pytest.approx(1 / 3)
        assert ood_manifest.ood_threshold(v.name) == v.ood["threshold"] > 0


def _val_inputs(run):
    from runtime.preprocessing import PreprocessSpec, prepare_batch
    from train.data import load_files

    info = json.loads((run / "run.json").read_text())
    split = json.loads((run / "split.json").read_text())
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    images = load_files(Path(split["data_root"]), [f["path"] for f in split["files"]["val"]], spec)
    return prepare_batch(list(images), spec)


def _onnx_scores(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["ood"], {"image": x})[0]


def test_onnx_scores_match_the_statistics_and_survive_int8(tiny_export, graded_run, ood_manifest):
    import onnx

    from export.ood import features_of, fit_stats
    from runtime.preprocessing import PreprocessSpec, prepare_batch
    from train.data import load_files
    from train.tf_setup import keras

    model = keras.models.load_model(graded_run / "model.keras", compile=False)
    split = json.loads((graded_run / "split.json").read_text())
    spec = PreprocessSpec.from_dict(ood_manifest.preprocessing)
    train = split["files"]["train"]
    x_train = prepare_batch(list(load_files(Path(split["data_root"]), [f["path"] for f in train], spec)), spec)
    stats = fit_stats(features_of(model, x_train), np.array([f["label"] for f in train]))
    x_val = _val_inputs(graded_run)
    expected = stats.scores(features_of(model, x_val))

    fp32 = _onnx_scores(tiny_export / "onnx-fp32.onnx", x_val)
    assert fp32.shape == (len(x_val),) and fp32.dtype == np.float32
    np.testing.assert_allclose(fp32, expected, rtol=1e-3)
    # INT8: the score's own nodes stay float (only the features carry quantization noise)
    int8 = _onnx_scores(tiny_export / "onnx-int8.onnx", x_val)
    # (a correlation over the 3 validation images of the tiny run is noise; compare values)
    assert np.all(np.isfinite(int8)) and np.allclose(int8, fp32, rtol=0.2), (int8, fp32)
    graph = onnx.load(str(tiny_export / "onnx-int8.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    assert producers["ood"].op_type == "Sqrt"
    assert any("OOD score kept in float32" in note for note in ood_manifest.variant("onnx-int8").notes)


# --------------------------------------------------------------------------- the runtime


def _far_images():
    """Images nothing like an ultrasound scan, yet gray and large enough to pass the
    runtime's input checks (which refuse strongly coloured images before the model):
    pixel noise and a hard-edged stripe pattern."""
    rng = np.random.default_rng(7)
    noise = np.repeat(rng.integers(0, 256, (96, 96, 1), dtype=np.uint8), 3, axis=2)
    stripes = np.repeat(((np.arange(96)[None, :] // 8) % 2 * 255).astype(np.uint8).repeat(96, 0)[..., None], 3, 2)
    return [noise, stripes]


def test_classifier_flags_far_images_and_not_training_like_ones(tiny_export, tiny_dataset):
    from runtime.classifier import Classifier
    from runtime.images import read_image

    scans = [read_image(p) for p in sorted(tiny_dataset.rglob("*.png")) if "_mask" not in p.stem]
    for variant in ("onnx-fp32", "onnx-int8"):
        with Classifier.load(tiny_export, variant=variant, force=True) as clf:   # tiny parity may fail
            assert clf.has_ood and clf.ood_threshold == read_manifest(tiny_export).ood_threshold(variant)
            far = clf.predict_decoded(_far_images())
            assert all(p.out_of_distribution for p in far), [(p.ood_score, clf.ood_threshold) for p in far]
            own = clf.predict_decoded(scans)
            flagged = [p for p in own if p.out_of_distribution]
            assert len(flagged) <= len(own) // 4, (variant, len(flagged), len(own))
            assert all(p.ood_score is not None and p.label is not None for p in own)
            assert all(p.ood_score >= clf.ood_threshold for p in flagged)


def test_lone_onnx_file_carries_its_ood_threshold(tiny_export, tmp_path):
    from runtime.classifier import Classifier

    shutil.copy(tiny_export / "onnx-int8.onnx", tmp_path / "model.onnx")
    with Classifier.load(tmp_path / "model.onnx") as clf:
        assert clf.info.source == "embedded metadata"
        assert clf.ood_threshold == read_manifest(tiny_export).ood_threshold("onnx-int8")
        assert clf.predict_decoded(_far_images()[:1])[0].out_of_distribution is True


def test_old_manifest_without_ood_loads_and_flags_nothing(tiny_export, tmp_path):
    """An export from before the flag: no "ood" section, no per-variant record. It still
    loads; predictions carry no flag (None), even though this graph has the output."""
    from runtime.classifier import Classifier

    old = tmp_path / "old"
    shutil.copytree(tiny_export, old)
    doc = json.loads((old / MANIFEST_NAME).read_text())
    doc.pop("ood")
    for v in doc["variants"]:
        v.pop("ood")
    (old / MANIFEST_NAME).write_text(json.dumps(doc))
    manifest = read_manifest(old)
    assert manifest.ood is None and manifest.ood_threshold("onnx-int8") is None
    with Classifier.load(old) as clf:
        assert not clf.has_ood
        pred = clf.predict_decoded(_far_images()[:1])[0]
        assert pred.ok and pred.out_of_distribution is None and pred.ood_score is None


def test_manifest_ood_round_trip_and_checks(ood_manifest, tmp_path):
    write_manifest(tmp_path, ood_manifest)
    again = read_manifest(tmp_path)
    assert again == ood_manifest and again.ood == ood_manifest.ood
    good = ood_manifest.to_dict()

    def broken(change) -> dict:
        doc = json.loads(json.dumps(good))
        change(doc)
        return doc

    bad = [
        (lambda d: d["variants"][0]["ood"].update(threshold="high"), "threshold"),
        (lambda d: d["variants"][0]["ood"].update(false_alarm_rate=1.5), "false_alarm_rate"),
        (lambda d: d["variants"][0]["ood"].pop("threshold"), "threshold"),
        (lambda d: d["variants"][0].update(outputs=["malignancy", "cam"]), "without an 'ood' output"),
        (lambda d: d["ood"].update(output="cam"), "ood.output"),
        (lambda d: d["ood"].pop("method"), "ood.method"),
        (lambda d: d.update(ood=[1, 2]), "ood"),
    ]
    for change, where in bad:
        with pytest.raises(ValueError, match="invalid manifest") as err:
            Manifest.from_dict(broken(change))
        assert where in str(err.value)


def test_predict_reports_carry_the_flag(tiny_export, tmp_path):
    import csv

    import cv2

    from runtime import predict_files
    from runtime.classifier import Classifier

    cv2.imwrite(str(tmp_path / "noise.png"), _far_images()[0])
    with Classifier.load(tiny_export) as clf:
        results = predict_files.predict_paths(clf, [str(tmp_path / "noise.png")])
    predict_files.write_json(tmp_path / "r.json", results)
    predict_files.write_csv(tmp_path / "r.csv", results)
    row = json.loads((tmp_path / "r.json").read_text())[0]
    assert row["out_of_distribution"] is True and row["ood_score"] > 0
    with open(tmp_path / "r.csv", newline="") as f:
        assert next(csv.DictReader(f))["out_of_distribution"] == "True"
    assert predict_files.OOD_NOTE in predict_files.format_table(results)


def test_generated_non_ultrasound_images_are_seeded_and_varied():
    from benchmarks.reliability.ood import GENERATORS, generated_images, is_colour

    a, b = generated_images(per_kind=2, size=64, seed=3), generated_images(per_kind=2, size=64, seed=3)
    assert len(a) == 2 * len(GENERATORS)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert all(s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8 and s.image.std() > 1 for s in a)
    kinds = {s.kind: is_colour(s.image) for s in a}
    assert kinds["colour noise"] and not kinds["mammogram-like (gray)"]


def test_demo_warns_about_out_of_distribution_uploads(tiny_export, tiny_dataset):
    import cv2

    from demo.config import DemoConfig
    from demo.service import DemoService
    from demo.views import OOD_WARNING, esc, result_html

    service = DemoService(DemoConfig(model=tiny_export))
    try:
        ok, png = cv2.imencode(".png", _far_images()[0])
        far = service.classify_bytes(png.tobytes(), "noise.png")
        assert far.ok and far.out_of_distribution is True and far.to_json()["out_of_distribution"] is True
        assert "bcd-ood" in result_html(far) and esc(OOD_WARNING) in result_html(far)   # the warning's text on the page
        scan = sorted(tiny_dataset.rglob("*.png"))[0]
        near = service.classify_bytes(scan.read_bytes(), scan.name)
        assert near.ok and near.ood_score is not None
        assert ("bcd-ood" in result_html(near)) == near.out_of_distribution
    finally:
        service.close()
