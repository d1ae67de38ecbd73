"""The operating threshold for a lesion box (issue 21).

A model trained with lesion-centred crops (`bcd train --roi-share`) reads a box drawn
around a lesion as well as the whole scan, but a lesion fills a box: the probabilities of
boxes run higher than those of whole scans, and read at the whole-scan threshold almost
every box is called malignant (benchmarks/studies/roi.py measured a specificity of 0.12
on BUS-BRA test lesions). So a box gets its own threshold, chosen like the model's (the
run's policy, e.g. best specificity at sensitivity >= 0.90) on the validation split's
lesion crops (train.roi_samples: clinician-like boxes cut from the full-resolution scan),
each classified through the runtime as `bcd predict --roi` classifies a box. It is
written to the export's manifest as threshold.roi; the runtime uses it for every
prediction with a box (runtime.classifier).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from export.datasets import lesion_crop_images, open_run
from runtime.classifier import Classifier
from runtime.manifest import write_roi_threshold
from train.metrics import ThresholdPolicy, binary_metrics, choose_threshold

log = logging.getLogger(__name__)


def fit_roi_threshold(export_dir: str | Path, run_dir: str | Path) -> dict | None:
    """Choose and record the lesion-box threshold of `export_dir` (made from `run_dir`);
    None (nothing written) for a run trained without lesion crops."""
    run = open_run(run_dir)
    crops = lesion_crop_images(run, "val")
    if crops is None or not 0 < int(crops.labels.sum()) < len(crops.labels):
        return None
    config = run.info.get("config") or {}
    policy = ThresholdPolicy(config.get("threshold_method", "sensitivity"), config.get("min_sensitivity", 0.90))
    with Classifier.load(export_dir) as clf:
        # the crops are already cut and resized: the region is the whole crop (region off)
        predictions = clf.predict(list(crops.images), region="off")
    bad = [p.error for p in predictions if not p.ok]
    if bad:
        raise ValueError(f"{len(bad)} lesion crop(s) could not be classified, e.g. {bad[0]}")
    p = np.array([pred.probability for pred in predictions])
    value = choose_threshold(crops.labels, p, policy)
    at = binary_metrics(crops.labels, p, value)
    record = {"value": float(value), "chosen_on": "validation split, lesion crops (clinician-like boxes)",
              "policy": policy.describe(), "n": int(len(p)), "malignant": int(crops.labels.sum()),
              "sensitivity": at["sensitivity"], "specificity": at["specificity"]}
    write_roi_threshold(export_dir, record)
    log.info("lesion-box threshold %.4f (%s) on %d validation lesion crops: sensitivity %.3f, specificity %.3f",
             value, record["policy"], len(p), at["sensitivity"], at["specificity"])
    return record
