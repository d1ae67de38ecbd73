"""The models shipped inside the package, and which model a command uses without --model.

    default_model_path()   # $BCD_MODEL, else the reference model: `bcd predict`, `evaluate`, `calibrate`
    default_models()       # $BCD_MODEL, else every shipped model: `bcd demo`
    shipped_models()       # every shipped export directory, the reference model first

The shipped exports are package data of `runtime` (runtime/models/<name>/, declared in
pyproject.toml's [tool.setuptools.package-data]), so a wheel installed anywhere carries
them: the same code finds them in a git checkout and in site-packages. They are found
beside this file rather than through importlib.resources because the runtime loads a
model by file path (the manifest names its files beside it), which needs a real folder
on disk anyway, as every pip install gives.
"""
from __future__ import annotations

import os
from pathlib import Path

MODEL_ENV = "BCD_MODEL"
SHIPPED_MODEL = "bus-vgg16-w50-128"     # the reference model, default of every command
MODELS_DIR = Path(__file__).resolve().parent / "models"


def shipped_models() -> list[Path]:
    """Every export directory shipped in runtime/models/, the reference model first (the
    demo offers them all, e.g. the full model and its slim variant)."""
    if not MODELS_DIR.is_dir():
        return []
    found = sorted(p.parent for p in MODELS_DIR.glob("*/manifest.json"))
    return sorted(found, key=lambda p: p.name != SHIPPED_MODEL)


def default_model_path() -> Path | None:
    """The model `bcd predict`, `bcd evaluate` and `bcd calibrate` use without --model:
    $BCD_MODEL if set, else the shipped reference model; None if neither."""
    override = os.environ.get(MODEL_ENV)
    if override:
        return Path(override)
    shipped = MODELS_DIR / SHIPPED_MODEL
    return shipped if (shipped / "manifest.json").is_file() else None


def default_models() -> list[Path]:
    """The models `bcd demo` serves without --model: $BCD_MODEL when set (as for predict
    and evaluate), else every shipped model (reference first); empty if neither."""
    override = os.environ.get(MODEL_ENV)
    if override:
        return [Path(override)]
    return shipped_models()
