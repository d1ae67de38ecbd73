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
    assert _weight_zero_share(sparse_export.export_dir / sparse.file) >= 0.5
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
