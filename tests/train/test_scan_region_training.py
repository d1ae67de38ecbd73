"""Training reads images the way the runtime classifies them (issue 20): the scan-region
setting of TrainConfig, its default for runs from before it, resuming, the decode cache
key, and images and lesion masks cut identically by runtime.scan_crop.apply_region."""
from __future__ import annotations

import json
from dataclasses import asdict

import cv2
import numpy as np
import pytest

from runtime.dataset import DataSource, read_source
from runtime.images import DEFAULT_MAX_PIXELS, read_image
from runtime.preprocessing import PreprocessSpec, resize
from runtime.scan_region import RegionConfig
from train.cache import DecodeCache
from train.config import TrainConfig, run_scan_region, saved_scan_region
from train.data import load_source, load_sources, read_sample
from train.dedup import DedupConfig
from tests.conftest import dicom_bytes

SPEC = PreprocessSpec(image_size=32)
BOX = (24, 16, 112, 96)                     # x, y, width, height of the tissue region


def test_new_runs_crop_and_old_runs_load_as_they_were_trained():
    assert TrainConfig(out="r").scan_region == "auto"
    assert TrainConfig(out="r").region == RegionConfig(mode="auto")
    old = TrainConfig(out="r").to_dict()
    old.pop("scan_region")                  # a run.json from before the setting
    assert TrainConfig.from_dict(old).scan_region == "off"
    assert TrainConfig.from_dict({**old, "scan_region": "auto"}).scan_region == "auto"
    with pytest.raises(ValueError, match="scan region must be one of auto, off"):
        TrainConfig(out="r", scan_region="found")


def test_run_json_readers(tmp_path):
    keep = {"colour_marks": "keep", "white_calipers": "keep"}   # runs from before marks were erased
    assert run_scan_region({"config": {}}) == RegionConfig(mode="off", **keep)   # before the finder
    assert run_scan_region({"config": {"scan_region": "auto"}}) == RegionConfig(mode="auto", **keep)
    # the version recorded is kept (runs recorded with version 1 are cut by today's finder,
    # which differs from it on fans only: runtime.scan_region.RegionConfig.version)
    assert run_scan_region({"scan_region": {"mode": "auto", "version": 1}, "config": {}}) == \
        RegionConfig(version=1, **keep)
    assert run_scan_region({"scan_region": RegionConfig().to_dict(), "config": {}}) == RegionConfig()
    # colour marks erased, white calipers not yet (runs between the two steps)
    assert run_scan_region({"config": {"scan_region": "auto", "colour_marks": "inpaint"}}) == \
        RegionConfig(white_calipers="keep")
    assert run_scan_region({"config": {"scan_region": "auto", "colour_marks": "inpaint",
                                       "white_calipers": "erase"}}) == RegionConfig(white_calipers="erase")
    with pytest.raises(ValueError, match="unknown field"):
        run_scan_region({"scan_region": {"mode": "auto", "version": 1, "extra": 1}})
    assert saved_scan_region(tmp_path) == "auto"                                        # no run yet: a new run
    (tmp_path / "run.json").write_text(json.dumps({"config": {"out": str(tmp_path)}}))
    assert saved_scan_region(tmp_path) == "off"
    (tmp_path / "run.json").write_text(json.dumps({"config": {"scan_region": "auto"}}))
    assert saved_scan_region(tmp_path) == "auto"


def test_an_old_run_resumes_unchanged(tmp_path):
    from train.run_dir import RunDir
    from train.trainer import RunExists, _check_resume_config

    config = TrainConfig(out=str(tmp_path), scan_region="off")
    saved = config.to_dict()
    saved.pop("scan_region")
    (tmp_path / "run.json").write_text(json.dumps({"config": saved}))
    _check_resume_config(RunDir(tmp_path), config)                      # no difference: it was trained "off"
    with pytest.raises(RunExists, match="scan_region"):
        _check_resume_config(RunDir(tmp_path), TrainConfig(out=str(tmp_path), scan_region="auto"))


def test_bcd_train_flag(tmp_path):
    import json

    from bcd.cli import build_parser, train_config
    parser = build_parser()
    assert train_config(parser.parse_args(["train", "--out", "r", "--scan-region", "off"])).scan_region == "off"
    assert train_config(parser.parse_args(["train", "--out", "r"])).scan_region == "auto"     # a new run
    (tmp_path / "run.json").write_text(json.dumps({"config": {"epochs": 3}}))               # a run from before
    resumed = train_config(parser.parse_args(["train", "--out", str(tmp_path), "--resume"]))
    assert resumed.scan_region == "off"                                                     # keeps the run's
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "r", "--scan-region", "box"])


# ------------------------------------------------------------------ images and masks


def region_sequence():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    x, y, w, h = BOX
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType = 1, 1
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x, y
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x + w - 1, y + h - 1
    return Sequence([item])


@pytest.fixture
def dicom_source(tmp_path):
    """A CSV index of DICOM screens with a tissue region, and PNG lesion masks."""
    root = tmp_path / "screens"
    root.mkdir()
    lines = ["path,label,mask"]
    rng = np.random.default_rng(0)
    for k in range(4):
        screen = rng.integers(0, 80, (128, 160), dtype=np.uint8)
        screen[30 + 5 * k:70, 40:100] += 150
        (root / f"s{k}.dcm").write_bytes(dicom_bytes(screen, SequenceOfUltrasoundRegions=region_sequence()))
        mask = np.zeros((128, 160), np.uint8)
        mask[40:60 + 5 * k, 50:90] = 255
        cv2.imwrite(str(root / f"m{k}.png"), mask)
        lines.append(f"s{k}.dcm,{'malignant' if k % 2 else 'benign'},m{k}.png")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return DataSource.parse(str(root / "index.csv"))


def test_images_and_masks_are_cut_to_the_same_region(dicom_source):
    x, y, w, h = BOX
    sample = read_source(dicom_source).samples[1]
    image, mask = read_sample(sample.path, sample.mask, RegionConfig(mode="auto"))
    full, full_mask = read_image(sample.path), read_image(sample.mask)[..., 0]
    assert np.array_equal(image, full[y:y + h, x:x + w])
    assert np.array_equal(mask, full_mask[y:y + h, x:x + w])
    whole, whole_mask = read_sample(sample.path, sample.mask)                  # off (the default)
    assert np.array_equal(whole, full) and np.array_equal(whole_mask, full_mask)

    data = load_sources([dicom_source], SPEC, region=RegionConfig(mode="auto"))
    k = data.relative_paths.index("s1.dcm")
    assert np.array_equal(data.images[k], resize(image, SPEC))
    expected = (cv2.resize(mask, (32, 32), interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8)
    assert np.array_equal(data.masks[k], expected) and data.has_mask[k]
    plain = load_sources([dicom_source], SPEC)
    assert not np.array_equal(plain.images[k], data.images[k])


def test_the_decode_cache_key_includes_the_region(dicom_source, tmp_path):
    cache = DecodeCache(tmp_path / "cache")
    scan = read_source(dicom_source)
    off = load_source(scan, SPEC, cache=cache)
    on = load_source(scan, SPEC, cache=cache, region=RegionConfig(mode="auto"))
    assert len(list((tmp_path / "cache").glob("decoded-*.npz"))) == 2           # two entries, never mixed up
    assert not np.array_equal(off["images"], on["images"])
    again = load_source(scan, SPEC, cache=cache, region=RegionConfig(mode="auto"))
    assert np.array_equal(again["images"], on["images"])
    # whole images keep the key they had before the finder existed (old caches stay valid)
    settings = {"spec": SPEC.to_dict(), "dedup": asdict(DedupConfig()), "max_pixels": DEFAULT_MAX_PIXELS}
    assert (tmp_path / "cache" / f"decoded-{cache.key(scan, settings)}.npz").is_file()
