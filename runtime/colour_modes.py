"""Colour Doppler, power Doppler and elastography overlays in the scan (issue 20).

STUB on branch scan-integrate so the wiring runs: it never finds an overlay. The
scan-finder branch implements the detector with this signature and replaces this file.
"""
from __future__ import annotations

import numpy as np

from runtime.scan_region import ScanRegion


def colour_overlay(image_bgr: np.ndarray, region: ScanRegion | None = None) -> str | None:
    """A reason ("colour Doppler overlay: give the B-mode image") when the scan region of
    `image_bgr` (the whole image without `region`) holds a colour overlay, else None."""
    return None


STUB = True     # tests run their colour expectations only once the real detector is here
