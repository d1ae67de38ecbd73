"""`bcd predict` (a real subprocess) on odd paths: spaces, unicode, symlink loops,
pipes and devices under an image name, unreadable files, and a folder of many files.
Every input ends as one row; nothing hangs; the exit status says whether all worked.

The folder test uses 1,000 files in CI; BCD_FULL_RELIABILITY=1 makes it 10,000 (the
figure in docs/RELIABILITY.md)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.host import peak_rss_mib

REPO = Path(__file__).resolve().parents[2]


def scan(seed: int, side: int = 96) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 60, (side, side), dtype=np.uint8)
    image[side // 3:2 * side // 3, side // 3:2 * side // 3] += 150
    return image


def run_predict(model: Path, inputs: list[str], out_csv: Path, prefix: tuple[str, ...] = (),
                timeout: float = 600, peak: list | None = None) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    """Run `bcd predict`; with `peak` (a list), append the child's peak RSS in MB."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [*prefix, sys.executable, "-m", "bcd.cli", "predict", *inputs, "--model", str(model),
           "--csv", str(out_csv), "--threads", "1"]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
        hwm, deadline = 0.0, time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            hwm = max(hwm, peak_rss_mib(proc.pid) or 0.0)       # VmHWM only grows: the last reading is the peak
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
            raise subprocess.TimeoutExpired(cmd, timeout)
        out.seek(0), err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    if peak is not None:
        peak.append(hwm)
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
    expect = {"loop-a.png": "symbolic links", "dangling.png": "file not found", "dir.png": "no image files",
              "pipe.png": "not a regular file", "zero.png": "not a regular file"}
    for name, text in expect.items():
        assert text in rows[str(d / name)]["error"], rows[str(d / name)]


# root reads a chmod 000 file anyway (capabilities CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH);
# without them, root obeys file permissions like any user. setpriv (util-linux) drops them
# for the child process only, so the kernel's own permission check is what is tested.
NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all")


def test_unreadable_file_is_an_error_row(tiny_export, tmp_path):
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        prefix = NO_DAC
    locked, fine = tmp_path / "locked.png", tmp_path / "fine.png"
    for path in (locked, fine):
        cv2.imwrite(str(path), scan(1))
    locked.chmod(0o000)
    done, rows = run_predict(tiny_export, [str(locked), str(fine)], tmp_path / "out.csv", prefix, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "permission denied" in rows[str(locked)]["error"], rows
    assert rows[str(fine)]["label"] in ("benign", "malignant")


@pytest.mark.slow   # 1,000 files through a subprocess
def test_folder_of_many_files(tiny_export, tmp_path):
    n = 10_000 if os.environ.get("BCD_FULL_RELIABILITY") else 1_000
    folder = tmp_path / "many"
    folder.mkdir()
    data = [cv2.imencode(".png", scan(i, 64))[1].tobytes() for i in range(20)]
    for i in range(n):
        (folder / f"scan {i:05d}.png").write_bytes(data[i % len(data)])
    (folder / "notes.txt").write_text("not an image: skipped by the folder scan")
    started = time.monotonic()
    peak: list[float] = []
    done, rows = run_predict(tiny_export, [str(folder)], tmp_path / "out.csv", timeout=3600, peak=peak)
    seconds = time.monotonic() - started
    peak_mb = peak[0]
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(rows) == n and all(r["label"] in ("benign", "malignant") for r in rows.values())
    print(f"\nbcd predict on a folder of {n:,} files: {seconds:.1f} s, peak RSS of the child {peak_mb:.0f} MB")
