"""Folder scanning and loading: BUSI and nested layouts, masks, odd and broken files."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.dataset import LabelMap, scan_folder
from runtime.preprocessing import PreprocessSpec
from train.data import load_folder
from tests.conftest import gray_noise


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def test_busi_layout_labels_and_masks_skipped(tmp_path):
    write(tmp_path / "benign" / "benign (1).png", gray_noise(1))
    write(tmp_path / "benign" / "benign (1)_mask.png", gray_noise(2))
    write(tmp_path / "malignant" / "malignant (3).png", gray_noise(3))
    write(tmp_path / "malignant" / "malignant (3)_mask_1.png", gray_noise(4))
    write(tmp_path / "normal" / "normal (2).png", gray_noise(5))
    (tmp_path / "benign" / "notes.txt").write_text("not an image")
    scan = scan_folder(tmp_path)
    found = {(e.path.name, e.class_name, e.label) for e in scan.entries}
    assert found == {("benign (1).png", "benign", 0), ("malignant (3).png", "malignant", 1),
                     ("normal (2).png", "normal", 0)}
    assert scan.masks_skipped == 2


def test_nested_breakhis_layout_takes_class_from_ancestor(tmp_path):
    deep = tmp_path / "benign" / "SOB" / "adenosis" / "SOB_B_A_14-22549AB" / "40X"
    write(deep / "a.png", gray_noise(1))
    write(tmp_path / "malignant" / "SOB" / "ductal_carcinoma" / "s1" / "100X" / "b.png", gray_noise(2))
    write(tmp_path / "unsorted" / "c.png", gray_noise(3))
    scan = scan_folder(tmp_path)
    labels = {e.path.name: e.label for e in scan.entries}
    assert labels == {"a.png": 0, "b.png": 1, "c.png": None}
    assert [p.name for p in scan.unlabelled] == ["c.png"]


def test_label_map_parsing_and_validation():
    lm = LabelMap.parse("Benign=0, malignant=1 ,normal=0")
    assert lm.classes == {"benign": 0, "malignant": 1, "normal": 0}
    for bad in ("benign=2,malignant=1", "benign=0", "benign,malignant=1"):
        with pytest.raises(ValueError):
            LabelMap.parse(bad)


def test_custom_label_map_changes_labels(tmp_path):
    write(tmp_path / "normal" / "n.png", gray_noise(1))
    write(tmp_path / "lesion" / "l.png", gray_noise(2))
    scan = scan_folder(tmp_path, LabelMap({"normal": 0, "lesion": 1}))
    assert {e.path.name: e.label for e in scan.entries} == {"n.png": 0, "l.png": 1}


def test_load_folder_converts_odd_formats_and_skips_corrupt(tmp_path, caplog):
    spec = PreprocessSpec(image_size=32)
    write(tmp_path / "benign" / "gray.png", gray_noise(1, 40))
    write(tmp_path / "benign" / "deep16.png", (gray_noise(2, 40).astype(np.uint16) * 257))
    rgba = np.dstack([np.full((40, 40, 3), 200, np.uint8), np.full((40, 40), 255, np.uint8)])
    write(tmp_path / "malignant" / "rgba.png", rgba)
    write(tmp_path / "malignant" / "photo.jpg", cv2.cvtColor(gray_noise(3, 40), cv2.COLOR_GRAY2BGR))
    write(tmp_path / "malignant" / "scan.tiff", gray_noise(4, 40))
    write(tmp_path / "benign" / "scan.bmp", gray_noise(5, 40))
    (tmp_path / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (tmp_path / "malignant" / "empty.jpg").write_bytes(b"")

    data = load_folder(tmp_path, spec)

    assert sorted(data.relative_paths) == sorted([
        "benign/deep16.png", "benign/gray.png", "benign/scan.bmp",
        "malignant/photo.jpg", "malignant/rgba.png", "malignant/scan.tiff"])
    assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.uint8
    assert sorted(u["path"] for u in data.unreadable) == ["benign/broken.png", "malignant/empty.jpg"]
    assert "skipped 2 unreadable" in caplog.text and "broken.png" in caplog.text
    # 16-bit input scaled to 8-bit, not clipped: same picture as the 8-bit original.
    i16 = data.relative_paths.index("benign/deep16.png")
    reference = cv2.resize(gray_noise(2, 40), (32, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(data.images[i16][..., 0].astype(int) - reference).max() <= 1
    assert data.images[data.relative_paths.index("malignant/rgba.png")].mean() == pytest.approx(200, abs=1)


def test_load_folder_without_labelled_images_explains(tmp_path):
    write(tmp_path / "misc" / "x.png", gray_noise(1))
    with pytest.raises(ValueError, match="no labelled images"):
        load_folder(tmp_path, PreprocessSpec(image_size=32))


def test_real_busi_images_load(tiny_dataset):
    data = load_folder(tiny_dataset, PreprocessSpec(image_size=64))
    assert data.images.shape[1:] == (64, 64, 3)
    assert set(data.labels.tolist()) == {0, 1}
    assert not data.unreadable
