"""A wheel built from the repository, installed in a fresh venv in another folder,
classifies an image with the bundled reference model (issue 23, "installs anywhere").

The wheel is built from a copy of the files git would commit (so no stale build/ folder
or local run output gets in), with pip's normal isolated build; the venv is a fresh one
(no system or parent site-packages), and pip installs the wheel's runtime dependencies
from the package registry, as a user's `pip install` would. Nothing runs from the
repository: the commands run in an empty folder and must name the venv's own model files.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from runtime.classifier import Classifier
from runtime.shipped import SHIPPED_MODEL, shipped_models

from tests.conftest import BUSI, REPO, busi_files

pytestmark = pytest.mark.slow

INSTALL_TIMEOUT = 900        # seconds: a cold pip cache downloads onnxruntime, numpy, OpenCV (and Gradio)


def _run(cmd: list, cwd: Path, timeout: float = INSTALL_TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _clean_env() -> dict[str, str]:
    """The environment without anything that points back at the repository or a model."""
    drop = {"BCD_MODEL", "BCD_SITE", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _committed_tree(dest: Path) -> Path:
    """The files of a commit of the working tree (tracked plus new, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for rel in filter(None, out.split("\0")):
        source = REPO / rel
        if source.is_file():                    # a tracked file deleted in the working tree is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = _committed_tree(work / "src")
    started = time.monotonic()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source], cwd=work)
    print(f"wheel built in {time.monotonic() - started:.0f} s")
    [built] = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed: its runtime dependencies only, no extras."""
    root = tmp_path_factory.mktemp("venv")
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", root / "venv"], cwd=root)
    _run([root / "venv" / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=root)
    print(f"venv made and wheel installed in {time.monotonic() - started:.0f} s")
    return root / "venv"


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """An empty working folder outside the repository."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def _image(folder: Path) -> Path:
    """A real BUSI scan when the development data is here, else a generated one."""
    if BUSI.is_dir():
        [scan] = busi_files("malignant", 1)
        return Path(shutil.copy(scan, folder / "scan.png"))
    import cv2
    path = folder / "scan.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (180, 220), dtype=np.uint8))
    return path


def test_the_wheel_carries_every_committed_file_of_the_shipped_models(wheel):
    out = subprocess.run(["git", "ls-files", "-z", "runtime/models"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    committed = set(filter(None, out.split("\0")))
    with zipfile.ZipFile(wheel) as zf:
        packed = {n for n in zf.namelist() if n.startswith("runtime/models/")}
    assert committed and packed == committed
    print(f"wheel: {wheel.name}, {wheel.stat().st_size / 1e6:.2f} MB")


def test_bcd_predict_in_a_fresh_venv_classifies_with_the_bundled_model(venv, elsewhere):
    site_packages = _run([venv / "bin" / "python", "-c", "import runtime, pathlib; "
                          "print(pathlib.Path(runtime.__file__).resolve().parent.parent)"], cwd=elsewhere).stdout.strip()
    assert not Path(site_packages).is_relative_to(REPO)
    image = _image(elsewhere)
    proc = _run([venv / "bin" / "bcd", "predict", image, "--json", elsewhere / "out.json"], cwd=elsewhere,
                timeout=300)
    bundled = Path(site_packages) / "runtime" / "models" / SHIPPED_MODEL / "onnx-int8.onnx"
    assert f"model: {bundled} (variant onnx-int8" in proc.stderr
    assert "not a diagnosis" in proc.stdout
    [row] = json.loads((elsewhere / "out.json").read_text())
    assert row["error"] is None and row["label"] in ("benign", "malignant")
    # the same model file here gives the same probability (INT8 kernels: 3 decimals)
    with Classifier.load(REPO / "runtime" / "models" / SHIPPED_MODEL, backend="onnxruntime") as clf:
        expected = clf.predict(str(image))
    assert row["threshold"] == pytest.approx(expected.threshold)
    assert row["probability"] == pytest.approx(expected.probability, abs=1e-3)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bcd_demo_in_the_fresh_venv_serves_the_bundled_models(venv, wheel, elsewhere):
    started = time.monotonic()
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[demo]"], cwd=elsewhere)
    print(f"[demo] extra installed in {time.monotonic() - started:.0f} s")
    port = _free_port()
    log = elsewhere / "demo.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(venv / "bin" / "bcd"), "demo", "--port", str(port)], cwd=elsewhere,
                                  env={**_clean_env(), "GRADIO_ANALYTICS_ENABLED": "False"},
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        page = _wait_for_page(f"http://127.0.0.1:{port}/", server, log)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "not a diagnosis" in page
    served = next(line for line in log.read_text().splitlines() if line.startswith("serving "))
    expected = ", ".join(f"{venv.resolve()}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages/runtime/"
                         f"models/{export.name}" for export in shipped_models())
    assert served == f"serving {expected}"        # every bundled model, the reference first


def _wait_for_page(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"bcd demo exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode("utf-8", "replace")
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"bcd demo did not answer within {timeout:.0f} s: {log.read_text()[-3000:]}")
