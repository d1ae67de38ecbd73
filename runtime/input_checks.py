"""Refuse decoded images that cannot be a breast ultrasound scan, before the model sees them.

A classifier answers for every input, so without this a 2x2 black PNG came back as
"malignant, probability 0.91". Three cheap checks run on the decoded HxWx3 uint8 image;
each failure is a short reason that ends up as an error row, exactly like an unreadable
file (bcd predict: ERROR row and exit status 1; demo: a message; evaluate: counted).

The limits, and why (figures from `python -m benchmarks.reliability.input_checks`, which measures
every image of BUSI (623) and BUS-BRA (1500); see docs/RELIABILITY.md):

- too small: the short side must be at least MIN_SIDE = 64 pixels. VGG16 itself needs
  only 32 (five 2x2 poolings), but the smallest real scan in both datasets is 240 px; a
  64 px image is already blown up 2x for the 128 px reference model (3.5x at 224), and
  below that there is no room for the speckle texture the model reads.
- near-constant: the standard deviation of the gray levels must be at least
  MIN_GRAY_STD = 4 (of 255). Real scans have 15.6 at the least (median 44); a blank
  screen, a black frame or a flat test pattern has ~0-2, JPEG noise included.
- strongly coloured: a B-mode scan is gray; the machines draw coloured calipers, text
  and colour-Doppler boxes on top of it, which cover a small part of the picture. A
  pixel counts as coloured when max(R,G,B) - min(R,G,B) >= COLOUR_CHROMA = 40; the image
  is refused when more than MAX_COLOUR_FRACTION = 0.20 of its pixels are. Real scans
  have at most 0.94 % coloured pixels; a photograph or a colour figure is far above.

These checks catch what is obviously not a scan. A plausible gray image that is still
not a breast ultrasound (a mammogram, a gray photograph) passes them; that is the job of
the out-of-distribution flag.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_SIDE = 64
MIN_GRAY_STD = 4.0
COLOUR_CHROMA = 40
MAX_COLOUR_FRACTION = 0.20
_SAMPLE_SIDE = 1024      # statistics of larger images are taken on a strided sample of about this size

REFUSED = "refused, not a usable ultrasound scan"


@dataclass(frozen=True)
class InputChecks:
    """The limits an image must meet to be classified (defaults: see the module text)."""

    min_side: int = MIN_SIDE
    min_gray_std: float = MIN_GRAY_STD
    colour_chroma: int = COLOUR_CHROMA
    max_colour_fraction: float = MAX_COLOUR_FRACTION

    def problem(self, image: np.ndarray) -> str | None:
        """None if `image` (HxWx3 uint8 BGR) may be classified, else why not, in words
        a user can act on: "refused, not a usable ultrasound scan: <reason>"."""
        reason = self._reason(image)
        return None if reason is None else f"{REFUSED}: {reason}"

    def _reason(self, image: np.ndarray) -> str | None:
        height, width = image.shape[:2]
        if min(height, width) < self.min_side:
            return (f"the image is only {width}x{height} pixels; a scan is at least {self.min_side} pixels "
                    "on its short side")
        stats = measure(image, self.colour_chroma)
        if stats.gray_std < self.min_gray_std:
            return (f"the image is (nearly) one flat colour (standard deviation of its gray levels "
                    f"{stats.gray_std:.1f}; a scan has at least {self.min_gray_std:g})")
        if stats.colour_fraction > self.max_colour_fraction:
            return (f"{stats.colour_fraction:.0%} of the image is strongly coloured; a B-mode scan is gray, "
                    f"with coloured overlays (Doppler box, calipers) on at most {self.max_colour_fraction:.0%} of it")
        return None


@dataclass(frozen=True)
class ImageStats:
    gray_std: float          # standard deviation of the gray levels, 0..255 scale
    colour_fraction: float   # share of pixels with max(B,G,R) - min(B,G,R) >= chroma


def measure(image: np.ndarray, chroma: int = COLOUR_CHROMA) -> ImageStats:
    """The statistics the checks use (also used to measure real datasets)."""
    # OpenCV on the 8-bit pixels: this runs on every image before the model, and the
    # NumPy form (int16 and float64 copies of the whole scan) took longer than inference
    sample = np.ascontiguousarray(_sample(image))
    b, g, r = cv2.split(sample)
    spread = cv2.subtract(cv2.max(cv2.max(b, g), r), cv2.min(cv2.min(b, g), r))
    # ITU-R BT.601 luma, the model's own grayscale view
    _, std = cv2.meanStdDev(cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY))
    return ImageStats(float(std[0, 0]), float(np.count_nonzero(spread >= chroma)) / spread.size)


def _sample(image: np.ndarray) -> np.ndarray:
    # A 64-megapixel image would need ~1 GB of temporaries; every k-th row and column
    # keeps the statistics (they are global averages) at a bounded cost.
    step = max(1, max(image.shape[:2]) // _SAMPLE_SIDE)
    return image[::step, ::step] if step > 1 else image


DEFAULT_CHECKS = InputChecks()
