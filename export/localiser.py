"""The lesion localiser into an export directory: localiser.keras -> localiser.onnx
(tf2onnx, float32), checked against Keras in ONNX Runtime, described by the manifest's
"localiser" section (runtime.manifest.LocaliserEntry).

Two ways in:
- `bcd export RUN` includes RUN/localiser/ when it holds a trained localiser
  (`run_localiser`, called by export/pipeline.py; a localiser that fails is left out
  with an error in the log, the classifier's export goes on);
- `bcd localiser RUN --export DIR` adds one to an existing export (`add_localiser`),
  e.g. to the shipped models, without touching the classifier's files.

The localiser reads the classifier's crops, so it is only added to an export whose
scan-region finder is the one its training images were cut with, and whose split is
the one it was trained on (else the export's test images would include images it
learnt from).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from export import onnx_convert
from runtime.manifest import LOCALISER_FILE, LocaliserEntry, read_manifest, write_localiser
from runtime.model_files import sha256_file
from runtime.preprocessing import PreprocessSpec, prepare_batch
from runtime.scan_crop import region_config_from_dict
from runtime.scan_region import RegionConfig
from train.localiser import LOCALISER_DIR, OUTPUT_NAME, LocaliserDir, LocaliserError, read_metrics

log = logging.getLogger(__name__)

METADATA_KEY = "bcd_localiser"
MAX_ABS_DIFF = 1e-3          # ONNX Runtime vs Keras, per map cell (probabilities): float32 both
PARITY_IMAGES = 8


def export_localiser(localiser_dir: str | Path, out_dir: str | Path, opset: int = 17) -> LocaliserEntry:
    """Convert a trained localiser, check it, write OUT/localiser.onnx atomically; the
    manifest entry that describes it (not yet written into any manifest)."""
    from train.tf_setup import keras

    folder = LocaliserDir(Path(localiser_dir))
    metrics = read_metrics(folder.root)
    spec = PreprocessSpec.from_dict(metrics["preprocessing"])
    model = keras.models.load_model(folder.model, compile=False)
    log.info("converting the localiser %s -> ONNX (tf2onnx, opset %d)", folder.model, opset)
    proto = onnx_convert.keras_to_onnx(model, spec.image_size, opset)
    worst = _parity(model, proto, spec)
    if worst > MAX_ABS_DIFF:
        raise LocaliserError(f"the ONNX localiser differs from the Keras one by up to {worst:.2g} per map cell "
                             f"(tolerance {MAX_ABS_DIFF:g})")
    entry = _entry(metrics, folder, worst)
    onnx_convert.set_metadata(proto, METADATA_KEY, {k: v for k, v in entry.to_dict().items()
                                                    if k not in ("file", "sha256", "size_bytes", "figures", "notes")})
    target = Path(out_dir) / LOCALISER_FILE
    onnx_convert.save(proto, target)
    entry.sha256, entry.size_bytes = sha256_file(target), target.stat().st_size
    log.info("localiser written: %s (%.1f kB, map threshold %.2f, ONNX vs Keras max diff %.1g)", target,
             entry.size_bytes / 1024, entry.threshold, worst)
    return entry


def _entry(metrics: dict, folder: LocaliserDir, worst: float) -> LocaliserEntry:
    return LocaliserEntry(
        file=LOCALISER_FILE, sha256="", size_bytes=0,
        preprocessing=dict(metrics["preprocessing"]), output_size=[int(v) for v in metrics["output_size"]],
        threshold=float(metrics["threshold"]), margin=float(metrics["margin"]),
        threshold_chosen_on=str(metrics["threshold_chosen_on"]), input="image", output=OUTPUT_NAME,
        format="onnx", precision="fp32", source_run=metrics.get("source_run"), params=int(metrics["params"]),
        split_sha256=metrics.get("split_sha256"), figures=dict(metrics["figures"]),
        notes=[f"trained {metrics['epochs_trained']} epoch(s) (best: {metrics['best_epoch']}) on the training split "
               f"of run {metrics.get('source_run')}", f"ONNX Runtime vs Keras: max |difference| {worst:.2g} per map cell "
               f"on {PARITY_IMAGES} generated images", metrics.get("figures_note", "")],
    )


def _parity(model, proto, spec: PreprocessSpec) -> float:
    """Max |ONNX Runtime - Keras| over the maps of a few generated images (textured noise
    and blobs: what matters is that the two graphs compute the same function)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    size = spec.image_size
    images = []
    for k in range(PARITY_IMAGES):
        image = rng.normal(90, 30, (size, size, 1)).clip(0, 255)
        yy, xx = np.mgrid[:size, :size]
        cx, cy, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.08, 0.25)]
        image[((xx / size - cx) ** 2 + (yy / size - cy) ** 2) < r * r] *= 0.3 + 0.2 * (k % 3)
        images.append(np.repeat(image, 3, axis=2).astype(np.uint8))
    x = prepare_batch(images, spec)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_maps = session.run([OUTPUT_NAME], {"image": x})[0]
    keras_maps = np.asarray(model(x, training=False))
    return float(np.max(np.abs(onnx_maps - keras_maps)))


def check_fits(metrics: dict, export_dir: Path) -> None:
    """LocaliserError unless the export crops images as the localiser's training did and
    holds the split it was trained on."""
    manifest = read_manifest(export_dir)
    theirs = region_config_from_dict(manifest.scan_region) if manifest.scan_region is not None else RegionConfig()
    ours = region_config_from_dict(metrics["scan_region"])
    if theirs != ours:
        raise LocaliserError(f"{export_dir} cuts images to their scan region with other settings ({theirs.mode}) "
                             f"than the localiser's training images ({ours.mode}): its maps would not fit the crops")
    split = export_dir / "split.json"
    recorded = metrics.get("split_sha256")
    if split.is_file() and recorded and sha256_file(split) != recorded:
        raise LocaliserError(f"{export_dir}'s split.json is not the split the localiser was trained on (run "
                             f"{metrics.get('source_run')}): its test images would include images the localiser "
                             "learnt from. Train a localiser on the export's own run.")


def add_localiser(localiser_dir: str | Path, export_dir: str | Path, opset: int = 17) -> LocaliserEntry:
    """Add (or replace) the localiser of an existing export: the file first, then the
    manifest (atomically), so a reader never finds a section without its file."""
    export_dir = Path(export_dir)
    metrics = read_metrics(localiser_dir)
    check_fits(metrics, export_dir)
    entry = export_localiser(localiser_dir, export_dir, opset)
    write_localiser(export_dir, entry)
    log.info("manifest updated: %s now proposes lesion boxes", export_dir / "manifest.json")
    return entry


def run_localiser(run_root: Path, out_dir: Path, opset: int = 17) -> LocaliserEntry | None:
    """The localiser of RUN/localiser/ for `bcd export` (None: there is none, or it failed:
    the classifier's export goes on without it, with the reason in the log)."""
    folder = LocaliserDir(Path(run_root) / LOCALISER_DIR)
    if not folder.root.is_dir():
        return None
    if not folder.finished:
        log.warning("%s holds no finished localiser (training interrupted or failed?): exported without one",
                    folder.root)
        return None
    try:
        return export_localiser(folder.root, out_dir, opset)
    except Exception as err:  # noqa: BLE001 - the classifier's export must not fail for it
        log.error("the localiser in %s was left out of the export: %s: %s", folder.root, err.__class__.__name__, err)
        return None


def describe(entry: LocaliserEntry) -> str:
    """One line for the export summary."""
    test = (entry.figures.get("test") or {}).get("all") or {}
    found = f"; test: {100 * test['found']:.0f}% of lesions found (box IoU >= 0.5)" if test.get("found") is not None \
        else ""
    return (f"localiser: {entry.file} ({entry.size_bytes / 1024:.0f} kB, {entry.params or 0:,} parameters, map "
            f"threshold {entry.threshold:.2f}{found})")

