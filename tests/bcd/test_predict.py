"""`bcd predict` and runtime.predict_files end to end with a real exported model:
folders, globs, bad files, JSON/CSV reports, heat maps, exit codes, no tracebacks."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcd.cli import DISCLAIMER, main
from runtime.classifier import Classifier
from runtime.predict_files import expand_inputs, format_table, predict_paths, write_csv, write_json

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clf(tiny_export) -> Classifier:
    return Classifier.load(tiny_export, variant="onnx-fp32")


@pytest.fixture
def folder(tiny_dataset, tmp_path) -> Path:
    """Two real images in class folders (same file name in both), one loose image, a
    lesion mask, a corrupt PNG and a text file."""
    root = tmp_path / "scans"
    benign = sorted((tiny_dataset / "benign").glob("*.png"))[0]
    malignant = sorted((tiny_dataset / "malignant").glob("*.png"))[0]
    for sub, src in (("a", benign), ("b", malignant)):
        (root / sub).mkdir(parents=True)
        shutil.copy(src, root / sub / "scan.png")
    shutil.copy(malignant, root / "loose.png")
    shutil.copy(benign, root / "loose_mask.png")
    (root / "corrupt.png").write_bytes(PNG + b"\x00\x00\x00\rIHDR" + b"\x01" * 7)
    (root / "notes.txt").write_text("not an image")
    return root


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bcd.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_cli_folder_with_a_corrupt_file(tiny_export, folder, tmp_path):
    out_json, out_csv, heat = tmp_path / "r" / "res.json", tmp_path / "r" / "res.csv", tmp_path / "heat"
    proc = run_cli("predict", str(folder), "--model", str(tiny_export), "--variant", "onnx-fp32",
                   "--json", str(out_json), "--csv", str(out_csv), "--heatmap", str(heat), "--threads", "1")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert DISCLAIMER in proc.stdout
    assert "ERROR: not a readable image" in proc.stdout

    rows = json.loads(out_json.read_text())
    names = [Path(r["path"]).relative_to(folder).as_posix() for r in rows]
    assert names == ["a/scan.png", "b/scan.png", "corrupt.png", "loose.png"]   # sorted; mask, .txt skipped
    by_name = dict(zip(names, rows))
    bad = by_name["corrupt.png"]
    assert bad["label"] is None and bad["probability"] is None and "not a readable image" in bad["error"]
    for name in ("a/scan.png", "b/scan.png", "loose.png"):
        row = by_name[name]
        assert row["error"] is None and row["label"] in ("benign", "malignant")
        assert 0.0 <= row["probability"] <= 1.0
        assert (row["label"] == "malignant") == (row["probability"] >= row["threshold"])
        assert set(row) == {"path", "label", "probability", "threshold", "out_of_distribution", "ood_score", "error",
                            "region", "frames", "roi"}
        assert row["roi"] is None                       # no lesion box asked for
        assert isinstance(row["out_of_distribution"], bool) and row["ood_score"] > 0

    with open(out_csv, newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["path"] for r in csv_rows] == [r["path"] for r in rows]
    assert csv_rows[2]["error"] == bad["error"] and csv_rows[2]["label"] == ""
    assert float(csv_rows[0]["probability"]) == pytest.approx(rows[0]["probability"])

    written = sorted(p.name for p in heat.iterdir())
    assert written == ["loose_gradcam.png", "scan_2_gradcam.png", "scan_gradcam.png"]   # stems collide
    for name in written:
        data = (heat / name).read_bytes()
        assert data[:8] == PNG
    original = cv2.imread(str(folder / "loose.png"))
    assert cv2.imread(str(heat / "loose_gradcam.png")).shape == original.shape


def test_cli_all_good_exits_zero_and_matches_library(tiny_export, folder, clf, capsys):
    (folder / "corrupt.png").unlink()
    code = main(["predict", str(folder / "a" / "scan.png"), str(folder / "loose.png"),
                 "--model", str(tiny_export), "--variant", "onnx-fp32"])
    out = capsys.readouterr().out
    assert code == 0
    direct = clf.predict(folder / "loose.png")
    assert f"{direct.probability:.4f}" in out and direct.label in out


def test_cli_globs_and_missing_inputs(tiny_export, folder, tmp_path, capsys):
    out_json = tmp_path / "res.json"
    code = main(["predict", str(folder / "*" / "*.png"), str(folder / "nothing*.png"), str(tmp_path / "gone.png"),
                 "--model", str(tiny_export), "--variant", "onnx-fp32", "--json", str(out_json)])
    assert code == 1
    rows = json.loads(out_json.read_text())
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert errors[str(tmp_path / "gone.png")].endswith("file not found")
    assert errors[str(folder / "nothing*.png")].endswith("no image files match this pattern")
    ok = [Path(r["path"]).name for r in rows if not r["error"]]
    assert ok == ["scan.png", "scan.png"]


def test_cli_usage_errors_are_one_line(tiny_run, tiny_export, folder, tmp_path):
    proc = run_cli("predict", str(folder), env={"BCD_MODEL": str(tmp_path / "moved")})
    assert proc.returncode == 2 and "model not found" in proc.stderr and "moved" in proc.stderr
    proc = run_cli("predict", str(folder), "--model", str(tiny_run / "model.keras"))
    assert proc.returncode == 2 and "refusing to load a Keras model" in proc.stderr
    proc = run_cli("predict", str(folder), "--model", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "model not found" in proc.stderr
    proc = run_cli("predict", str(folder), "--model", str(tiny_export), "--threads", "0")
    assert proc.returncode == 2 and "threads must be at least 1" in proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr


def test_progress_on_stderr_for_large_folders(tiny_export, tmp_path, capsys):
    root = tmp_path / "many"       # no class folders: a plain folder of images works too
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(21):
        cv2.imwrite(str(root / f"img{i:02d}.png"), rng.integers(0, 256, (80, 96), dtype=np.uint8))
    code = main(["predict", str(root), "--model", str(tiny_export), "--variant", "onnx-fp32", "--batch-size", "8"])
    captured = capsys.readouterr()
    assert code == 0
    assert "predicted images: 8/21 (" in captured.err and "predicted images: 21/21 (" in captured.err
    assert captured.out.count("img") == 21


def test_predict_paths_library(clf, folder, tmp_path):
    results = predict_paths(clf, [folder, folder / "loose.png"])     # the same file twice: once
    assert len(results) == 4 and [r.ok for r in results] == [True, True, False, True]
    seen = []
    results = predict_paths(clf, [folder], batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 4), (4, 4)]
    write_json(tmp_path / "r.json", results)
    write_csv(tmp_path / "r.csv", results)
    assert len(json.loads((tmp_path / "r.json").read_text())) == 4
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == \
        ("path,label,probability,threshold,out_of_distribution,ood_score,error,region_x,region_y,region_width,"
         "region_height,region_source,mm_per_pixel_x,mm_per_pixel_y,frames_in_file,frames_used,frame_probabilities,"
         "frame_summary,max_frame_probability,roi_x,roi_y,roi_width,roi_height,roi_source")
    table = format_table(results)
    assert table.splitlines()[0].split() == ["path", "label", "probability", "threshold"]
    assert "ERROR: not a readable image" in table


def test_expand_inputs_skips_masks_and_sorts(folder):
    files, problems = expand_inputs([folder / "loose.png", folder])
    assert [f.relative_to(folder).as_posix() for f in files] == ["a/scan.png", "b/scan.png", "corrupt.png", "loose.png"]
    assert problems == []
    empty = folder / "empty"
    empty.mkdir()
    _, problems = expand_inputs([empty])
    assert problems[0].error.endswith("folder contains no image files")


def test_heatmap_needs_a_cam_variant(clf, folder, tmp_path, monkeypatch):
    monkeypatch.setattr(clf.backend, "has_cam", False)
    with pytest.raises(ValueError, match="no Grad-CAM output"):
        predict_paths(clf, [folder], heatmap_dir=tmp_path / "h")


def test_cli_predict_loads_no_heavy_packages(tiny_export, folder):
    code = (
        "import sys\n"
        "from bcd.cli import main\n"
        f"code = main(['predict', {str(folder / 'loose.png')!r}, '--model', {str(tiny_export)!r}])\n"
        "heavy = ('tensorflow', 'tf_keras', 'keras', 'gradio', 'sklearn', 'torch', 'onnx', 'tf2onnx')\n"
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 []"
