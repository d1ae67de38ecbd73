"""`bcd predict` (a real subprocess) on odd paths: spaces, unicode, symlink loops,
pipes and devices under an image name, unreadable files, and a folder of many files.
Every input ends as one row; nothing hangs; the exit status says whether all worked.

The folder test uses 1,000 files in CI; BCD_FULL_RELIABILITY=1 makes it 10,000 (the
figure in docs/RELIABILITY.md)."""
from __future__ import annotations

import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


def scan(seed: int, side: int = 96) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 60, (side, side), dtype=np.uint8)
    image[side // 3:2 * side // 3, side // 3:2 * side // 3] += 150
    return image


def run_predict(model: Path, inputs: list[str], out_csv: Path, as_user: int | None = None,
                timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONDONTWRITEBYTECODE": "1"}
    preexec = None
    if as_user is not None:
        def preexec():                              # drop root, so file permissions apply
            os.setgroups([])
            os.setgid(as_user)
            os.setuid(as_user)
        env["HOME"] = str(out_csv.parent)
    done = subprocess.run([sys.executable, "-m", "bcd.cli", "predict", *inputs, "--model", str(model),
                           "--csv", str(out_csv), "--threads", "1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec)
    rows = {}
    if out_csv.exists():
        with open(out_csv, newline="", encoding="utf-8") as f:
            rows = {r["path"]: r for r in csv.DictReader(f)}
    return done, rows


def test_odd_names_and_special_files(tiny_export, tmp_path):
    d = tmp_path / "odd folder"
    d.mkdir()
    good = {"with spaces.png": 1, "écho 乳腺 (1).png": 2, "emoji 🩻.png": 3, "-starts-with-dash.png": 4,
            "UPPER.PNG": 5, "semi;colon,comma.png": 6, "quote'\"s.png": 7}
    for name, seed in good.items():
        cv2.imencode(".png", scan(seed))[1].tofile(str(d / name))   # cv2.imwrite cannot write unicode paths everywhere
    (d / "loop-a.png").symlink_to(d / "loop-b.png")
    (d / "loop-b.png").symlink_to(d / "loop-a.png")
    (d / "dangling.png").symlink_to(d / "missing.png")
    (d / "dir.png").mkdir()
    os.mkfifo(d / "pipe.png")                                   # reading it would block forever
    (d / "zero.png").symlink_to("/dev/zero")                    # reading it would never end
    (d / "sub").mkdir()
    (d / "sub" / "back").symlink_to(d, target_is_directory=True)   # a folder symlink loop
    inputs = [str(d / n) for n in good] + [str(d / n) for n in
                                           ("loop-a.png", "dangling.png", "dir.png", "pipe.png", "zero.png")]
    inputs.append(str(d))                                       # and the folder itself, recursively
    started = time.monotonic()
    done, rows = run_predict(tiny_export, inputs, tmp_path / "out.csv", timeout=300)
    assert time.monotonic() - started < 300
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    for name in good:
        assert rows[str(d / name)]["label"] in ("benign", "malignant"), rows[str(d / name)]
    expect = {"loop-a.png": "symbolic links", "dangling.png": "file not found", "dir.png": "directory",
              "pipe.png": "not a regular file", "zero.png": "not a regular file"}
    for name, text in expect.items():
        assert text in rows[str(d / name)]["error"], rows[str(d / name)]


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="POSIX permissions")
def test_unreadable_file_is_an_error_row(tiny_export):
    """chmod 000 does not stop root, which the tests may run as: then the CLI runs as
    'nobody', so the permission check is the kernel's, not simulated."""
    as_user = NOBODY if os.geteuid() == 0 else None
    tmp = Path(tempfile.mkdtemp(prefix="bcd-perm-"))
    try:
        model = tmp / "model"
        shutil.copytree(tiny_export, model)
        for p in [tmp, model, *model.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        tmp.chmod(0o777)
        locked, fine = tmp / "locked.png", tmp / "fine.png"
        for path in (locked, fine):
            cv2.imwrite(str(path), scan(1))
            path.chmod(0o644)
        locked.chmod(0o000)
        done, rows = run_predict(model, [str(locked), str(fine)], tmp / "out.csv", as_user=as_user, timeout=300)
        assert done.returncode == 1, done.stderr
        assert "permission denied" in rows[str(locked)]["error"]
        assert rows[str(fine)]["label"] in ("benign", "malignant")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_folder_of_many_files(tiny_export, tmp_path):
    n = 10_000 if os.environ.get("BCD_FULL_RELIABILITY") else 1_000
    folder = tmp_path / "many"
    folder.mkdir()
    data = [cv2.imencode(".png", scan(i, 64))[1].tobytes() for i in range(20)]
    for i in range(n):
        (folder / f"scan {i:05d}.png").write_bytes(data[i % len(data)])
    (folder / "notes.txt").write_text("not an image: skipped by the folder scan")
    started = time.monotonic()
    done, rows = run_predict(tiny_export, [str(folder)], tmp_path / "out.csv", timeout=3600)
    seconds = time.monotonic() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(rows) == n and all(r["label"] in ("benign", "malignant") for r in rows.values())
    print(f"\nbcd predict on a folder of {n:,} files: {seconds:.1f} s, peak RSS of the child {peak_mb:.0f} MB")
