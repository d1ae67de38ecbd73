"""runtime.shipped: where the shipped models live (package data of runtime, issue 23) and
which model a command uses without --model. The slow proof that a built wheel carries
them is tests/bcd/test_wheel_install.py; these checks need no build."""
from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import pytest

from runtime import shipped
from runtime.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "runtime"


def _committed_model_files() -> set[str]:
    """Files under runtime/models/ as git tracks them, relative to runtime/ (what a clean
    clone, and so CI's wheel, has)."""
    out = subprocess.run(["git", "ls-files", "-z", "runtime/models"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return {Path(p).relative_to("runtime").as_posix() for p in out.split("\0") if p}


def _package_data_globs() -> list[str]:
    tomllib = pytest.importorskip("tomllib")       # Python >= 3.11
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    return doc["tool"]["setuptools"]["package-data"]["runtime"]


def test_the_default_model_is_the_shipped_reference_inside_the_runtime_package(monkeypatch):
    monkeypatch.delenv(shipped.MODEL_ENV, raising=False)
    default = shipped.default_model_path()
    assert default == RUNTIME / "models" / shipped.SHIPPED_MODEL
    assert read_manifest(default / "manifest.json").usable_variants()
    assert shipped.default_models() == shipped.shipped_models()
    assert shipped.shipped_models()[0] == default and len(shipped.shipped_models()) >= 2


def test_bcd_model_overrides_every_default(monkeypatch, tmp_path):
    monkeypatch.setenv(shipped.MODEL_ENV, str(tmp_path / "mine"))
    assert shipped.default_model_path() == tmp_path / "mine"
    assert shipped.default_models() == [tmp_path / "mine"]


def test_no_shipped_models_means_no_default(monkeypatch, tmp_path):
    monkeypatch.delenv(shipped.MODEL_ENV, raising=False)
    monkeypatch.setattr(shipped, "MODELS_DIR", tmp_path / "absent")
    assert shipped.default_model_path() is None
    assert shipped.shipped_models() == [] and shipped.default_models() == []


def test_every_file_a_shipped_model_needs_is_committed_and_declared_as_package_data():
    committed = _committed_model_files()
    # matched the way setuptools expands package-data: glob relative to the package folder
    declared = {Path(p).relative_to(RUNTIME).as_posix()
                for pattern in _package_data_globs() for p in glob.glob(str(RUNTIME / pattern))}
    for export in shipped.shipped_models():
        name = f"models/{export.name}"
        manifest = read_manifest(export / "manifest.json")
        needed = {"manifest.json", "split.json", "backends.json", "MODEL_CARD.md"}
        needed |= {v.file for v in manifest.usable_variants()}
        if manifest.localiser is not None:      # the lesion localiser travels with its manifest
            needed.add(manifest.localiser.file)
        for file in sorted(needed):
            assert f"{name}/{file}" in committed, f"{name}/{file} is not in git (.gitignore?)"
        # every committed file travels: the card links its eval folder
        mine = {f for f in committed if f.startswith(name + "/")}
        assert mine - declared == set(), f"not declared in pyproject's package-data: {sorted(mine - declared)}"
