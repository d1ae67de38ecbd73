"""Where the ultrasound image is inside what a scanner exports (issue 20).

A clinic's file is often the whole scanner screen: black margins, patient and probe text,
a depth ruler, a logo, a colour bar around the B-mode image. The model was trained on the
B-mode image alone, so the runtime classifies the region found here, and every prediction
says which box it used. One definition serves training, INT8 calibration data, evaluation,
prediction and the demo; the manifest records the finder's settings so that a model and
its runtime agree.

What `find_scan_region` does (numpy + OpenCV only; a few ms on an 856x606 screen, see
benchmarks/frames.py):

1. Background. A screen has a background: the colour that fills at least
   `min_background_share` (half) of a band 4-8 px inside the picture's edges (black, a dark
   gray, a blue-gray; within `background_tolerance` levels). Without one, the picture
   reaches its edges: it is already a crop of the scan (BUSI, BUS-BRA, a tidy export)
   and the whole image is its region (source "found": the finder looked).
2. Content. Pixels that differ from the background or have speckle texture (a step of
   more than `texture_step` levels to the pixel two away), averaged onto a working copy
   whose long side is at most `work_side`, then a 5x5 majority: the dark, grainy parts of
   a scan stay solid and a straight edge keeps its place.
3. Drop what is thin. A morphological opening with a square of `min_feature` (a share of
   the long side, ~30 px on an 856 px screen) removes everything no such square fits in:
   text, depth-ruler ticks and lines, caliper marks, dotted lines, body-marker icons,
   arrows, narrow gray/colour bars.
4. Choose the scan. Of the solid pieces left (the scan, perhaps a wide bar, a logo
   block, a filled panel) the one holding the most texture is the scan; bars and panels
   are smooth. Pieces of the same scan cut off by a band of background-coloured tissue
   (a black shadow across it) are joined back.
5. Edges. An edge the piece fills along most of a line near its box (a linear probe's
   rectangle) is moved on the full-resolution pixels: inwards past lines that are mostly
   background, one flat colour, or (columns) far less textured than the scan (a text
   line, a ruler line with its ticks, a frame line the coarse box took in), then outwards
   by a few px while lines keep the scan's texture. Lines are judged along themselves
   only, so what lies outside the scan does not move its edge. A fan (an edge that is
   not straight) has all four edges taken at full resolution instead: the bounding box of
   the pixels brighter than a dark background (or differing from a light one) that are
   connected to the piece and lie within 2 `min_feature` of it, after a 3x3 opening that
   removes strokes and lines up to 2 px thin (text, a ruler touching the fan). The
   working copy's majority and opening round a sector's apex and a fan's tips off by an
   amount that depends on the scan's size on the screen; at full resolution the same
   fan is cut alike framed and plain (version 2 of the finder; version 1 rounded them).
6. Repeat inside the box (at most `passes` times) while it keeps shrinking: a black
   image pane inside a gray screen gives the pane first, then the scan inside it. A
   fan ends it: a pane is a rectangle, and the fan's edges are already exact.

Never fails: an image that is blank, tiny, not 8-bit (gray or BGR), or where nothing
scan-like is found, gives the whole image (source "whole"); a found box smaller than
`min_side` pixels or `min_area` of the image does too.

Where it fails (benchmarks/frames.py measures how often on synthetic screens):
- Anything solid touching the scan is taken as part of it: a filled panel or a wide bar
  flush against the scan, an image pane with no margin, large bold text within a few
  px of its edge (thin marks touching it are handled).
- Tissue exactly the background colour and smooth, reaching the scan's edge (a black
  band along the bottom, a dark fan tip on a black screen), cannot be told from the
  background and is cut on a screen; the plain scan keeps it (its border is not half
  one colour), so framed and plain boxes then differ by that band.
- A fan's dark tissue no brighter than a dark screen (a black tip, a dark apex) is
  outside the box, on the scan alone as on a screen; the darker the screen, the less is
  cut, so framed and plain boxes can then differ by that dark strip.
- Two scans side by side (dual mode) give the one with more texture, not both.
- A screen whose background is a gradient or a photograph has no background colour:
  the whole image is returned.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

REGION_SOURCES = ("found", "dicom", "given", "whole")


@dataclass(frozen=True)
class ScanRegion:
    """A box in the original image's pixels; `source` says where it came from."""

    x: int
    y: int
    width: int
    height: int
    source: str = "found"                                   # one of REGION_SOURCES
    mm_per_pixel: tuple[float, float] | None = None         # (x, y), where the file states it (DICOM)

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y:self.y + self.height, self.x:self.x + self.width]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mm_per_pixel"] = list(self.mm_per_pixel) if self.mm_per_pixel is not None else None
        return d


@dataclass(frozen=True)
class RegionConfig:
    """The finder's settings (recorded in manifest.json beside the preprocessing)."""

    mode: str = "auto"          # auto: find the scan; off: the whole image
    # 2 (2026-12-05): fans' edges at full resolution. Exports that record 1 run with it
    # too: the two differ on 3 of the 2123 development scans, by at most 5 px
    version: int = 2
    work_side: int = 480                 # long side of the working copy (integer downscale of larger images)
    background_tolerance: int = 2        # gray levels within which a pixel is the background colour
    min_background_share: float = 0.5    # share of the border band the background colour must fill
    min_feature: float = 0.035           # share of the long side: thinner things are not the scan
    texture_step: int = 3                # gray-level step between neighbours that counts as texture
    edge_texture: float = 0.3            # an edge row/column needs this share of the scan's median texture
    min_side: int = 64                   # px: a smaller box is not a scan (the whole image is used)
    min_area: float = 0.04               # share of the image a found box must cover at least
    passes: int = 3                      # repeat inside the box while it shrinks (a pane inside a screen)
    # coloured marks in the scan (calipers, measurement text): inpaint (runtime.overlay_marks)
    # or keep. A manifest or run.json without it is from before that step: keep.
    colour_marks: str = "inpaint"
    # white calipers ('+', 'x', their dotted line) in the scan: erase (runtime.caliper_marks)
    # or keep (the default: erasing found them on plain scans but missed a third of them on
    # the same scans resampled onto a screen, and screens changed more calls, not fewer:
    # docs/scanner-images.md). A manifest or run.json without it is from before it: keep.
    white_calipers: str = "keep"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def whole_image(image: np.ndarray) -> ScanRegion:
    return ScanRegion(0, 0, int(image.shape[1]), int(image.shape[0]), source="whole")


def find_scan_region(image_bgr: np.ndarray, config: RegionConfig = RegionConfig()) -> ScanRegion:
    """The box of the ultrasound image in an HxWx3 uint8 BGR image (see the module text).
    Never raises on odd pixels: the whole image is the answer when nothing is found."""
    if config.mode == "off" or not _usable(image_bgr):
        return whole_image(image_bgr) if getattr(image_bgr, "ndim", 0) >= 2 else ScanRegion(0, 0, 0, 0, "whole")
    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if image_bgr.ndim == 3 else image_bgr
    height, width = gray.shape
    x0, y0, x1, y1 = 0, 0, width, height
    found, background = False, None
    for _ in range(max(1, config.passes)):
        part = gray[y0:y1, x0:x1]
        box, used, fan = _find_in(part, config)
        if box == (0, 0, x1 - x0, y1 - y0) and background is not None and used == background:
            # no progress with the same colour: a pane of another colour inside the screen?
            box, used, fan = _find_in(part, config, exclude=background)
        background = used
        if box is None:
            break
        bx0, by0, bx1, by1 = box
        if (bx0, by0, bx1, by1) == (0, 0, x1 - x0, y1 - y0):
            found = True                     # nothing to trim here: the picture is the scan
            break
        x0, y0, x1, y1 = x0 + bx0, y0 + by0, x0 + bx1, y0 + by1
        found = True
        if fan:
            break          # a fan is the scan itself (a pane is a rectangle): nothing inside to find
    if not found:
        return whole_image(image_bgr)
    w, h = x1 - x0, y1 - y0
    if min(w, h) < config.min_side or w * h < config.min_area * width * height:
        return whole_image(image_bgr)
    return ScanRegion(int(x0), int(y0), int(w), int(h), source="found")


# ---------------------------------------------------------------------- one pass


def _usable(image: np.ndarray) -> bool:
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3)
            and (image.ndim == 2 or image.shape[2] == 3) and min(image.shape[:2]) >= 8)


def _find_in(gray: np.ndarray, config: RegionConfig, exclude: int | None = None):
    """((x0, y0, x1, y1) of the scan in `gray`, its own size when there is no background
    to trim, None when nothing scan-like is there; the background colour used; whether
    the scan is a fan, found to its edges). With `exclude`, that colour is not a
    background and another one must fill half the band (a black pane inside a gray screen)."""
    height, width = gray.shape
    if min(height, width) < config.min_side:
        return None, None, False
    background = _background(gray, config, exclude)
    if background is None:
        return (0, 0, width, height), None, False
    factor = max(1, -(-max(height, width) // config.work_side))          # ceil
    size = (max(1, width // factor), max(1, height // factor))
    differs = cv2.threshold(cv2.absdiff(gray, np.full_like(gray, background)), config.background_tolerance,
                            255, cv2.THRESH_BINARY)[1]
    textured = _texture(gray, config.texture_step)
    # area averages: the share of content / texture in each working pixel
    content = cv2.resize(cv2.max(differs, textured), size, interpolation=cv2.INTER_AREA)
    texture = cv2.resize(textured, size, interpolation=cv2.INTER_AREA)
    solid, k = _solid(content, config)
    piece = _textured_piece(solid, texture)
    if piece is None:
        return None, background, False
    mask, (cx, cy, cw, ch) = piece
    straight = _straight_edges(mask[cy:cy + ch, cx:cx + cw], k)
    box = (cx * factor, cy * factor, min(width, (cx + cw) * factor), min(height, (cy + ch) * factor))
    if all(straight):
        return _exact_edges(gray, box, background, factor + 2, 2 * k * factor, config), background, False
    # a fan: every edge at full resolution (its bottom arc can fill a working line, but
    # its full-resolution rows are mostly background)
    fan = _fan_edges(gray, background, config.background_tolerance, mask, (cx, cy, cw, ch), factor, k)
    return fan or box, background, True


def _background(gray: np.ndarray, config: RegionConfig, exclude: int | None = None) -> int | None:
    """The background colour, from a band 4 to 8 px inside the picture's edges (inside,
    not on the edge: a box from the previous pass may carry a few lines of what lies
    outside it): the colour filling `min_background_share` of the band, or else one
    colour filling 80 % of two of its sides (a black pane reaching the top and bottom of
    a screen with gray panels on its sides). None when there is none: the picture
    reaches its edges, a crop of the scan. With `exclude`, that colour is no background
    and another must fill half the band (a black pane inside a gray screen)."""
    a, b = 4, 8
    h, w = gray.shape
    sides = [gray[a:b, a:w - a], gray[h - b:h - a, a:w - a], gray[b:h - b, a:b], gray[b:h - b, w - b:w - a]]
    tol = config.background_tolerance
    share = config.min_background_share
    counts = [_near_counts(side, tol) for side in sides]
    total = np.sum(counts, axis=0)
    if exclude is not None:
        total[max(0, exclude - 2 * tol):exclude + 2 * tol + 1] = 0
        share = max(share, 0.5)
    size = sum(side.size for side in sides)
    level = int(np.argmax(total))
    if total[level] >= share * size:
        return level
    if exclude is not None:
        return None
    for c, side in zip(counts, sides):             # a colour filling two sides
        top = int(np.argmax(c))
        if c[top] >= 0.8 * side.size and sum(o[top] >= 0.8 * s.size for o, s in zip(counts, sides)) >= 2:
            return top
    return None


def _near_counts(values: np.ndarray, tol: int) -> np.ndarray:
    """For each gray level, how many of `values` lie within +-tol of it."""
    counts = np.bincount(values.ravel(), minlength=256).astype(np.int64)
    return np.convolve(counts, np.ones(2 * tol + 1, np.int64), mode="same")


def _texture(gray: np.ndarray, step: int) -> np.ndarray:
    """0/255 uint8: the pixel differs by more than `step` from the pixel two to its right
    or two below (two, not one: speckle blown up by the screen's resize is smooth)."""
    h, w = gray.shape
    out = np.zeros((h, w), np.uint8)
    if h > 2 and w > 2:
        dx = cv2.threshold(cv2.absdiff(gray[:, 2:], gray[:, :-2]), step, 255, cv2.THRESH_BINARY)[1]
        dy = cv2.threshold(cv2.absdiff(gray[2:], gray[:-2]), step, 255, cv2.THRESH_BINARY)[1]
        out[:, :-2] = dx
        out[:-2] = cv2.max(out[:-2], dy)
    return out


def _solid(content: np.ndarray, config: RegionConfig) -> tuple[np.ndarray, int]:
    """0/255 map at working resolution: where most of a 5x5 neighbourhood is content,
    with everything thinner than k = `min_feature` opened away; and k."""
    # a majority over 5x5: grainy dark tissue stays solid, a straight edge stays in place
    filled = cv2.threshold(cv2.blur(content, (5, 5)), 127, 255, cv2.THRESH_BINARY)[1]
    k = max(3, int(round(config.min_feature * max(content.shape))) | 1)
    return cv2.morphologyEx(filled, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))), k


def _fan_edges(gray: np.ndarray, background: int, tolerance: int, piece: np.ndarray, piece_box, factor: int, k: int):
    """A fan's box (x0, y0, x1, y1) at full resolution: the bounding box of the content
    connected to the piece, within what the working copy's majority and opening can have
    cut off around it (they round a sector's apex and a fan's tips off by an amount that
    depends on the scan's size on the screen). Strokes and lines up to 2 px thin (text,
    a ruler and its ticks touching the fan) are opened away first, so they do not join.
    None when the piece is too thin to hold an inside."""
    height, width = gray.shape
    r = 2 * k                    # working px the opening may have cut (more than k/2 at a sharp tip)
    px, py, pw, ph = piece_box
    wx0, wy0 = max(0, px - r), max(0, py - r)
    wx1, wy1 = min(piece.shape[1], px + pw + r), min(piece.shape[0], py + ph + r)
    x0, y0 = wx0 * factor, wy0 * factor
    x1, y1 = min(width, wx1 * factor), min(height, wy1 * factor)
    part = piece[wy0:wy1, wx0:wx1].astype(np.uint8) * 255

    def full(m: np.ndarray) -> np.ndarray:
        up = cv2.resize(m, ((wx1 - wx0) * factor, (wy1 - wy0) * factor), interpolation=cv2.INTER_NEAREST)
        return up[:y1 - y0, :x1 - x0]

    near = full(cv2.dilate(part, np.ones((2 * r + 1, 2 * r + 1), np.uint8)))
    # the piece a working pixel or two inside its edge (a working pixel half on the scan
    # counts as content): it joins the fan's parts, and the full-resolution content alone
    # decides the edges
    inner = full(cv2.erode(part, np.ones((5, 5), np.uint8)))
    window = gray[y0:y1, x0:x1]
    if background < 128:
        # dark tissue counts only where it is brighter than a dark screen: on a black
        # screen it cannot be told from the background, and framed and plain must be cut alike
        content = cv2.threshold(window, min(254, background + tolerance), 255, cv2.THRESH_BINARY)[1]
    else:
        content = cv2.threshold(cv2.absdiff(window, np.full_like(window, background)), tolerance, 255,
                                cv2.THRESH_BINARY)[1]
    strokes_gone = cv2.morphologyEx(content, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.max(cv2.bitwise_and(strokes_gone, near), inner),
                                                           connectivity=8)
    ids = np.flatnonzero(np.bincount(labels[inner > 0], minlength=2)[1:]) + 1      # the pieces inside
    if ids.size == 0:
        return None
    left, top = stats[ids, cv2.CC_STAT_LEFT], stats[ids, cv2.CC_STAT_TOP]
    right, bottom = left + stats[ids, cv2.CC_STAT_WIDTH], top + stats[ids, cv2.CC_STAT_HEIGHT]
    return x0 + int(left.min()), y0 + int(top.min()), x0 + int(right.max()), y0 + int(bottom.max())


def _textured_piece(solid: np.ndarray, texture: np.ndarray):
    """(mask of the scan's pieces, bounding box x, y, w, h): the solid piece holding the
    most texture, joined by the pieces of the same scan that a band of background-coloured
    tissue (a black shadow across the image) cut off from it. None when nothing is solid."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    if n <= 1:
        return None
    area = stats[:, cv2.CC_STAT_AREA]
    candidates = [int(k) for k in np.argsort(-area[1:])[:8] + 1]      # the largest few pieces
    texture_sum, boxes = {}, {}
    for k in candidates:
        x, y, w, h = (int(v) for v in stats[k, :4])
        boxes[k] = (x, y, x + w, y + h)
        inside = (labels[y:y + h, x:x + w] == k)
        texture_sum[k] = float(texture[y:y + h, x:x + w][inside].sum())
    best = max(candidates, key=lambda k: (texture_sum[k], area[k]))
    density = {k: texture_sum[k] / max(1, int(area[k])) for k in candidates}
    chosen = [best]
    x0, y0, x1, y1 = boxes[best]
    for k in sorted(candidates, key=lambda k: -texture_sum[k]):
        if k == best:
            continue
        kx0, ky0, kx1, ky1 = boxes[k]
        same_columns = kx0 >= x0 - 2 and kx1 <= x1 + 2 and kx1 - kx0 >= 0.5 * (x1 - x0)
        near = max(ky0 - y1, y0 - ky1) < 0.5 * (y1 - y0)
        if same_columns and near and density[k] >= 0.15 * density[best]:
            chosen.append(k)
            y0, y1 = min(y0, ky0), max(y1, ky1)
    part = labels[y0:y1, x0:x1]
    mask = np.zeros(labels.shape, bool)
    mask[y0:y1, x0:x1] = (part == chosen[0]) if len(chosen) == 1 else np.isin(part, chosen)
    return mask, (x0, y0, x1 - x0, y1 - y0)


def _straight_edges(piece: np.ndarray, depth: int) -> tuple[bool, bool, bool, bool]:
    """Whether the piece fills most of one of the `depth` outermost lines on its box's
    left, top, right and bottom: a rectangle's edges (refined at full resolution, where a
    text line taken in with them is trimmed), not a fan's tip or arc. A piece with any
    edge not straight is a fan, whose four edges `_fan_edges` finds."""
    n = max(1, min(depth, piece.shape[0] // 4, piece.shape[1] // 4))
    cols = piece[:, :n].mean(axis=0), piece[:n].mean(axis=1), piece[:, -n:].mean(axis=0), piece[-n:].mean(axis=1)
    return tuple(bool(c.max() > 0.9) for c in cols)


# ---------------------------------------------------------------------- exact edges


def _exact_edges(gray: np.ndarray, box: tuple[int, int, int, int], background: int, reach: int, trim: int,
                 config: RegionConfig) -> tuple[int, int, int, int]:
    """Move each edge of a rectangle's coarse box to the outermost line that belongs to the
    scan, judged along that line only: inwards past lines that are background or one flat
    colour (a frame line, a strip of ruler ticks that the coarse box took in; at most
    `trim` px), then outwards while lines keep the scan's texture (at most `reach` px)."""
    x0, y0, x1, y1 = box
    # left/right: each column over the box's rows; then top/bottom: each row over its columns
    x0, x1 = _snap(_line_stats(gray[y0:y1], background, 0, config), x0, x1, reach, trim, config, True)
    y0, y1 = _snap(_line_stats(gray[:, x0:x1], background, 1, config), y0, y1, reach, trim, config, False)
    return x0, y0, x1, y1


def _line_stats(part: np.ndarray, background: int, axis: int, config: RegionConfig):
    """Per line along `axis` (0: columns, 1: rows): the share of steps to the next pixel
    larger than `texture_step`, the share of background-coloured pixels, the spread."""
    steps = cv2.absdiff(part[1:], part[:-1]) if axis == 0 else cv2.absdiff(part[:, 1:], part[:, :-1])
    texture = _mean(cv2.threshold(steps, config.texture_step, 1, cv2.THRESH_BINARY)[1], axis)
    near = cv2.absdiff(part, np.full_like(part, background))
    # a looser tolerance than for content: JPEG rings around text on the background
    background_share = _mean(cv2.threshold(near, config.background_tolerance + 4, 1, cv2.THRESH_BINARY_INV)[1], axis)
    mean = _mean(part, axis)
    spread = np.sqrt(np.maximum(_mean(cv2.multiply(part, part, dtype=cv2.CV_32F), axis) - mean * mean, 0))
    return texture, background_share, spread


def _mean(values: np.ndarray, axis: int) -> np.ndarray:
    return cv2.reduce(values, axis, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()


def _snap(stats, start: int, stop: int, reach: int, trim: int, config: RegionConfig,
          columns: bool) -> tuple[int, int]:
    """New [start, stop) along one axis: see `_exact_edges`."""
    texture, background_share, spread = stats
    inside = texture[start:stop]
    if inside.size < 4 * max(reach, trim, 1):
        return start, stop
    enough = texture >= config.edge_texture * float(np.median(inside))
    # not the scan: mostly background (gaps, sparse ticks, text), one flat colour (a line)
    # or, for columns, far less texture than the scan has (a ruler line crossed by its
    # ticks; rows are not judged so: the deep rows of many scans are dark and smooth)
    foreign = (background_share >= 0.7) | (spread < 2.0)
    if columns:
        foreign |= ~enough
    lo, hi = start, stop
    while lo < start + trim and foreign[lo]:
        lo += 1
    while hi > stop - trim and foreign[hi - 1]:
        hi -= 1
    if lo == start:
        lo = start + reach if enough[start + reach] else start
        while lo > max(0, start - reach) and enough[lo - 1]:
            lo -= 1
    if hi == stop:
        hi = stop - reach if enough[stop - reach - 1] else stop
        while hi < min(texture.size, stop + reach) and enough[hi]:
            hi += 1
    return lo, hi
