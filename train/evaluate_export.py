"""`bcd evaluate EXPORT_DIR`: score an exported variant the way a clinic runs it.

The shipped reference model has no model.keras, only its export directory, so its
numbers must come from the runtime (ONNX Runtime / LiteRT through runtime.Classifier)
reading the original image files. The operating threshold is the manifest's, frozen
on the validation split when the model was trained.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from runtime.classifier import Classifier
from runtime.dataset import DEFAULT_CLASS_LABELS, LabelMap, scan_folder
from runtime.manifest import MANIFEST_NAME, read_manifest
from runtime.progress import Progress
from train.evaluate import log_headline, score

log = logging.getLogger(__name__)

SPLIT_NAME = "split.json"
BATCH = 16


def is_export_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST_NAME).is_file()


def _split_file(export_dir: Path) -> Path:
    """The saved split: shipped beside the manifest, else in the source run directory."""
    own = export_dir / SPLIT_NAME
    if own.is_file():
        return own
    source = read_manifest(export_dir / MANIFEST_NAME).source_model.get("path", "")
    for candidate in (export_dir.parent / source, Path(source)):
        if candidate.name == "model.keras" and (candidate.parent / SPLIT_NAME).is_file():
            return candidate.parent / SPLIT_NAME
    raise FileNotFoundError(f"{export_dir}: no {SPLIT_NAME} beside the manifest or in the source run; "
                            "score a labelled folder instead with --data")


def _probabilities(classifier: Classifier, files: list[Path]) -> np.ndarray:
    progress = Progress(len(files), f"classifying with {classifier.variant}")
    probs = []
    for start in range(0, len(files), BATCH):
        for pred in classifier.predict(files[start:start + BATCH], batch_size=BATCH):
            if not pred.ok:
                raise ValueError(f"cannot score: {pred.error}")
            probs.append(pred.probability)
        progress.update(min(start + BATCH, len(files)))
    return np.asarray(probs, dtype=np.float64)


def _threshold(classifier: Classifier) -> dict:
    t = dict(classifier.manifest.threshold) if classifier.manifest else {"value": classifier.threshold}
    t["value"] = float(t["value"])
    return t


def evaluate_export_split(export_dir: Path, variant: str | None = None, split_root: Path | None = None,
                          out: Path | None = None, split: str = "test", n_resamples: int = 1000) -> dict:
    """Score one variant of an export on a split of its training run."""
    export_dir = Path(export_dir)
    doc = _read_json(_split_file(export_dir))
    if split not in doc["files"]:
        raise ValueError(f"the saved split has no {split!r} part (has: {', '.join(doc['files'])})")
    root = Path(split_root or doc["data_root"])
    if not root.is_dir():
        raise FileNotFoundError(f"the dataset of the saved split is not at {root}; pass --split-root")
    entries = doc["files"][split]
    missing = [e["path"] for e in entries if not (root / e["path"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) of the saved split are missing under {root}, "
                                f"e.g. {missing[0]}")
    with Classifier.load(export_dir, variant=variant) as classifier:
        p = _probabilities(classifier, [root / e["path"] for e in entries])
        name = classifier.variant
        threshold = _threshold(classifier)
    y = np.array([e["label"] for e in entries])
    out = Path(out or export_dir / f"eval-{name}-{split}")
    result = score(y, p, threshold, out, f"{split} split", f"{export_dir.name}/{name}", n_resamples,
                   [e["path"] for e in entries])
    log_headline(result)
    return result


def evaluate_export_folder(export_dir: Path, data: Path, variant: str | None = None, out: Path | None = None,
                           n_resamples: int = 1000, labels: dict | None = None) -> dict:
    """Score one variant on every labelled image of an external folder."""
    scan = scan_folder(data, LabelMap(dict(labels or DEFAULT_CLASS_LABELS)))
    entries = scan.labelled
    if not entries:
        raise ValueError(f"{data}: no labelled images (class folders benign/, malignant/, normal/ ...)")
    with Classifier.load(export_dir, variant=variant) as classifier:
        p = _probabilities(classifier, [e.path for e in entries])
        name = classifier.variant
        threshold = _threshold(classifier)
    y = np.array([e.label for e in entries])
    out = Path(out or Path(export_dir) / f"eval-{name}-{Path(data).resolve().name}")
    rel = [e.path.relative_to(data).as_posix() for e in entries]
    result = score(y, p, threshold, out, f"external folder {data}", f"{Path(export_dir).name}/{name}",
                   n_resamples, rel)
    log_headline(result)
    return result


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())
