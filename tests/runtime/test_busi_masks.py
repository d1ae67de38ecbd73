"""BUSI's own lesion masks (`<name>_mask.png` beside each image) become the images'
masks; a CSV's BI-RADS column becomes each sample's BI-RADS (issue 22)."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.dataset import CsvMapping, DataSource, birads_level, read_source
from runtime.preprocessing import PreprocessSpec

BUSI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "busi"


def _image(path: Path, seed: int) -> None:
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (40, 40), dtype=np.uint8))


def _mask(path: Path, lesion: bool) -> None:
    mask = np.zeros((40, 40), np.uint8)
    if lesion:
        mask[10:20, 15:30] = 255
    cv2.imwrite(str(path), mask)


@pytest.fixture()
def busi_like(tmp_path) -> Path:
    """benign/b.png with a lesion mask, normal/n.png with an empty one (BUSI's normal
    images), malignant/m.png without a mask."""
    for cls in ("benign", "normal", "malignant"):
        (tmp_path / cls).mkdir()
    _image(tmp_path / "benign" / "b (1).png", 1)
    _mask(tmp_path / "benign" / "b (1)_mask.png", lesion=True)
    _image(tmp_path / "normal" / "n.png", 2)
    _mask(tmp_path / "normal" / "n_mask.png", lesion=False)
    _image(tmp_path / "malignant" / "m.png", 3)
    return tmp_path


def test_mask_beside_an_image_is_its_lesion_mask(busi_like):
    scan = read_source(DataSource.parse(str(busi_like)))
    masks = {s.relative: s.mask for s in scan.samples}
    assert masks == {"benign/b (1).png": busi_like / "benign" / "b (1)_mask.png",
                     "malignant/m.png": None, "normal/n.png": busi_like / "normal" / "n_mask.png"}
    assert scan.masks_skipped == 2      # masks are never taken for images


def test_loaded_masks_empty_for_normal_and_unknown_without_a_file(busi_like, tmp_path_factory):
    from train.cache import DecodeCache
    from train.data import load_sources
    data = load_sources([DataSource.parse(str(busi_like))], PreprocessSpec(image_size=32),
                        cache=DecodeCache(None))
    by_name = dict(zip(data.relative_paths, range(len(data.labels))))
    b, n, m = by_name["benign/b (1).png"], by_name["normal/n.png"], by_name["malignant/m.png"]
    assert data.has_mask.tolist() == [i in (b, n) for i in range(3)]
    assert data.masks[b].sum() > 0 and data.masks[n].sum() == 0 and data.masks[m].sum() == 0


def test_cache_key_changes_when_a_mask_appears(busi_like):
    from train.cache import DecodeCache
    cache = DecodeCache(None)
    before = cache.key(read_source(DataSource.parse(str(busi_like))), {})
    _mask(busi_like / "malignant" / "m_mask.png", lesion=True)
    after = cache.key(read_source(DataSource.parse(str(busi_like))), {})
    assert before != after


def test_every_busi_development_image_has_its_mask():
    if not BUSI.is_dir():
        pytest.skip("BUSI development data not present")
    scan = read_source(DataSource.parse(str(BUSI)))
    assert scan.samples and all(s.mask is not None and s.mask.stem == Path(s.relative).stem + "_mask"
                                for s in scan.samples)


@pytest.mark.parametrize("text, level", [("4", 4), ("4a", 4), (" 4C ", 4), ("5", 5), ("2", 2),
                                         ("0", None), ("", None), (None, None), ("7", None), ("x", None)])
def test_birads_level(text, level):
    assert birads_level(text) == level


def test_csv_birads_column_is_read_when_mapped(tmp_path):
    for i in range(3):
        _image(tmp_path / f"i{i}.png", i)
    with open(tmp_path / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "Pathology", "BIRADS"])
        w.writerows([["i0.png", "benign", "2"], ["i1.png", "malignant", "4b"], ["i2.png", "benign", ""]])
    mapped = read_source(DataSource.parse(str(tmp_path / "index.csv"),
                                          CsvMapping.parse("path={file},label=Pathology,birads=BIRADS")))
    assert [s.birads for s in mapped.samples] == [2, 4, None]
    unmapped = read_source(DataSource.parse(str(tmp_path / "index.csv"), CsvMapping.parse("path={file},label=Pathology")))
    assert [s.birads for s in unmapped.samples] == [None, None, None]
