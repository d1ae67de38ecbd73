"""The reference model shipped in runtime/models/ (issue #7): small, loads on the light runtime,
is the default of `bcd predict`, and its model card's numbers are what `bcd evaluate`
measures on the committed split."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.classifier import Classifier
from runtime.manifest import read_manifest
from runtime.model_files import sha256_file
from runtime.shipped import SHIPPED_MODEL, default_model_path, shipped_models
from tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "runtime" / "models" / SHIPPED_MODEL   # package data of runtime (issue 23)
DATA = REPO.parent / "shared" / "data"      # holds busi/ and busbra/, the shipped models' sources
CARD_ROWS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "sensitivity": "sensitivity", "specificity": "specificity",
             "brier": "Brier score", "ece": "expected calibration error"}
MAX_SHIPPED_BYTES = 25 * 1000 ** 2


def test_every_shipped_export_is_complete_and_small():
    assert shipped_models()[0] == MODEL
    total = 0
    for export in shipped_models():
        manifest = read_manifest(export / "manifest.json")
        files = {p.name for p in export.iterdir() if p.is_file()}
        for v in manifest.usable_variants():
            assert v.file in files, f"{export.name}: {v.file} listed but not shipped"
            assert sha256_file(export / v.file) == v.sha256
        assert "MODEL_CARD.md" in files and "split.json" in files
        total += sum(p.stat().st_size for p in export.rglob("*") if p.is_file())
    assert total <= MAX_SHIPPED_BYTES, f"runtime/models/ holds {total / 1e6:.1f} MB"


def test_predict_uses_the_shipped_model_without_model_flag(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BCD_MODEL"}
    assert default_model_path() == MODEL or "BCD_MODEL" in os.environ
    image = tmp_path / "scan.png"
    import cv2
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image), rng.integers(0, 255, (180, 220), dtype=np.uint8))
    proc = subprocess.run([sys.executable, "-m", "bcd.cli", "predict", str(image)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"runtime/models/{SHIPPED_MODEL}/onnx-int8.onnx" in proc.stderr and "variant onnx-int8" in proc.stderr
    assert "not a diagnosis" in proc.stdout
    with Classifier.load(MODEL) as clf:
        expected = clf.predict(str(image)).probability
    assert f"{expected:.4f}" in proc.stdout


@pytest.mark.slow   # evaluates each shipped model on its whole test split (real images)
@pytest.mark.parametrize("export", shipped_models(), ids=lambda p: p.name)
def test_model_card_numbers_are_what_evaluate_measures(export, tmp_path):
    if not (DATA / "busi").is_dir() or not (DATA / "busbra").is_dir():
        missing("the development datasets are not here")
    from train.evaluate_export import evaluate_export_split

    # the card's figures come from ONNX Runtime; OpenVINO (bf16) may flip a borderline case
    doc = evaluate_export_split(export, split_root=DATA, out=tmp_path / "eval", backend="onnxruntime")
    variant = doc["model"].split("/")[-1]
    committed = json.loads((export / f"eval-{variant}-test" / "metrics.json").read_text())
    fresh, saved = doc["at_operating_threshold"], committed["at_operating_threshold"]
    card = (export / "MODEL_CARD.md").read_text()
    for key, label in CARD_ROWS.items():
        # INT8 kernels differ slightly between CPUs; the card's three decimals must hold.
        assert abs(fresh[key] - saved[key]) < 5e-4, key
        assert f"| {label} | {saved[key]:.3f}" in card, f"card row {label!r} does not show {saved[key]:.3f}"
    assert fresh["confusion_matrix"] == saved["confusion_matrix"]
    assert f"threshold {doc['threshold']['value']:.4f}" in card
    n = len(json.loads((export / "split.json").read_text())["files"]["test"])
    assert fresh["n"] == n and f"n = {n}" in card
    for name, block in committed.get("per_source", {}).items():     # the card's per-hospital rows
        m = block["at_operating_threshold"]
        assert abs(doc["per_source"][name]["at_operating_threshold"]["roc_auc"] - m["roc_auc"]) < 5e-4, name
        assert f"| {name} | {m['n']} ({m['n_positive']}) | {m['roc_auc']:.3f}" in card, f"card row for {name}"
    for name, figures in committed.get("localisation", {}).get("test", {}).items():
        assert doc["localisation"]["test"][name]["n"] == figures["n"]
        assert f"{figures['pointing_game']:.3f}" in card, f"pointing game of {name} not on the card"
