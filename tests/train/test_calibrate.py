"""Site calibration: `bcd calibrate` writes a site profile; predict/evaluate apply it.

The end-to-end tests run the shipped reference model on a few real BUSI images (skipped
without the BUSI folder); the others use numbers or generated images.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcd.cli import main
from runtime.classifier import Classifier
from runtime.model_files import sha256_file
from runtime.shipped import MODELS_DIR, SHIPPED_MODEL
from runtime.site_profile import (
    SITE_ENV,
    Recalibration,
    SiteProfile,
    SiteProfileError,
    read_profile,
    write_profile,
)
from train.fit_site_profile import SiteProfileConfig, SiteProfileFitError, fit
from train.metrics import ThresholdPolicy, choose_threshold

from tests.conftest import REPO, busi_files, gray_noise, missing, needs_module

SHIPPED = MODELS_DIR / SHIPPED_MODEL


@pytest.fixture(scope="module")
def shipped() -> Path:
    if not (SHIPPED / "manifest.json").is_file():
        missing("the shipped reference model is missing")
    return SHIPPED


def _site_folder(root: Path, per_class: dict[str, int], offset: int = 0) -> Path:
    """A site folder of real BUSI images (benign/, malignant/)."""
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in busi_files(cls, offset + n)[offset:]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.fixture(scope="module")
def site_data(busi_root, tmp_path_factory) -> Path:
    # images 200+ of each class: not the first ones other tests copy
    return _site_folder(tmp_path_factory.mktemp("site"), {"benign": 24, "malignant": 22}, offset=60)


def _labels_of(folder: Path, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([Path(r["path"]).relative_to(folder).parts[0] == "malignant" for r in rows])
    called = np.array([r["label"] == "malignant" for r in rows])
    return y, called


# ------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("method", ["threshold", "platt", "isotonic"])
def test_calibrate_then_predict_reproduces_the_operating_point(shipped, site_data, tmp_path, method, capsys):
    profile_path = tmp_path / f"clinic-{method}.json"
    assert main(["calibrate", str(shipped), "--data", str(site_data), "--out", str(profile_path),
                 "--method", method, "--bootstrap", "200"]) == 0
    report = capsys.readouterr().out
    profile = read_profile(profile_path)
    assert profile.recalibration.method == ("none" if method == "threshold" else method)
    assert profile.data["n_malignant"] == 22 and profile.data["n_benign"] == 24
    assert profile.model["sha256"] == sha256_file(shipped / "onnx-int8.onnx")
    assert f"| this site profile | {profile.threshold:.4f}" in report
    assert (tmp_path / f"clinic-{method}.md").read_text() == report.split("site profile written")[0].rstrip() + "\n"

    out = tmp_path / "pred.json"
    assert main(["predict", str(site_data), "--site", str(profile_path), "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"site profile 'clinic-{method}'" in printed.err and "not the export's" in printed.out
    rows = json.loads(out.read_text())
    assert len(rows) == 46 and all(r["site_profile"] == f"clinic-{method}" for r in rows)
    assert {r["threshold"] for r in rows} == {profile.threshold}
    y, called = _labels_of(site_data, rows)
    a = profile.achieved
    assert called[y].mean() == a["sensitivity"] and (~called[~y]).mean() == a["specificity"]
    cm = a["confusion_matrix"]
    assert (int((called & y).sum()), int((called & ~y).sum())) == (cm["tp"], cm["fp"])
    # the shown probability is the recalibrated one, and the call follows it
    assert all((r["probability"] >= r["threshold"]) == (r["label"] == "malignant") for r in rows)


def test_evaluate_with_a_site_profile_names_it_and_matches(shipped, site_data, tmp_path, capsys, monkeypatch):
    profile_path = tmp_path / "clinic.json"
    assert main(["calibrate", str(shipped), "--data", str(site_data), "--out", str(profile_path),
                 "--target-specificity", "0.8", "--bootstrap", "200", "--force"]) == 0
    profile = read_profile(profile_path)
    assert profile.policy == "best sensitivity at specificity >= 0.80"
    capsys.readouterr()
    monkeypatch.setenv(SITE_ENV, str(profile_path))         # the default profile
    out = tmp_path / "eval"
    assert main(["evaluate", str(shipped), "--data", str(site_data), "--out", str(out), "--bootstrap", "50"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["at_operating_threshold"]
    assert m["sensitivity"] == profile.achieved["sensitivity"]
    assert m["specificity"] == profile.achieved["specificity"]
    assert doc["threshold"]["site_profile"]["name"] == "clinic"
    assert "Site profile in use: **clinic**" in (out / "metrics.md").read_text()
    # --no-site: the export's own threshold again
    assert main(["evaluate", str(shipped), "--data", str(site_data), "--out", str(tmp_path / "e2"),
                 "--bootstrap", "50", "--no-site"]) == 0
    plain = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert "site_profile" not in plain["threshold"] and plain["threshold"]["value"] != profile.threshold


def test_site_data_may_be_a_csv_index(shipped, site_data, tmp_path, capsys):
    """The same images listed in a CSV index (path,label columns) give the same profile."""
    rows = ["path,label"] + [f"{p.relative_to(site_data).as_posix()},{p.parent.name}"
                             for p in sorted(site_data.rglob("*.png"))]
    index = site_data / "index.csv"
    index.write_text("\n".join(rows) + "\n")
    try:
        for data, out in ((site_data, tmp_path / "from-folder.json"), (index, tmp_path / "from-csv.json")):
            assert main(["calibrate", str(shipped), "--data", str(data), "--out", str(out), "--bootstrap", "50"]) == 0
    finally:
        index.unlink()
    folder, csv_index = read_profile(tmp_path / "from-folder.json"), read_profile(tmp_path / "from-csv.json")
    assert csv_index.threshold == folder.threshold and csv_index.data["n"] == 46
    assert csv_index.data["files_sha256"] == folder.data["files_sha256"]     # same names, same labels
    assert csv_index.data["source"]["kind"] == "csv" and folder.data["source"]["kind"] == "folder"


# ------------------------------------------------------------------------ refusals


def test_too_small_calibration_set_is_refused_unless_forced(shipped, busi_root, tmp_path, capsys):
    small = _site_folder(tmp_path / "small", {"benign": 25, "malignant": 8}, offset=100)
    out = tmp_path / "small.json"
    assert main(["calibrate", str(shipped), "--data", str(small), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "too few malignant images: 8 (at least 20" in err and "--force" in err
    assert "too few benign" not in err
    assert not out.exists()
    assert main(["calibrate", str(shipped), "--data", str(small), "--out", str(out), "--force",
                 "--bootstrap", "100"]) == 0
    profile = read_profile(out)
    assert profile.checks["forced"] is True and "too few malignant images: 8" in profile.checks["problems"][0]
    assert "**Forced:**" in capsys.readouterr().out


def test_an_image_that_cannot_be_classified_is_named_not_fitted(shipped, site_data, tmp_path, capsys):
    folder = tmp_path / "site"
    shutil.copytree(site_data, folder)
    (folder / "malignant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 50)
    out = tmp_path / "broken.json"
    assert main(["calibrate", str(shipped), "--data", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of 47 image(s) could not be classified" in err and "broken.png" in err
    assert "Traceback" not in err and "finite" not in err and not out.exists()


@pytest.mark.parametrize("present", ["benign", "malignant"])
def test_single_class_calibration_set_gets_a_clear_message(shipped, tmp_path, capsys, present):
    folder = tmp_path / "one" / present
    folder.mkdir(parents=True)
    for i in range(25):
        cv2.imwrite(str(folder / f"{i}.png"), gray_noise(i, size=96))
    out = tmp_path / "one.json"
    assert main(["calibrate", str(shipped), "--data", str(tmp_path / "one"), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    only = "benign (or normal)" if present == "benign" else "malignant"
    assert f"only {only} images" in err and "both classes" in err
    assert ("(0 malignant, 25 benign)" if present == "benign" else "(25 malignant, 0 benign)") in err
    assert "Traceback" not in err and not out.exists()


def test_fit_refuses_a_wide_ci_and_a_model_worse_than_chance():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(25), np.zeros(25)].astype(int)
    p = np.clip(np.r_[rng.normal(0.6, 0.2, 25), rng.normal(0.4, 0.2, 25)], 0, 1)
    assert fit(y, p, SiteProfileConfig()).problems == []
    wide = fit(y, p, SiteProfileConfig(max_ci_width=0.05)).problems
    assert len(wide) == 1 and wide[0].startswith("the 95% CI of sensitivity on this data is")
    youden = fit(y, p, SiteProfileConfig(target="youden", max_ci_width=0.05)).problems
    assert [w.split(" on ")[0] for w in youden] == ["the 95% CI of sensitivity", "the 95% CI of specificity"]
    backwards = fit(y, 1 - p, SiteProfileConfig(max_ci_width=1.0)).problems
    assert any("below chance" in w for w in backwards)
    with pytest.raises(SiteProfileFitError, match="no increasing relation"):
        fit(y, 1 - p, SiteProfileConfig(method="platt"))
    with pytest.raises(SiteProfileFitError, match="only benign"):
        fit(np.zeros(30, int), p[:30], SiteProfileConfig())


# ------------------------------------------------------------------------ binding to the model


def _profile_for(file: Path, **kw) -> SiteProfile:
    return SiteProfile(name=kw.pop("name", "clinic-a"), threshold=kw.pop("threshold", 0.5),
                       model={"export": "x", "variant": "onnx-int8", "sha256": sha256_file(file)},
                       policy="best specificity at sensitivity >= 0.90", **kw)


@pytest.fixture(scope="module")
def other_export(shipped, tmp_path_factory) -> Path:
    """Another export: the shipped one with one metadata entry added to its ONNX file (a
    different model file that loads and verifies like any export)."""
    onnx = needs_module("onnx")
    out = tmp_path_factory.mktemp("other") / "other-export"
    shutil.copytree(shipped, out, ignore=shutil.ignore_patterns("eval-*"))
    model = onnx.load(str(out / "onnx-int8.onnx"))
    entry = model.metadata_props.add()
    entry.key, entry.value = "retrained_at", "another site"
    onnx.save(model, str(out / "onnx-int8.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    for v in manifest["variants"]:
        if v["file"] == "onnx-int8.onnx":
            v["sha256"] = sha256_file(out / "onnx-int8.onnx")
            v["size_bytes"] = (out / "onnx-int8.onnx").stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_a_profile_made_for_one_export_is_refused_by_another(shipped, other_export, tmp_path, capsys):
    path = tmp_path / "clinic-a.json"
    write_profile(path, _profile_for(shipped / "onnx-int8.onnx"))
    with Classifier.load(shipped) as clf:
        clf.use_site(read_profile(path))        # its own model: accepted
        assert clf.threshold == 0.5 and clf.site.name == "clinic-a"
    with Classifier.load(other_export) as clf:
        before = clf.threshold
        with pytest.raises(SiteProfileError, match="was made for another model file"):
            clf.use_site(read_profile(path))
        assert clf.site is None and clf.threshold == before
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), gray_noise(3, size=96))
    assert main(["predict", str(image), "--model", str(other_export), "--site", str(path)]) == 2
    err = capsys.readouterr().err
    assert "site profile 'clinic-a'" in err and "made for another model file" in err and "bcd calibrate" in err


def test_bcd_site_is_the_default_and_no_site_turns_it_off(shipped, tmp_path, capsys, monkeypatch):
    path = tmp_path / "env.json"
    write_profile(path, _profile_for(shipped / "onnx-int8.onnx", name="env-profile", threshold=0.999))
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), gray_noise(5, size=96))
    monkeypatch.setenv(SITE_ENV, str(path))
    assert main(["predict", str(image), "--csv", str(tmp_path / "r.csv")]) == 0
    assert "site profile 'env-profile'" in capsys.readouterr().err
    header, row = (tmp_path / "r.csv").read_text().splitlines()
    assert header.endswith(",site_profile") and row.endswith(",env-profile") and ",0.999," in row
    assert main(["predict", str(image), "--no-site", "--csv", str(tmp_path / "r.csv")]) == 0
    assert "site profile" not in capsys.readouterr().err
    assert "site_profile" not in (tmp_path / "r.csv").read_text()


def test_damaged_or_foreign_profiles_are_clear_errors(shipped, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    for text, message in (("{not json", "not a JSON site profile"),
                          ('{"schema": "something-else"}', "not a site profile"),
                          ('{"schema": "bcd-site-profile", "schema_version": 99}', "schema version 99"),
                          ('{"schema": "bcd-site-profile", "schema_version": 1, "threshold": {"value": "x"}}',
                           "threshold.value")):
        bad.write_text(text)
        with pytest.raises(SiteProfileError, match=message):
            read_profile(bad)
    assert main(["predict", str(bad), "--site", str(tmp_path / "missing.json")]) == 2
    assert "site profile not found" in capsys.readouterr().err


# ------------------------------------------------------------------------ the numbers


def test_runtime_recalibration_equals_scikit_learn():
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    from train.fit_site_profile import fit_recalibration

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    grid = np.r_[np.linspace(0, 1, 101), -0.5, 1.5]
    iso = fit_recalibration(y, p, "isotonic")
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y)
    assert np.allclose(iso.apply(grid), ref.predict(grid), atol=1e-12)
    platt = fit_recalibration(y, p, "platt")
    q = np.clip(grid, 1e-7, 1 - 1e-7)
    lr = LogisticRegression(C=1e4).fit(np.log(p / (1 - p)).reshape(-1, 1), y)
    assert np.allclose(platt.apply(grid), lr.predict_proba(np.log(q / (1 - q)).reshape(-1, 1))[:, 1], atol=1e-6)
    assert np.isnan(platt.apply(np.array([np.nan]))[0]) and np.isnan(iso.apply(np.array([np.nan]))[0])
    # both maps are increasing, so a platt threshold makes the plain threshold's decisions
    t_plain = fit(y, p, SiteProfileConfig(max_ci_width=1.0))
    t_platt = fit(y, p, SiteProfileConfig(method="platt", max_ci_width=1.0))
    assert t_plain.achieved["confusion_matrix"] == t_platt.achieved["confusion_matrix"]
    assert Recalibration.from_dict(platt.to_dict()) == platt and Recalibration.from_dict(iso.to_dict()) == iso


def test_specificity_target_picks_the_most_sensitive_threshold():
    y = [0, 0, 0, 0, 1, 0, 1, 1]
    p = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert choose_threshold(y, p, ThresholdPolicy("specificity", min_specificity=0.8)) == 0.5   # spec 4/5, sens 1
    assert choose_threshold(y, p, ThresholdPolicy("specificity", min_specificity=1.0)) == 0.7   # spec 1, sens 2/3
    assert ThresholdPolicy("specificity", min_specificity=0.8).describe() == "best sensitivity at specificity >= 0.80"


def test_predict_with_a_recalibrating_profile_loads_no_scikit_learn(shipped, tmp_path):
    path = tmp_path / "p.json"
    write_profile(path, _profile_for(shipped / "onnx-int8.onnx",
                                     recalibration=Recalibration("isotonic", x=(0.0, 1.0), y=(0.1, 0.9))))
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), gray_noise(7, size=96))
    code = (
        "import sys\nfrom bcd.cli import main\n"
        f"code = main(['predict', {str(image)!r}, '--site', {str(path)!r}])\n"
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'tensorflow', 'scipy')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 []"


# ------------------------------------------------------------------------ the benchmark's split


def _moved_copy(src: Path, dst: Path) -> Path:
    """The dataset somewhere else (hard links where possible): CI's clone sees the data
    at another absolute path than the one the shipped split.json recorded."""
    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link_or_copy)
    return dst


def test_busbra_patient_split_keeps_patients_apart(shipped, tmp_path):
    from benchmarks.studies.site_profiles import busbra_site

    data = REPO.parent / "shared" / "data" / "busbra"
    if not (data / "bus_data.csv").is_file():
        missing("BUS-BRA development data not present")
    root = _moved_copy(data, tmp_path / "elsewhere" / "busbra")
    a, b = busbra_site(shipped, root, seed=0), busbra_site(shipped, root, seed=0)
    assert a.pool == b.pool                                    # a fixed seed: the same split every time
    assert all(s.group for s in a.pool + a.test)               # the patient (Case) of every image is known
    assert not {s.group for s in a.pool} & {s.group for s in a.test}
    # every BUS-BRA image except those of the patients the export was trained on
    split = json.loads((shipped / "split.json").read_text())
    trained = {str(f["patient"]) for f in split["files"]["train"] if f.get("source") == "busbra"}
    assert len(trained) > 100
    assert not {s.group for s in a.pool + a.test} & trained
    from runtime.dataset import CsvMapping, DataSource, read_source
    every = read_source(DataSource.parse(str(root / "bus_data.csv"), CsvMapping(path="Images/{ID}.png", label="Pathology",
                                                                              group="Case"))).samples
    assert len(a.pool) + len(a.test) == sum(s.group not in trained for s in every)
    assert abs(len(a.pool) - len(a.test)) < 0.1 * len(a.pool)
    assert abs(a.pool_y.mean() - a.test_y.mean()) < 0.05


def test_busi_site_is_the_exports_validation_and_test_images_wherever_busi_lives(shipped, tmp_path):
    from benchmarks.studies.site_profiles import busi_site

    data = REPO.parent / "shared" / "data" / "busi"
    if not data.is_dir():
        missing("BUSI development data not present")
    site = busi_site(shipped, _moved_copy(data, tmp_path / "moved" / "busi"))
    counts = json.loads((shipped / "split.json").read_text())["counts_per_source"]["busi"]
    assert (len(site.pool), len(site.test)) == (counts["val"]["total"], counts["test"]["total"])
    assert int(site.test_y.sum()) == counts["test"]["malignant"]
    assert all(tmp_path in s.path.parents for s in site.pool + site.test)
    assert not {s.path for s in site.pool} & {s.path for s in site.test}


# ------------------------------------------------------------------------ the demo


def test_demo_uses_and_names_the_site_profile(shipped, other_export, tmp_path):
    from demo import views
    from demo.config import DemoConfig
    from demo.service import DemoService

    path = tmp_path / "ward-b.json"
    write_profile(path, _profile_for(other_export / "onnx-int8.onnx", name="ward-b", threshold=0.999,
                                     data={"n": 60, "n_malignant": 20, "n_benign": 40}))
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), gray_noise(11, size=96))
    with pytest.raises(ValueError, match="none of the models served here has that model file"):
        DemoService(DemoConfig(model=shipped, threads=1, site=path))
    service = DemoService(DemoConfig(model=[shipped, other_export], threads=1, site=path))
    try:
        calibrated, plain = "other-export · onnx-int8", f"{SHIPPED_MODEL} · onnx-int8"
        assert service.default_variant == calibrated          # the page opens on the calibrated model
        labels = dict((value, label) for label, value in views.variant_choices(service))
        assert labels[calibrated].endswith(" · site profile ward-b") and "site" not in labels[plain]
        site_call = service.classify_bytes(image.read_bytes(), "x.png", calibrated)
        export_call = service.classify_bytes(image.read_bytes(), "x.png", plain)
        assert site_call.ok and export_call.ok
        assert site_call.threshold == 0.999 and site_call.site == "ward-b"
        assert site_call.to_json()["site_profile"] == "ward-b"
        assert "site profile <b>ward-b</b>" in views.result_html(site_call)
        assert export_call.site is None and export_call.threshold == pytest.approx(
            json.loads((shipped / "manifest.json").read_text())["threshold"]["value"])
        assert "site profile" not in views.result_html(export_call)
        assert "Operating point: site profile **ward-b**: threshold **0.999**" in views.parity_markdown(
            service, calibrated)
        assert "fitted on 60 images" in views.parity_markdown(service, calibrated)
        assert "applies to other-export · onnx-int8 only" in views.parity_markdown(service, plain)
        assert "site profile **ward-b**" in views.model_summary_markdown(service)
    finally:
        service.close()
