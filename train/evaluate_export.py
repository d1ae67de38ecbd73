"""`bcd evaluate EXPORT_DIR`: score an exported variant the way a clinic runs it.

The shipped reference model has no model.keras, only its export directory, so its
numbers must come from the runtime (ONNX Runtime / LiteRT through runtime.Classifier)
reading the original image files. The operating threshold is the manifest's, frozen
on the validation split when the model was trained.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.classifier import Classifier
from runtime.dataset import DEFAULT_CLASS_LABELS, DatasetError, DataSource, LabelMap, Sample, read_source, samples_of_split
from runtime.images import read_image
from runtime.localisation import localisation_summary
from runtime.manifest import MANIFEST_NAME, read_manifest, split_file
from runtime.progress import Progress
from runtime.site_profile import load_for
from train.evaluate import log_headline, score

log = logging.getLogger(__name__)

BATCH = 16


def is_export_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST_NAME).is_file()


def classify_samples(classifier: Classifier, samples: list[Sample]) -> tuple[np.ndarray, dict, list[str], dict | None]:
    """Probabilities for the samples (NaN where an image could not be classified), the
    localisation figures of the runtime's own Grad-CAM for those with a lesion mask (per
    source), the reasons for the unclassified ones (an unreadable file or an image the
    runtime refuses is counted, not fatal), and the out-of-distribution flags of the
    classified ones when the variant has them (else None): {"threshold", "scores", "flags"}."""
    progress = Progress(len(samples), f"classifying with {classifier.variant}")
    probs, cams, masks, groups, errors, scores, flags = [], [], [], [], [], [], []
    for start in range(0, len(samples), BATCH):
        chunk = samples[start:start + BATCH]
        want_cam = classifier.has_cam and any(s.mask is not None for s in chunk)
        for sample, pred in zip(chunk, classifier.predict([s.path for s in chunk], with_cam=want_cam, batch_size=BATCH)):
            if not pred.ok:
                errors.append(str(pred.error))
                probs.append(float("nan"))
                continue
            probs.append(pred.probability)
            scores.append(pred.ood_score)
            flags.append(bool(pred.out_of_distribution))
            if sample.mask is not None and pred.cam is not None:
                cams.append(pred.cam)
                masks.append(read_image(sample.mask)[..., 0] >= 128)
                groups.append(sample.source)
        progress.update(min(start + BATCH, len(samples)))
    if samples and len(errors) == len(samples):
        raise ValueError(f"cannot score: none of the {len(samples)} images could be classified, e.g. {errors[0]}")
    ood = ({"threshold": classifier.ood_threshold, "scores": scores, "flags": flags}
           if classifier.has_ood else None)
    if ood is not None and any(flags):
        log.warning("%d of %d images flagged out-of-distribution (their predictions are still scored)",
                    sum(flags), len(flags))
    return np.asarray(probs, dtype=np.float64), localisation_summary(cams, masks, groups), errors, ood


def _threshold(classifier: Classifier) -> dict:
    site = classifier.site
    if site is not None:   # a clinic's own operating point (bcd calibrate), named in every report
        return {"value": float(site.threshold), "policy": site.policy,
                "chosen_on": f"site calibration data ({site.data.get('n')} images)",
                "site_profile": {"name": site.name, "path": str(site.path) if site.path else None,
                                 "recalibration": site.recalibration.method, "data": site.data,
                                 "description": site.describe()}}
    t = dict(classifier.manifest.threshold) if classifier.manifest else {"value": classifier.threshold}
    t["value"] = float(t["value"])
    return t


def _out_name(variant: str, what: str, classifier: Classifier) -> str:
    # the profile's name may be anything a user typed: keep it one safe path component
    site = f"-site-{re.sub(r'[^A-Za-z0-9._-]+', '-', classifier.site.name).strip('.-') or 'profile'}" \
        if classifier.site is not None else ""
    return f"eval-{variant}-{what}{site}"


def _score_samples(export_dir: Path, samples: list[Sample], variant: str | None, out: Path | None,
                   evaluated_on: str, out_suffix: str, n_resamples: int, loc_key: str,
                   site: Path | None = None, backend: str | None = None) -> dict:
    with Classifier.load(export_dir, variant=variant, backend=backend) as classifier:
        load_for(classifier, site)
        p, localisation, errors, ood = classify_samples(classifier, samples)
        name = classifier.variant
        threshold = _threshold(classifier)
        default_out = _out_name(name, out_suffix, classifier)
    kept = np.isfinite(p)                  # the unclassified images are counted, not scored
    samples = [s for s, k in zip(samples, kept) if k]
    p = p[kept]
    y = np.array([s.label for s in samples])
    out = Path(out or export_dir / default_out)
    sources = np.array([s.source for s in samples])
    result = score(y, p, threshold, out, evaluated_on, f"{export_dir.name}/{name}", n_resamples,
                   [s.relative for s in samples], sources=sources,
                   localisation={loc_key: localisation} if localisation else None, ood=ood)
    if errors:
        log.warning("%d of %d image(s) could not be classified and are left out of the metrics, e.g. %s",
                    len(errors), len(kept), errors[0])
        result["not_classified"] = {"count": len(errors), "errors": errors}
        atomic.write_json(out / "metrics.json", result)
    log_headline(result)
    return result


def evaluate_export_split(export_dir: Path, variant: str | None = None, split_root: Path | None = None,
                          out: Path | None = None, split: str = "test", n_resamples: int = 1000,
                          site: Path | None = None, backend: str | None = None) -> dict:
    """Score one variant of an export on a split of its training run (at the operating
    point of site profile `site` when given)."""
    export_dir = Path(export_dir)
    try:
        samples = samples_of_split(json.loads(split_file(export_dir).read_text()), split, str(split_root) if split_root else None)
    except DatasetError as err:
        raise FileNotFoundError(f"{err}; pass --split-root with where the data lives now") from None
    return _score_samples(export_dir, samples, variant, out, f"{split} split", split, n_resamples, split, site,
                          backend)


def evaluate_export_data(export_dir: Path, sources: list[DataSource], variant: str | None = None,
                         out: Path | None = None, n_resamples: int = 1000, labels: dict | None = None,
                         site: Path | None = None, backend: str | None = None) -> dict:
    """Score one variant on every labelled image of external datasets (folders or CSV
    indexes), per source, with localisation figures where masks exist (at the operating
    point of site profile `site` when given)."""
    label_map = LabelMap(dict(labels or DEFAULT_CLASS_LABELS))
    samples = []
    for source in sources:
        scan = read_source(replace(source, labels=label_map))
        if not scan.labelled:
            raise ValueError(f"{source.path}: no labelled images (class folders benign/, malignant/, normal/ "
                             "or a CSV index)")
        samples += scan.labelled
    names = "+".join(s.name for s in sources)
    return _score_samples(Path(export_dir), samples, variant, out, f"external data {names}", names, n_resamples,
                          "external", site, backend)


def evaluate_export_folder(export_dir: Path, data: Path, variant: str | None = None, out: Path | None = None,
                           n_resamples: int = 1000, labels: dict | None = None, site: Path | None = None,
                           backend: str | None = None) -> dict:
    """One external folder (or CSV index with the canonical columns)."""
    return evaluate_export_data(export_dir, [DataSource.parse(str(data))], variant, out, n_resamples, labels,
                                site, backend)
