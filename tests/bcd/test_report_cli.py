"""`bcd report` with the shipped INT8 model: reports, index and CSV where it says, clear
errors for bad outputs and inputs (exit 2, one line, nothing written), the library's
defaults, the site profile."""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcd.cli import build_parser, main, report_config
from runtime.host import DISCLAIMER
from runtime.report import ReportConfig
from runtime.shipped import MODELS_DIR, SHIPPED_MODEL
from runtime.site_profile import SiteProfile, write_profile
from tests.conftest import BUSI, busi_files, missing

REPO = Path(__file__).resolve().parents[2]
MODEL = MODELS_DIR / SHIPPED_MODEL
PNG = b"\x89PNG\r\n\x1a\n"


def scan(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 90, (240, 320), dtype=np.uint8), (3, 3), 0)
    gray[80:120, 100:160] += 120
    return gray


@pytest.fixture
def scans(tmp_path) -> Path:
    """Two images with one name in two folders (real BUSI ones when here), a corrupt file."""
    if not (MODEL / "manifest.json").is_file():
        missing(f"the shipped model {MODEL} is missing")
    root = tmp_path / "scans"
    for sub, seed in (("a", 1), ("b", 2)):
        (root / sub).mkdir(parents=True)
        if BUSI.is_dir():
            shutil.copy(busi_files("benign" if sub == "a" else "malignant", 1)[0], root / sub / "scan.png")
        else:
            cv2.imwrite(str(root / sub / "scan.png"), scan(seed))
    (root / "corrupt.png").write_bytes(PNG + b"\x00" * 20)
    return root


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_report_cli_without_options_is_the_library_default(monkeypatch):
    monkeypatch.delenv("BCD_SITE", raising=False)
    assert report_config(_parse("report", "x.png", "--out", "o")) == ReportConfig()
    given = report_config(_parse("report", "x.png", "--out", "o", "--region", "off", "--frames", "all",
                                 "--variant", "onnx-int8", "--site", "clinic.json"))
    assert (given.region, given.frames, given.variant, str(given.site)) == ("off", "all", "onnx-int8", "clinic.json")
    monkeypatch.setenv("BCD_SITE", "env.json")
    assert str(report_config(_parse("report", "x.png", "--out", "o")).site) == "env.json"
    assert report_config(_parse("report", "x.png", "--out", "o", "--no-site")).site is None


def test_report_folder_writes_reports_index_and_csv(scans, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BCD_SITE", raising=False)
    monkeypatch.delenv("BCD_MODEL", raising=False)
    out = tmp_path / "reports"
    code = main(["report", str(scans), "--out", str(out), "--threads", "1", "--backend", "onnxruntime"])
    captured = capsys.readouterr()
    assert code == 1, captured.err                                        # the corrupt file
    assert sorted(p.name for p in out.iterdir()) == ["corrupt_report.html", "index.html", "scan_2_report.html",
                                                     "scan_report.html", "summary.csv"]
    assert f"3 report(s) in {out}: open {out / 'index.html'}" in captured.out
    assert DISCLAIMER in captured.out and "Traceback" not in captured.err
    assert f"{out / 'corrupt_report.html'}  (ERROR: " in captured.out
    assert f"runtime/models/{SHIPPED_MODEL}/onnx-int8.onnx" in captured.err   # the shipped model by default
    assert "1 of 3 input(s) could not be classified" in captured.err

    with open(out / "summary.csv", newline="") as f:
        rows = {Path(r["path"]).relative_to(scans).as_posix(): r for r in csv.DictReader(f)}
    assert rows["a/scan.png"]["report"] == "scan_report.html" and rows["b/scan.png"]["report"] == "scan_2_report.html"
    sha = hashlib.sha256((MODEL / "onnx-int8.onnx").read_bytes()).hexdigest()
    for name in ("a/scan.png", "b/scan.png"):
        page = (out / rows[name]["report"]).read_text()
        assert f'id="bcd-probability" data-value="{float(rows[name]["probability"])!r}"' in page
        assert sha in page and DISCLAIMER in page
    assert "not a readable image" in rows["corrupt.png"]["error"]
    assert "not a readable image" in (out / "corrupt_report.html").read_text()


def test_report_with_a_site_profile_names_it(scans, tmp_path, capsys):
    sha = hashlib.sha256((MODEL / "onnx-int8.onnx").read_bytes()).hexdigest()
    profile = tmp_path / "clinic-x.json"
    write_profile(profile, SiteProfile(name="clinic-x", model={"sha256": sha}, threshold=0.3,
                                       policy="best specificity at sensitivity >= 0.95"))
    out = tmp_path / "reports"
    assert main(["report", str(scans / "a" / "scan.png"), "--out", str(out), "--site", str(profile),
                 "--threads", "1", "--backend", "onnxruntime"]) == 0
    captured = capsys.readouterr()
    assert "operating point: site profile 'clinic-x'" in captured.err
    page = (out / "scan_report.html").read_text()
    assert 'id="bcd-threshold" data-value="0.3"' in page and "site profile &#x27;clinic-x&#x27;" in page
    with open(out / "summary.csv", newline="") as f:
        assert next(csv.DictReader(f))["site_profile"] == "clinic-x"


@pytest.mark.parametrize("case", ["out is a file", "out inside a file", "no image files", "bad region"])
def test_clear_errors_exit_2_and_write_nothing(case, scans, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    out, inputs, extra, expected = {
        "out is a file": (afile, [scans], [], "exists and is not a folder"),
        "out inside a file": (afile / "reports", [scans], [], "cannot write reports there"),
        "no image files": (tmp_path / "reports", [tmp_path / "none.png"], [], "no image files found"),
        "bad region": (tmp_path / "reports", [scans], ["--region", "1,2"], "a box X,Y,W,H"),
    }[case]
    code = main(["report", *map(str, inputs), "--out", str(out), *extra])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("bcd: error: ") and expected in last and "Traceback" not in err
    assert afile.read_text() == "keep me" and not (tmp_path / "reports").exists()


def test_report_needs_inputs_and_out():
    for argv in (["report", "--out", "x"], ["report", "x.png"]):
        with pytest.raises(SystemExit) as stop:
            _parse(*argv)
        assert stop.value.code == 2


def test_report_as_a_command_prints_no_traceback(scans, tmp_path):
    """As a user runs it: a separate process, the exit status and where the reports are."""
    out = tmp_path / "r"
    env = {**os.environ, "BCD_SITE": ""}
    proc = subprocess.run([sys.executable, "-m", "bcd.cli", "report", str(scans / "b"), "--out", str(out),
                           "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"open {out / 'index.html'}" in proc.stdout and (out / "scan_report.html").is_file()
    assert "Traceback" not in proc.stderr


def test_report_on_a_lesion_box(scans, tmp_path, capsys):
    """--roi auto reports on the proposed box for every image; a drawn box is for one image."""
    out = tmp_path / "boxes"
    assert main(["report", str(scans / "a" / "scan.png"), str(scans / "b" / "scan.png"), "--out", str(out),
                 "--roi", "auto", "--threads", "1"]) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 2 and all(r["roi_source"].startswith(("proposed:", "none proposed:")) for r in rows)
    page = next(out.glob("scan*_report.html")).read_text()
    assert "proposed" in page
    assert main(["report", str(scans / "a" / "scan.png"), "--out", str(out / "one"), "--roi", "20,20,120,100",
                 "--threads", "1"]) == 0
    (row,) = list(csv.DictReader((out / "one" / "summary.csv").open()))
    assert (row["roi_x"], row["roi_y"], row["roi_width"], row["roi_height"], row["roi_source"]) == \
        ("20", "20", "120", "100", "given")
    capsys.readouterr()
    assert main(["report", str(scans), "--out", str(out / "many"), "--roi", "20,20,120,100"]) == 2
    assert "a lesion box is for one image" in capsys.readouterr().err
    assert not (out / "many" / "index.html").exists()
