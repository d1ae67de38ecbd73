"""May an engine other than ONNX Runtime serve an export's .onnx files? The parity check
whose record (backends.json beside manifest.json) `--backend auto` follows.

    python -m export.engine_parity runtime/models/bus-vgg16-w50-128 [--data DIR | --split val]

Each installed engine besides ONNX Runtime (today: OpenVINO) runs every usable .onnx
variant on the export's validation split (its split.json) or a labelled dataset, with
Grad-CAM, and is compared with ONNX Runtime on the same file (the engine the export
checked against the Keras original: flip rate, AUC drop, max |delta p|, CAM correlation)
and with the manifest's baseline AUC of the Keras original; the export's own tolerances
decide. `--backend auto` serves a variant with OpenVINO only where this file records a
pass for that very file (sha256). Speed records written by `python -m benchmarks.backends
compare --record` for the same file are kept.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from runtime.host import cpu_model, package_version, utc_now



def _split_images(export_dir: Path, manifest, data: Path | None, split: str):
    """(resized uint8 BGR images, labels, description) of a split of the export's
    split.json (its dataset found where the split says) or of a labelled folder / CSV
    index (`runtime.dataset`, the same readers as training and `bcd evaluate`), each cut
    to its scan region as the export's run was (train.data.read_sample: the inputs the
    manifest's baseline AUC was measured on); images the runtime refuses are left out."""
    import numpy as np
    from runtime.dataset import DataSource, read_source, samples_of_split
    from runtime.images import ImageReadError
    from runtime.preprocessing import PreprocessSpec, resize
    from runtime.scan_crop import region_config_from_dict
    from train.data import read_sample

    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    if data is not None:
        samples = read_source(DataSource.parse(str(data))).samples
        source = f"data {data}"
    else:
        split_file = export_dir / "split.json"
        if not split_file.is_file():
            raise FileNotFoundError(f"{export_dir}: no split.json beside the manifest; pass --data DIR")
        samples = samples_of_split(json.loads(split_file.read_text()), split)
        source = f"{split} split of {split_file}"
    region = region_config_from_dict(manifest.scan_region or {"mode": "off"})
    images, labels = [], []
    for s in samples:
        if s.label is None:
            continue
        try:
            images.append(resize(read_sample(s.path, None, region)[0], spec))
        except ImageReadError:        # a colour Doppler screen: the runtime refuses it too
            continue
        labels.append(int(s.label))
    if not images:
        raise ValueError(f"no labelled images to check on ({source})")
    images = np.stack(images)
    return images, np.asarray(labels, dtype=np.int64), {"source": source, "n": len(labels),
                                                        "n_malignant": int(sum(labels))}


def _run_all(clf, images, batch: int = 16):
    import numpy as np
    probs, cams = [], []
    clf.input_checks = None   # dataset scans resized to the model input: the model is measured, not clinic input
    for start in range(0, len(images), batch):
        preds = clf.predict_decoded(list(images[start:start + batch]), with_cam=clf.has_cam)
        bad = [p.error for p in preds if p.error]
        if bad:
            raise RuntimeError(bad[0])
        probs += [p.probability for p in preds]
        cams += [p.cam for p in preds] if clf.has_cam else []
    return np.asarray(probs), (np.stack(cams) if cams else None)


def check(export_dir: Path, data: Path | None = None, split: str = "val", engines: tuple[str, ...] | None = None,
          command: str | None = None) -> dict:
    """Parity of every installed engine on every usable .onnx variant; writes backends.json."""
    from export.parity import Tolerance, compare as parity_compare
    from runtime import atomic
    from runtime.backends import BACKENDS_FILE, openvino_installed, read_backend_record
    from runtime.classifier import Classifier
    from runtime.manifest import read_manifest

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    tol = Tolerance(**(manifest.export_settings.get("tolerance") or {}))
    engines = engines or (("openvino",) if openvino_installed() else ())
    images, labels, described = _split_images(export_dir, manifest, data, split)
    previous = read_backend_record(export_dir).get("variants", {})
    baseline = manifest.baseline or {}
    same_data = data is None and split == "val" and baseline.get("n") == len(labels)
    record = {"schema_version": 1, "created": utc_now(), "command": command, "data": described,
              "tolerance": {"max_auc_drop": tol.max_auc_drop, "max_flip_rate": tol.max_flip_rate},
              "reference": "ONNX Runtime on the same file (the engine the export checked against the Keras "
                           "original); AUC also against the manifest's baseline AUC of the Keras original when "
                           "the data are its validation split",
              "machine": {"cpu": cpu_model(), "architecture": platform.machine()}, "variants": {}}
    for entry in manifest.variants:
        if entry.format != "onnx" or not entry.usable:
            continue
        # the images are cut to their region already: the classifiers take them as they are
        with Classifier.load(export_dir, variant=entry.name, backend="onnxruntime", region="off") as ref:
            ref_probs, ref_cams = _run_all(ref, images)
        by_engine: dict = {"sha256": entry.sha256, "onnxruntime": {
            "status": entry.status, "version": package_version("onnxruntime"),
            "parity": entry.parity.to_dict() if entry.parity else None,
            "checked": "by the export, against the Keras original"}}
        for engine in engines:
            with Classifier.load(export_dir, variant=entry.name, backend=engine, region="off") as clf:
                probs, cams = _run_all(clf, images)
                precision = getattr(clf.backend, "precision", None)
            parity = parity_compare(probs, ref_probs, labels, manifest.threshold_value, cams, ref_cams)
            problems = tol.violations(parity)
            vs_original = None
            if same_data and baseline.get("auc") is not None and parity.auc is not None:
                vs_original = float(baseline["auc"]) - parity.auc
                if vs_original > tol.max_auc_drop:
                    problems.append(f"AUC drop vs the Keras original {vs_original:.4f} > {tol.max_auc_drop:g}")
            by_engine[engine] = {"status": "failed" if problems else "ok", "problems": problems,
                                 "version": package_version(engine), "precision": precision,
                                 "parity": parity.to_dict(), "auc_drop_vs_original": vs_original}
        old = previous.get(entry.name) or {}
        if old.get("speed") and old.get("sha256") == entry.sha256:
            by_engine["speed"] = old["speed"]          # speed records of the same file stay valid
        record["variants"][entry.name] = by_engine
    atomic.write_json(export_dir / BACKENDS_FILE, record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.engine_parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, metavar="EXPORT_DIR")
    parser.add_argument("--data", type=Path, help="labelled dataset instead of the split in split.json")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    args = parser.parse_args(argv)
    command = "python -m export.engine_parity " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        doc = check(args.export, args.data, args.split, command=command)
        for name, engines in doc["variants"].items():
            for engine, e in engines.items():
                if isinstance(e, dict) and engine != "onnxruntime":
                    p = e["parity"]
                    print(f"{args.export} {name} {engine} ({e['precision']}): {e['status']}; flip rate "
                          f"{p['flip_rate']:.4f}, max |dp| {p['max_abs_diff']:.4f}, AUC {p['auc']} vs ORT "
                          f"{p['auc_original']}, CAM r {p['cam_correlation']}"
                          + (f"; {'; '.join(e['problems'])}" if e["problems"] else ""))
        print(f"written: {Path(args.export) / 'backends.json'}")
        return 0
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        print(f"export.engine_parity: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
