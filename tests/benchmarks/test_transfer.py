"""benchmarks.studies.transfer: the site/test split of the new site, its CSVs, the paired AUC
comparison (no training here: the full benchmark is `python -m benchmarks.studies.transfer`)."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.studies.transfer import (BUSBRA_MAP, make_site_split, main, split_summary,
                                 write_canonical_csv)
from runtime.dataset import CsvMapping, DataSource, read_source
from train.metrics import grouped_paired_auc_difference


@pytest.fixture(scope="module")
def busbra_like(tmp_path_factory) -> Path:
    """A CSV laid out like BUS-BRA's bus_data.csv: 180 patients (Case) with one or two
    images each (ID bus_0007-l / -r), a third of the patients malignant, masks in Masks/."""
    root = tmp_path_factory.mktemp("busbra_like")
    (root / "Images").mkdir()
    (root / "Masks").mkdir()
    image = np.full((8, 8), 128, np.uint8)
    rows = []
    for case in range(1, 181):
        label = "malignant" if case % 3 == 0 else "benign"
        for side in ("l", "r")[: 1 + (case % 4 != 0)]:
            image_id = f"bus_{case:04d}-{side}"
            cv2.imwrite(str(root / "Images" / f"{image_id}.png"), image)
            cv2.imwrite(str(root / "Masks" / f"mask_{case:04d}-{side}.png"), image)
            rows.append([image_id, case, label])
    with open(root / "bus_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Case", "Pathology"])
        w.writerows(rows)
    return root / "bus_data.csv"


def samples_of(path: Path, mapping: str | None = BUSBRA_MAP):
    return read_source(DataSource.parse(str(path), CsvMapping.parse(mapping) if mapping else None)).labelled


def test_site_sets_are_whole_patients_disjoint_from_test(busbra_like):
    samples = samples_of(busbra_like)
    split = make_site_split(samples, site_images=100, test_images=120, repeats=3, seed=7)
    test_patients = {s.group for s in split.test}
    assert len(split.test) == 120 and len(split.sites) == 3
    share = sum(s.label for s in samples) / len(samples)
    for site in split.sites:
        assert len(site) == 100
        assert not test_patients & {s.group for s in site}
        # every image of a chosen patient comes along
        for patient in {s.group for s in site}:
            assert sum(s.group == patient for s in site) == sum(s.group == patient for s in samples)
        assert split_summary(site)["malignant"] == round(100 * share)
    assert split.sites[0] != split.sites[1]                  # the draws differ
    again = make_site_split(samples, site_images=100, test_images=120, repeats=3, seed=7)
    assert [s.path for s in again.sites[2]] == [s.path for s in split.sites[2]]
    assert [s.path for s in again.test] == [s.path for s in split.test]


def test_canonical_csv_reads_back_without_a_mapping(busbra_like, tmp_path):
    site = make_site_split(samples_of(busbra_like), site_images=100, test_images=60, seed=1).sites[0]
    path = write_canonical_csv(tmp_path / "site.csv", site)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "group", "mask"]
    assert all(Path(r["path"]).is_absolute() and Path(r["mask"]).is_file() for r in rows)
    back = samples_of(path, mapping=None)
    assert [(s.path.resolve(), s.label, s.group) for s in back] == [(s.path.resolve(), s.label, s.group) for s in site]
    assert all(s.mask is not None for s in back)
    # the test CSV goes without masks (bcd evaluate then skips the Grad-CAM figures)
    bare = samples_of(write_canonical_csv(tmp_path / "test.csv", site, masks=False), mapping=None)
    assert [s.path for s in bare] == [s.path for s in back] and all(s.mask is None for s in bare)


def test_too_small_a_site_fails_before_any_training(busbra_like, tmp_path, capsys):
    assert main(["--out", str(tmp_path / "t"), "--target", str(busbra_like), "--site-images", "200",
                 "--test-images", "200"]) == 2
    assert "too few" in capsys.readouterr().err
    assert not (tmp_path / "t" / "runs").exists()


def test_paired_auc_difference():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    good = y + rng.normal(0, 0.5, len(y))
    noise = rng.normal(0, 1, len(y))
    groups = np.arange(len(y)) // 2
    d = grouped_paired_auc_difference(y, good, noise, groups, n_resamples=300)
    assert d["ci95"]["low"] > 0.2 and d["difference"] > 0.3
    same = grouped_paired_auc_difference(y, good, good, groups, n_resamples=50)
    assert same["difference"] == 0 and same["ci95"] == {"low": 0.0, "high": 0.0}
