"""Where the model looks: Grad-CAM maps against lesion masks.

Two figures per image with a lesion mask, both on the map brought to the mask's size
(runtime.gradcam.cam_to_image: normalised, bilinear):
- pointing game: does the map's maximum fall inside the lesion?
- mass inside: the share of the map's total mass that lies inside the lesion.
A map with no evidence at all (all zero) counts as a miss with mass 0. Light runtime
only (numpy, OpenCV), so an exported model is checked without TensorFlow.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from runtime.gradcam import cam_to_image


def cam_localisation(cam: np.ndarray, mask: np.ndarray) -> tuple[bool, float]:
    """(maximum inside the lesion, share of the map's mass inside) for one image."""
    inside = np.asarray(mask) > 0
    if not inside.any():
        raise ValueError("the lesion mask is empty")
    heat = cam_to_image(cam, inside.shape[0], inside.shape[1])
    total = float(heat.sum())
    if total <= 0.0:
        return False, 0.0
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(inside[peak]), float(heat[inside].sum() / total)


def localisation_summary(cams, masks, groups=None) -> dict:
    """Pooled and per-group (e.g. per source) figures over images with a non-empty mask:
    {"all": {"n", "pointing_game", "mass_inside"}, "<group>": {...}}; images whose mask
    is None or empty are left out."""
    per = defaultdict(list)
    for i, (cam, mask) in enumerate(zip(cams, masks)):
        if mask is None or not np.any(mask):
            continue
        result = cam_localisation(cam, mask)
        per["all"].append(result)
        if groups is not None:
            per[str(groups[i])].append(result)
    out = {}
    for key, results in per.items():
        hits, mass = zip(*results)
        out[key] = {"n": len(results), "pointing_game": float(np.mean(hits)), "mass_inside": float(np.mean(mass))}
    return out
