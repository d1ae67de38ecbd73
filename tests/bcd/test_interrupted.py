"""Interrupted work loses nothing: real subprocesses killed with SIGKILL.

- export: a re-export into a folder that holds a valid export, killed at random points
  of its log, leaves the previous export intact and loadable (same files, same
  checksums); nothing partial ever carries a manifest.
- training: killed mid-epoch, `bcd train --resume` finishes with the usual artifacts.
- `bcd predict` over a folder: killed half-way, leaves no report, or a valid
  `.partial.json` that says it is partial and whose rows are real results.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.classifier import Classifier
from runtime.manifest import MANIFEST_NAME
from runtime.model_files import sha256_file

REPO = Path(__file__).resolve().parents[2]
# every test here runs real `bcd` subprocesses (export, training, predict) and kills them
pytestmark = pytest.mark.slow


def bcd(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "bcd.cli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def kill_after_lines(proc: subprocess.Popen, n: int, timeout: float = 1800) -> list[str]:
    """Read the process's log; SIGKILL it after `n` lines (or let it end)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if len(lines) >= n:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    return lines


def snapshot(export: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(export.iterdir()) if p.is_file()}


def test_export_killed_at_random_points_leaves_the_previous_export_intact(graded_run, tiny_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_export, out)
    before = snapshot(out)
    default = Classifier.load(out).variant
    args = ("export", str(graded_run), "--out", str(out), "--formats", "onnx-fp32,onnx-int8",
            "--max-auc-drop", "1", "--max-flip-rate", "1")
    # A complete re-export into another folder gives the number of log lines of a full run.
    full = kill_after_lines(bcd(*args[:2], "--out", str(tmp_path / "reference"), *args[4:]), 10**9)
    assert (tmp_path / "reference" / MANIFEST_NAME).is_file(), "".join(full[-20:])
    # kill points: random log lines before the export publishes (the line saying so)
    published = next(i for i, line in enumerate(full) if "manifest written" in line)
    points = sorted(random.Random(15).sample(range(1, published), k=min(3, published - 1)))
    for n in points:
        proc = bcd(*args)
        lines = kill_after_lines(proc, n)
        assert proc.returncode == -signal.SIGKILL, f"export ended before line {n}: {lines[-5:]}"
        if any("replacing the export" in line for line in lines):
            # killed during the final renames (a few ms): no manifest, or the complete new one
            manifest = out / MANIFEST_NAME
            assert not manifest.exists() or Classifier.load(out).info.sha256_verified
            shutil.rmtree(out)
            shutil.copytree(tiny_export, out)
            continue
        assert snapshot(out) == before, f"killed after log line {n}: {lines[-1]!r}"
        assert Classifier.load(out).variant == default              # loads, checksums verified
        for leftover in tmp_path.glob(".export.partial-*"):         # staging: never a manifest
            assert not (leftover / MANIFEST_NAME).exists()
        if any("[1/2]" in line for line in lines):                 # killed while writing variants
            assert list(tmp_path.glob(".export.partial-*")), "the killed export left no staging folder"
    # the next export cleans the dead staging folders and replaces the export as a whole
    done = bcd(*args)
    log = kill_after_lines(done, 10**9)
    assert done.returncode == 0, "".join(log[-20:])
    assert not list(tmp_path.glob(".export.partial-*"))
    after = json.loads((out / MANIFEST_NAME).read_text())
    assert after["created"] >= json.loads((tiny_export / MANIFEST_NAME).read_text())["created"]
    assert Classifier.load(out).info.sha256_verified


def test_training_killed_mid_epoch_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    args = ("train", "--data", str(tiny_dataset), "--out", str(out), "--image-size", "32", "--epochs", "3",
            "--batch-size", "4", "--patience", "10")
    proc = bcd(*args)
    state = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epochs_done"] >= 1:
            proc.send_signal(signal.SIGKILL)              # epoch 2 has begun: killed mid-epoch
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done_at_kill < 3 and not (out / "metrics.json").exists()

    resumed = bcd(*args, "--resume")
    log = kill_after_lines(resumed, 10**9)
    assert resumed.returncode == 0, "".join(log[-20:])
    final = json.loads(state.read_text())
    history = json.loads((out / "history.json").read_text())
    assert final["epochs_done"] == len(history["loss"]) == 3 or final.get("stopped_early")
    for name in ("model.keras", "split.json", "metrics.json", "metrics.md", "run.json"):
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("*.png"))
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_predict_killed_half_way_leaves_a_valid_partial_file(tiny_export, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(600):
        image = rng.integers(0, 60, (96, 96), dtype=np.uint8)
        image[30:60, 30:60] += 150
        cv2.imwrite(str(folder / f"scan{i:04d}.png"), image)
    report = tmp_path / "out" / "results.json"
    proc = bcd("predict", str(folder), "--model", str(tiny_export), "--json", str(report), "--batch-size", "4",
               "--threads", "1", "--partial-every", "0.2")
    partial = Path(str(report) + ".partial.json")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not partial.exists():
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "predict finished before it could be killed; use more files"
    assert not report.exists()                       # the report itself is all or nothing
    doc = json.loads(partial.read_text())            # ... and the partial file is valid JSON
    assert doc["partial"] is True and 0 < doc["done"] < doc["total"] == 600
    assert len(doc["results"]) == doc["done"]
    clf = Classifier.load(tiny_export, threads=1)                # the variant bcd predict chose
    for row in doc["results"][:5]:                   # real results, equal to a fresh prediction
        fresh = clf.predict(row["path"])
        assert row["label"] == fresh.label and row["probability"] == pytest.approx(fresh.probability, abs=1e-6)

    done = bcd("predict", str(folder), "--model", str(tiny_export), "--json", str(report), "--partial-every", "0.2")
    kill_after_lines(done, 10**9)
    assert done.returncode == 0
    assert len(json.loads(report.read_text())) == 600 and not partial.exists()
