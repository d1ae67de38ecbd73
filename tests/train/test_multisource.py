"""CSV-indexed datasets, several sources in one run, patient-grouped splits, the decode
cache, lesion masks and the model options of multi-site training (issue 12)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.dataset import CsvMapping, DatasetError, DataSource, read_source
from runtime.preprocessing import PreprocessSpec
from tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]
BUSBRA = REPO.parent / "shared" / "data" / "busbra"
BUSBRA_MAP = "path=Images/{ID}.png,label=Pathology,group=Case,mask=Masks/mask_{ID#bus_}.png"


def texture(seed: int, size: int = 96) -> np.ndarray:
    """A random smooth texture: distinct seeds give perceptual hashes far apart."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def near_copy(image: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-3, 4, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def lesion_mask(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
    cv2.circle(mask, (int(cx), int(cy)), size // 6, 255, -1)
    return mask


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory) -> dict:
    """Site A: a canonical path,label,group,mask CSV with 3 images per patient for 16
    patients. Site B: a class-folder tree holding its own images plus near-copies of
    two of site A's images (the same scan in two datasets)."""
    root = tmp_path_factory.mktemp("sites")
    a = root / "site_a"
    (a / "img").mkdir(parents=True)
    (a / "masks").mkdir()
    rows, seed = [], 0
    for patient in range(16):
        label = "malignant" if patient % 3 == 0 else "benign"
        for view in range(3):
            seed += 1
            name = f"p{patient:02d}_{view}.png"
            cv2.imwrite(str(a / "img" / name), texture(seed))
            cv2.imwrite(str(a / "masks" / name), lesion_mask(seed=seed))
            rows.append([f"img/{name}", label, f"P{patient}", f"masks/{name}"])
    csv_path = write_csv(a / "index.csv", ["path", "label", "group", "mask"], rows)
    b = root / "site_b"
    copies = []
    for cls, n in (("benign", 14), ("malignant", 8)):
        (b / cls).mkdir(parents=True)
        for k in range(n):
            seed += 1
            cv2.imwrite(str(b / cls / f"{cls}_{k}.png"), texture(1000 + seed))
    for k, (src, cls) in enumerate((("p00_0.png", "malignant"), ("p01_1.png", "benign"))):
        target = b / cls / f"copy_{k}.png"
        cv2.imwrite(str(target), near_copy(cv2.imread(str(a / "img" / src), cv2.IMREAD_GRAYSCALE), k))
        copies.append((f"{cls}/copy_{k}.png", f"img/{src}"))
    return {"csv": csv_path, "folder": b, "copies": copies}


# ---- the CSV reader -----------------------------------------------------------------

def test_canonical_csv_needs_no_mapping(two_sites):
    scan = read_source(DataSource.parse(str(two_sites["csv"])))
    assert scan.source.name == "site_a"            # the CSV's folder names the source
    assert len(scan.samples) == 48 and not scan.bad_rows
    first = scan.samples[0]
    assert first.relative == "img/p00_0.png" and first.group == "P0" and first.label == 1
    assert first.mask is not None and first.mask.is_file()


def test_bad_rows_are_listed_and_skipped(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), texture(1))
    cv2.imwrite(str(tmp_path / "b.png"), texture(2))
    csv_path = write_csv(tmp_path / "index.csv", ["path", "label"], [
        ["a.png", "benign"], ["missing.png", "malignant"], ["b.png", "suspicious"], ["a.png", "benign"],
        ["b.png", "MALIGNANT"]])
    scan = read_source(DataSource.parse(str(csv_path)))
    assert [s.relative for s in scan.samples] == ["a.png", "b.png"]
    assert scan.samples[1].label == 1                  # labels are case-insensitive
    reasons = {row["row"]: row["reason"] for row in scan.bad_rows}
    assert set(reasons) == {3, 4, 5}                   # header is row 1
    assert "not found" in reasons[3] and "unknown label 'suspicious'" in reasons[4] and "duplicate" in reasons[5]


@pytest.mark.parametrize("content, expected", [
    ("file,diagnosis\na.png,benign\n", "missing column(s) label, path; the CSV has file, diagnosis"),
    ("path,label\n", "header but no rows"),
    ("", "missing column(s) label, path; the CSV has no header"),
])
def test_unusable_csv_fails_at_once_naming_the_columns(tmp_path, content, expected):
    csv_path = tmp_path / "index.csv"
    csv_path.write_text(content)
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_source(DataSource.parse(str(csv_path)))


def test_mapping_syntax_and_templates():
    m = CsvMapping.parse(BUSBRA_MAP)
    assert m.label == "Pathology" and m.group == "Case"
    from runtime.dataset import fill_template
    assert fill_template(m.mask, {"ID": "bus_0001-l"}) == "Masks/mask_0001-l.png"
    with pytest.raises(DatasetError, match="bad CSV mapping entry"):
        CsvMapping.parse("picture=Images/{ID}.png")


def test_busbra_csv_is_read_as_shipped():
    if not BUSBRA.is_dir():
        missing("BUS-BRA development data not present")
    scan = read_source(DataSource.parse(str(BUSBRA / "bus_data.csv"), CsvMapping.parse(BUSBRA_MAP)))
    assert scan.source.name == "busbra" and not scan.bad_rows
    assert len(scan.samples) == 1500
    assert len({s.group for s in scan.samples}) == 852
    assert sum(s.label for s in scan.samples) == 485
    assert all(s.mask is not None for s in scan.samples)


# ---- several sources, one split ----------------------------------------------------

def _load(two_sites, size=32):
    from train.data import load_sources
    sources = [DataSource.parse(str(two_sites["csv"])), DataSource.parse(str(two_sites["folder"]))]
    return load_sources(sources, PreprocessSpec(image_size=size))


def _groups(data):
    from train.dedup import split_groups
    patients = [(s, p) if p else None for s, p in zip(data.source_names.tolist(), data.patients)]
    return split_groups(data.hashes, 12, patients)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_patient_or_near_duplicate_straddles_two_splits(two_sites, seed):
    from train.split import SplitConfig, split_indices
    data = _load(two_sites)
    groups = _groups(data)
    idx = split_indices(data.labels, groups, SplitConfig(0.2, 0.2, seed=seed), sources=data.source_names)
    where = {i: name for name, members in idx.items() for i in members}
    assert sorted(where) == list(range(len(data.labels)))
    patient_splits, key = {}, data.keys()
    for i, patient in enumerate(data.patients):
        if patient is not None:
            patient_splits.setdefault(patient, set()).add(where[i])
    assert all(len(s) == 1 for s in patient_splits.values())
    index = {k: i for i, k in enumerate(key)}
    for copy, original in two_sites["copies"]:   # the same scan in both datasets: one split
        assert where[index[("site_b", copy)]] == where[index[("site_a", original)]]
    for name in ("train", "val", "test"):       # stratified by source: every split has both sites
        assert {data.source_names[i] for i in idx[name]} == {"site_a", "site_b"}


def test_val_source_holds_a_whole_site_out(two_sites):
    from train.split import SplitConfig, split_indices
    data = _load(two_sites)
    idx = split_indices(data.labels, _groups(data), SplitConfig(seed=3, val_source="site_b"), sources=data.source_names)
    val_sources = [data.source_names[i] for i in idx["val"]]
    # all of site B, plus only the site A images that are the same scans as B's copies
    assert val_sources.count("site_b") == int((data.source_names == "site_b").sum())
    assert {data.source_names[i] for i in idx["train"] + idx["test"]} == {"site_a"}
    with pytest.raises(ValueError, match="no such source"):
        split_indices(data.labels, _groups(data), SplitConfig(val_source="elsewhere"), sources=data.source_names)


def test_decode_cache_is_reused_and_invalidated(two_sites, tmp_path, monkeypatch):
    from train.cache import DecodeCache
    from train.data import load_source
    cache = DecodeCache(tmp_path / "cache")
    scan = read_source(DataSource.parse(str(two_sites["folder"])))
    first = load_source(scan, PreprocessSpec(image_size=32), cache=cache)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_source(scan, PreprocessSpec(image_size=32), cache=cache)
    np.testing.assert_array_equal(first["images"], again["images"])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    load_source(scan, PreprocessSpec(image_size=48), cache=cache)       # another size: another entry
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


# ---- training on two sites ---------------------------------------------------------

@pytest.fixture(scope="module")
def two_site_run(two_sites, tmp_path_factory) -> Path:
    from bcd.cli import main
    out = tmp_path_factory.mktemp("runs") / "two-sites"
    code = main(["train", "--data", f"a={two_sites['csv']}", "--data", str(two_sites["folder"]),
                 "--out", str(out), "--image-size", "32", "--epochs", "1", "--arch", "vgg16-bn",
                 "--width", "0.25", "--augment", "ultrasound", "--lesion-weight", "0.5", "--batch-size", "8"])
    assert code == 0
    return out


@pytest.mark.slow   # two_site_run trains
def test_two_site_run_reports_per_source(two_site_run):
    split = json.loads((two_site_run / "split.json").read_text())
    assert [s["name"] for s in split["sources"]] == ["a", "site_b"]
    assert set(split["counts_per_source"]) == {"a", "site_b"}
    assert all(f["source"] in ("a", "site_b") for part in split["files"].values() for f in part)
    metrics = json.loads((two_site_run / "metrics.json").read_text())
    assert set(metrics["per_source"]) == {"a", "site_b"}
    n = {k: v["at_operating_threshold"]["n"] for k, v in metrics["per_source"].items()}
    assert sum(n.values()) == metrics["at_operating_threshold"]["n"]
    # site A has masks: localisation figures for its test images
    loc = metrics["localisation"]["test"]
    assert loc["a"]["n"] == sum(1 for f in split["files"]["test"] if f["source"] == "a")
    assert 0.0 <= loc["a"]["pointing_game"] <= 1.0
    assert (two_site_run / "plots" / "roc_per_source.png").is_file()
    info = json.loads((two_site_run / "run.json").read_text())
    assert info["model"]["batch_norm"] is True and info["model"]["precision"]["used"] in ("float32", "bfloat16")
    assert "| a |" in (two_site_run / "metrics.md").read_text()


@pytest.mark.slow   # two_site_run trains
def test_saved_model_is_plain_float32_vgg16(two_site_run):
    from train.tf_setup import keras
    model = keras.models.load_model(two_site_run / "model.keras", compile=False)
    names = [layer.name for layer in model.layers]
    assert "block5_conv3" in names and not any(n.endswith("_bn") or n == "lesion" for n in names)
    assert all(w.dtype == "float32" for w in model.weights)
    assert model.get_layer("block1_conv1").filters == 16      # width 0.25 of 64


@pytest.mark.slow   # two_site_run trains
def test_fine_tuning_starts_from_the_earlier_run(two_site_run):
    from train.model import ModelConfig, build_model
    from train.tf_setup import keras
    donor = keras.models.load_model(two_site_run / "model.keras", compile=False)
    for bn in (False, True):
        model, info = build_model(ModelConfig(32, str(two_site_run), width=0.25, batch_norm=bn))
        assert "from an earlier run" in info["initialisation"]
        x = np.random.default_rng(0).uniform(-100, 100, (4, 32, 32, 3)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(model(x, training=False)), np.asarray(donor(x, training=False)),
                                   rtol=1e-3, atol=1e-4)
    with pytest.raises(Exception, match="conv base does not fit"):
        build_model(ModelConfig(32, str(two_site_run), width=1.0))


@pytest.mark.slow   # two_site_run trains
def test_bcd_train_from_a_folded_run_matches_the_restarted_batch_norms(two_site_run, two_sites, tmp_path, capsys):
    from bcd.cli import main
    out = tmp_path / "fine-tuned"
    data = ["--data", f"a={two_sites['csv']}", "--data", str(two_sites["folder"])]
    # another seed, which would split the images otherwise: a fine-tuned model keeps its
    # parent's split, or it would train on the parent's test images
    assert main(["train", *data, "--weights", str(two_site_run), "--out", str(out), "--image-size", "32",
                 "--epochs", "1", "--arch", "vgg16-bn", "--width", "0.25", "--batch-size", "8", "--seed", "5"]) == 0
    model = json.loads((out / "run.json").read_text())["model"]
    assert len(model["batch_norms_restarted"]) == 13 and "from an earlier run" in model["initialisation"]
    assert "13 matched to" in (out / "train.log").read_text()
    assert (out / "split.json").read_bytes() == (two_site_run / "split.json").read_bytes()
    # holding a source out would move the parent's training images into validation
    assert main(["train", *data, "--weights", str(two_site_run), "--out", str(tmp_path / "loso"), "--image-size",
                 "32", "--epochs", "1", "--arch", "vgg16-bn", "--width", "0.25", "--val-source", "a"]) != 0
    assert "give the same --val-source" in capsys.readouterr().err


@pytest.mark.slow   # two_site_run trains
def test_evaluate_external_csv_with_masks(two_site_run, two_sites, tmp_path):
    from bcd.cli import main
    assert main(["evaluate", str(two_site_run), "--data", str(two_sites["csv"]), "--out", str(tmp_path / "ev")]) == 0
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert doc["at_operating_threshold"]["n"] == 48
    assert doc["localisation"]["external"]["site_a"]["n"] == 48


# ---- model and augmentation pieces -------------------------------------------------

def test_batch_norm_folds_exactly_into_the_convs():
    from train.model import ModelConfig, build_model, inference_model
    config = ModelConfig(32, "none", batch_norm=True, width=0.25, lesion="head")
    model, _ = build_model(config)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name.endswith("_bn"):
            g, b, m, v = layer.get_weights()
            layer.set_weights([g * rng.uniform(0.5, 2, g.shape), b + rng.normal(0, 0.1, b.shape),
                               m + rng.normal(0, 0.2, m.shape), v * rng.uniform(0.5, 2, v.shape)])
    x = rng.uniform(-100, 100, (3, 32, 32, 3)).astype(np.float32)
    plain = inference_model(model, config)
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(model(x, training=False)[0]), rtol=1e-4, atol=1e-5)


def test_precision_follows_the_cpu_flags():
    from train.precision import resolve_precision
    assert resolve_precision("auto", "flags\t: fpu sse avx2 avx512_bf16\n") == "bfloat16"
    assert resolve_precision("auto", "flags\t: fpu amx_bf16 amx_tile\n") == "bfloat16"
    assert resolve_precision("auto", "flags\t: fpu sse avx2 fma\n") == "float32"
    assert resolve_precision("float32", "flags\t: avx512_bf16\n") == "float32"


def test_masks_follow_the_geometric_augmentation():
    from train.augment import AugmentConfig, build_augment
    from train.tf_setup import tf
    size = 64
    masks = np.stack([lesion_mask(size, seed=s) for s in range(8)]).astype(np.float32)[..., None] / 255.0
    images = np.where(masks > 0, 230.0, 20.0).repeat(3, axis=-1).astype(np.float32)   # the lesion is bright
    aug = build_augment(AugmentConfig.preset("ultrasound"), size, seed=0)
    out_images, out_masks = aug(tf.constant(images), tf.constant(masks))
    bright = np.asarray(out_images).mean(axis=-1) > 125
    inside = np.asarray(out_masks)[..., 0] > 0.5
    agree = (bright == inside).mean()
    assert agree > 0.9, agree     # marks, noise and interpolation edges account for the rest
    assert not np.allclose(np.asarray(out_masks), masks)   # something moved


def test_grad_cam_lesion_loss_pulls_toward_the_lesion():
    from train.tf_setup import tf
    from train.trainer import cam_lesion_loss
    target = np.zeros((3, 4, 4, 1), np.float32)
    target[:, 1:3, 1:3] = 1.0
    on_lesion = np.where(target > 0, 5.0, -5.0).astype(np.float32)
    elsewhere = -on_lesion
    loss = lambda logits, t=target: np.asarray(cam_lesion_loss(tf.constant(t), tf.constant(logits)))  # noqa: E731
    # the least it can be is the entropy of the target (4 equal cells: log 4)
    assert np.allclose(loss(on_lesion), np.log(4), atol=0.01) and (loss(elsewhere) > np.log(4) + 5).all()
    empty = np.zeros_like(target)
    assert (loss(elsewhere, empty) == 0).all()      # no lesion to point at: no loss


def test_training_cam_branch_is_the_models_grad_cam():
    from train.localisation import keras_cams
    from train.model import ModelConfig, build_model, inference_model
    config = ModelConfig(64, "none", batch_norm=True, width=0.25, lesion="cam")
    model, _ = build_model(config)
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    spec = PreprocessSpec(image_size=64)
    from train.data import to_model_input
    _, cam_logits = model(to_model_input(images, spec), training=False)
    expected = keras_cams(inference_model(model, config), images, spec)   # the saved model's Grad-CAM
    np.testing.assert_allclose(np.maximum(np.asarray(cam_logits)[..., 0], 0), expected, rtol=1e-3, atol=1e-4)
