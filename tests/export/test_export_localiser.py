"""`bcd export RUN` takes RUN/localiser/ along: the localiser's ONNX file beside the
classifier's, described in the manifest, loadable by the runtime."""
from __future__ import annotations

import json
import shutil

from bcd.cli import main
from runtime.model_files import sha256_file
from runtime.preprocessing import PreprocessSpec
from tests.train.test_localiser import blob_part, small_config


def test_bcd_export_includes_the_runs_localiser(tiny_run, tiny_dataset, tmp_path, capsys):
    from export import ExportConfig, export_run
    from runtime.classifier import Classifier
    from runtime.localiser import Localiser
    from runtime.manifest import read_manifest
    from train.config import run_scan_region
    from train.localiser import LocaliserDir, Provenance, fit_localiser

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # the tiny run's images come without lesion masks: nothing to learn from, said plainly
    assert main(["localiser", str(run)]) == 2
    assert "no images with a lesion mask" in capsys.readouterr().err

    # a localiser fitted on generated scans at the run's input size stands in for one trained on masks
    info = json.loads((run / "run.json").read_text())
    size = PreprocessSpec.from_dict(info["preprocessing"]).image_size
    config = small_config(run / "localiser", 2)
    config = type(config)(**{**config.to_dict(), "levels": 2, "base_filters": 4})
    provenance = Provenance(run.name, sha256_file(run / "split.json"), run_scan_region(info).to_dict())
    fit_localiser(config, LocaliserDir(run / "localiser"), blob_part(24, 1, size), blob_part(12, 2, size),
                  blob_part(6, 3, size), PreprocessSpec.from_dict(info["preprocessing"]), provenance)

    out = tmp_path / "export"
    result = export_run(ExportConfig(run_dir=str(run), out=str(out), formats=("onnx-fp32",), max_auc_drop=1.0,
                                     max_flip_rate=1.0, ood=False))
    entry = read_manifest(out).localiser
    assert entry is not None and entry.file == "localiser.onnx" and entry.source_run == "run"
    assert entry.sha256 == sha256_file(out / entry.file) and entry.output_size == [size // 2, size // 2]
    assert result.manifest.localiser == entry
    loc = Localiser.load(out)
    assert loc.lesion_map(blob_part(1, 9, size).images[0]).shape == (size, size)
    with Classifier.load(out) as clf:       # the classifier's side is as before
        scan = next(p for p in sorted(tiny_dataset.rglob("*.png")) if "_mask" not in p.stem)
        assert clf.predict(scan).ok
