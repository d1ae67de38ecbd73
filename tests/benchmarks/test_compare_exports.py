"""Issue #8 (benchmark side): several exports against one original (`bcd benchmark
--also`), MACs/params per row, `bcd pick`, and magnitude-pruned (sparse) export variants
with their compressed sizes. Real exports, real ONNX Runtime sessions, few runs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bcd.cli import main

FAST = ("--runs", "2", "--warmup", "0", "--rounds", "1", "--batch", "2", "--bootstrap", "0", "--cold-starts", "0")


# --------------------------------------------------------------------------- sparse export

@pytest.fixture(scope="module")
def sparse_export(graded_run, tmp_path_factory):
    from export import ExportConfig, export_run

    out = tmp_path_factory.mktemp("exports") / "sparse"
    result = export_run(ExportConfig(run_dir=str(graded_run), out=str(out), formats=("onnx-fp32",),
                                     sparsity=0.5, sparsity_epochs=1, max_flip_rate=1.0, max_auc_drop=1.0))
    return result


def _weight_zero_share(path) -> float:
    import onnx
    from onnx import numpy_helper

    zeros = total = 0
    for init in onnx.load(str(path)).graph.initializer:
        values = numpy_helper.to_array(init)
        if values.ndim == 4:                    # the conv kernels: the bulk of the weights
            zeros += int(np.count_nonzero(values == 0))
            total += values.size
    return zeros / total


@pytest.mark.slow   # exports magnitude-pruned variants
def test_sparse_variants_are_sparse_and_compress_better(sparse_export):
    from runtime.manifest import read_manifest

    manifest = read_manifest(sparse_export.export_dir)
    names = [v.name for v in manifest.variants]
    assert names == ["onnx-fp32", "onnx-fp32-sparse50", "onnx-int8-sparse50"]
    dense, sparse, sparse_int8 = manifest.variants
    for v in manifest.variants:
        assert v.status in ("ok", "failed") and v.parity is not None, (v.name, v.reason)
        assert v.compressed_bytes and v.compressed_bytes > 0
    assert sparse.sparsity >= 0.5 and dense.sparsity is None
    # 50 % per layer, rounded to whole weights (and a pruned weight can tie the threshold):
    # a CI run measured 0.49999993, one weight in 14.7 million short
    assert _weight_zero_share(sparse_export.export_dir / sparse.file) >= 0.4999
    assert _weight_zero_share(sparse_export.export_dir / dense.file) < 0.01
    # same raw size (dense storage), smaller download
    assert abs(sparse.size_bytes - dense.size_bytes) < 0.05 * dense.size_bytes
    assert sparse.compressed_bytes < 0.8 * dense.compressed_bytes
    assert sparse_int8.compressed_bytes < sparse.compressed_bytes
    assert "NOT faster" in sparse.notes[0]
    assert manifest.model_cost["macs"] > 0 and manifest.model_cost["params"] > 0
    assert manifest.export_settings["sparsity"]["target"] == 0.5
    # the runtime serves it like any other variant
    from runtime.classifier import Classifier
    classifier = Classifier.load(sparse_export.export_dir, variant=sparse.name, force=True)
    classifier.close()


# --------------------------------------------------------------------------- --also, MACs

@pytest.fixture(scope="module")
def also(tiny_export, bench_export, graded_run, tmp_path_factory):
    """tiny_export benchmarked with --also a copy of bench_export ("slimmer"), whose manifest
    lacks model_cost (an older export: MACs come from its Keras original, found next to it)."""
    from runtime.manifest import read_manifest, write_manifest

    root = tmp_path_factory.mktemp("also")
    extra = root / "slimmer"
    shutil.copytree(bench_export, extra)
    manifest = read_manifest(extra)
    manifest.model_cost = None
    write_manifest(extra, manifest)
    (root / graded_run.name).symlink_to(graded_run, target_is_directory=True)
    out = root / "out"
    code = main(["benchmark", str(tiny_export), "--original", str(graded_run), "--also", str(extra),
                 "--variants", "onnx-fp32,onnx-int8", "--out", str(out), *FAST[:-2], "--cold-starts", "1"])
    return code, out, json.loads((out / "results.json").read_text()), extra


@pytest.mark.slow   # benchmarks two exports
def test_also_rows_share_one_baseline(also):
    code, out, doc, extra = also
    assert code == 0
    rows = {r["name"]: r for r in doc["variants"]}
    from runtime.backends import openvino_installed
    on_openvino = {"onnx-fp32@openvino", "onnx-int8@openvino", "slimmer/onnx-fp32@openvino",
                   "slimmer/onnx-int8@openvino"} if openvino_installed() else set()
    assert set(rows) == {"keras-original", "onnx-fp32", "onnx-int8",
                         "slimmer/keras-original", "slimmer/onnx-fp32", "slimmer/onnx-int8", *on_openvino}
    assert rows["slimmer/keras-original"]["role"] == "extra-original"
    assert rows["slimmer/onnx-int8"]["export"] == "slimmer" and rows["slimmer/onnx-int8"]["variant"] == "onnx-int8"
    assert [e["label"] for e in doc["exports"]] == ["tiny", "slimmer"]
    base = rows["keras-original"]
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["error"])
        assert row["accuracy"]["n"] == doc["settings"]["data"]["n"]
        assert row["speedup_p50"] == pytest.approx(base["latency_ms"]["p50"] / row["latency_ms"]["p50"])
        assert row["cold_start_s"] > 0, name                    # the probes found every model
    # the same model exported twice: same predictions through both exports
    assert rows["slimmer/onnx-fp32"]["accuracy"]["auc"] == pytest.approx(rows["onnx-fp32"]["accuracy"]["auc"])
    assert rows["slimmer/keras-original"]["accuracy"]["flips"] == 0
    md = (out / "results.md").read_text()
    assert "slimmer/onnx-int8" in md and "Also measured" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(doc["pareto_front"]) <= set(rows)


@pytest.mark.slow   # benchmarks two exports
def test_macs_params_and_zip_size_per_row(also, tiny_export):
    _, out, doc, _ = also
    rows = {r["name"]: r for r in doc["variants"]}
    macs = {r["macs"] for r in rows.values()}
    params = {r["params"] for r in rows.values()}
    assert len(macs) == 1 and len(params) == 1 and macs.pop() > 0      # fp32 == int8 == Keras, both exports
    assert rows["onnx-int8"]["cost_source"] == "manifest model_cost"
    assert rows["slimmer/onnx-int8"]["cost_source"] == "the export's Keras original"
    assert doc["model"]["gmac_per_image"] * 1e9 == pytest.approx(rows["keras-original"]["macs"])
    for row in rows.values():
        assert row["compressed_bytes"] > 0
    assert rows["onnx-int8"]["compressed_bytes"] < rows["onnx-fp32"]["compressed_bytes"]
    md = (out / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model | engine | format"))
    assert "zip size" in header and "GMACs" in header and "params (M)" in header


def test_also_with_another_input_size_is_refused(tiny_export, graded_run, tmp_path, capsys):
    from runtime.manifest import read_manifest, write_manifest

    other = tmp_path / "other"
    shutil.copytree(tiny_export, other)
    manifest = read_manifest(other)
    manifest.preprocessing["image_size"] = 64
    write_manifest(other, manifest)
    code = main(["benchmark", str(tiny_export), "--original", str(graded_run), "--also", str(other),
                 "--out", str(tmp_path / "out"), *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert "input size 64 differs" in err and not (tmp_path / "out" / "results.json").exists()


# --------------------------------------------------------------------------- bcd pick

def _row(name, p50, auc, role="variant", status="ok", export_status="ok", file_bytes=100):
    return {"name": name, "role": role, "status": status, "export_status": export_status,
            "latency_ms": {"p50": p50}, "accuracy": {"auc": auc, "ci95": {"auc": {"low": None, "high": None}}},
            "file_bytes": file_bytes, "size_ratio": file_bytes / 1000, "macs": None}


def _results(tmp_path, rows, kind="validation split"):
    doc = {"baseline": "keras-original", "settings": {"data": {"kind": kind, "source": f"{kind} of run x"}},
           "variants": [_row("keras-original", 100.0, 0.900, role="original", export_status=None, file_bytes=1000),
                        *rows]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    return path


def test_pick_the_fastest_within_budget(tmp_path, capsys):
    path = _results(tmp_path, [
        _row("onnx-fp32", 30.0, 0.901),
        _row("onnx-int8", 25.0, 0.895),
        _row("slim/onnx-int8", 5.0, 0.880),                    # fastest, but 0.02 below: out
        _row("slim/onnx-fp32", 8.0, 0.8905),                   # 0.0095 below: in, and faster than the rest
        _row("broken", 1.0, 0.95, status="failed"),
        _row("parity-failed", 2.0, 0.95, export_status="failed"),
    ])
    assert main(["pick", str(path)]) == 0
    out = capsys.readouterr()
    assert "pick: slim/onnx-fp32" in out.out and "12.50x" in out.out and "drop +0.0095" in out.out
    assert "0.100x model.keras" in out.out and "warning" not in out.err
    assert main(["pick", str(path), "--budget", "0.001"]) == 0
    assert "pick: onnx-fp32" in capsys.readouterr().out          # AUC above the original: drop < 0


def test_pick_warns_on_test_split_and_errors_clearly(tmp_path, capsys):
    path = _results(tmp_path, [_row("onnx-int8", 25.0, 0.80)], kind="test split")
    assert main(["pick", str(path)]) == 2
    captured = capsys.readouterr()
    assert "warning" not in captured.out
    assert "no variant is within 0.01 AUC" in captured.err and "onnx-int8" in captured.err
    path = _results(tmp_path, [_row("onnx-int8", 25.0, 0.90)], kind="test split")
    assert main(["pick", str(path)]) == 0
    assert "the budget is meant for the validation split" in capsys.readouterr().err
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"schema_version": 1, "variants": []}))
    assert main(["pick", str(bad)]) == 2
    assert "is not a results.json" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["pick", str(tmp_path / "junk.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["pick", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
