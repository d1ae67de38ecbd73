"""Synthetic scanner screens and scanner marks around and on a real scan (issue 20).

The public datasets are tidy crops of the B-mode image; what a clinic exports is the
whole scanner screen. `make_screen(scan, rng)` places a scan on such a screen and returns
the picture and the box where the scan lies, drawing everything a real screen varies:
canvas size and aspect, scan size and position, a black or dark-gray background (or a
black image pane on a coloured screen), text panels on any side (patient, probe,
date, acoustic output), a depth ruler with ticks and numbers close beside the scan, a
focus marker, a gray bar and a colour bar, a logo block, a body-marker icon, a thin
frame line, a linear (rectangle) or curved/sector (fan-shaped) image, and JPEG or PNG
encoding. `draw_calipers(scan, rng, mask)` draws what a sonographer leaves on the scan:
'+' and 'x' calipers on the lesion's edges, dotted measurement lines, small numbers,
arrows and measurement text ("D1 1.23 cm") in white, yellow or green.
`screen_dicom(screen)` writes the screen as an ultrasound DICOM file with a Sequence of
Ultrasound Regions (0018,6011) naming the scan's box (and the gray bar's, when there is
one) with its physical size.

Every choice comes from the caller's `numpy.random.Generator`, so a seed gives the same
screen. Screens are for measuring (benchmarks/frames.py, tests), never for training data
that is evaluated on the same generator.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from train.augment import fan_mask  # noqa: F401 - the probe fan, one definition for training and the screens

WHITE, YELLOW, GREEN, CYAN = (255, 255, 255), (0, 255, 255), (0, 230, 0), (255, 230, 120)
MARK_COLOURS = (WHITE, YELLOW, GREEN)
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX)
CANVAS_WIDTHS = (640, 800, 856, 1024, 1280)
ASPECTS = (4 / 3, 856 / 606, 16 / 10, 16 / 9, 5 / 4)
PROBES = ("linear", "curved", "sector")
SIDES = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Layout:
    """Every choice that makes one screen (see `random_layout`)."""

    canvas: tuple[int, int] = (856, 606)            # width, height
    scan_height: float = 0.7                        # scan height / canvas height
    position: float = 0.5                           # 0 = leftmost free place, 1 = rightmost
    vertical: float = 0.5                           # 0 = top, 1 = bottom of the free place
    background: tuple[int, int, int] = (0, 0, 0)    # BGR
    pane: tuple[int, int, int] | None = None        # a black image pane inside a screen of `background`
    probe: str = "linear"                           # linear | curved | sector
    apex: float = 0.8                               # fan apex above the image, share of its height
    panels: tuple[str, ...] = ("left",)             # sides with text panels
    ruler: str | None = "right"                     # side of the depth ruler
    ruler_gap: int = 3                              # px between the scan and the ruler
    focus_marker: bool = True
    gray_bar: bool = True
    colour_bar: bool = False
    logo: bool = True
    body_marker: bool = True
    frame_line: bool = False
    text_colour: tuple[int, int, int] = WHITE
    jpeg_quality: int | None = None                 # None: PNG (lossless)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Screen:
    image: np.ndarray                               # HxWx3 uint8 BGR, the whole screen
    box: tuple[int, int, int, int]                  # x, y, width, height of the scan on it
    layout: Layout
    regions: list[dict] = field(default_factory=list)   # other boxes (gray bar ...), for DICOM

    @property
    def scan(self) -> np.ndarray:
        x, y, w, h = self.box
        return self.image[y:y + h, x:x + w]


# ------------------------------------------------------------------------ a stand-in scan


def synthetic_scan(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(BGR image, bool lesion mask): speckle-like tissue (multiplicative noise, smoothed,
    brighter layers near the probe, darker with depth) with a dark oval lesion, for tests
    and examples where no real scan is at hand."""
    noise = rng.gamma(1.5, 1.0, (height, width)).astype(np.float32)
    speckle = cv2.GaussianBlur(noise, (0, 0), 1.0)
    depth = np.linspace(1.2, 0.45, height, dtype=np.float32)[:, None]
    layers = 1 + 0.35 * np.sin(np.linspace(0, 9, height, dtype=np.float32))[:, None]
    tissue = speckle * depth * layers
    mask = np.zeros((height, width), np.uint8)
    centre = (int(width * rng.uniform(0.35, 0.65)), int(height * rng.uniform(0.3, 0.6)))
    axes = (int(width * rng.uniform(0.08, 0.16)), int(height * rng.uniform(0.06, 0.12)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-20, 20)), 0, 360, 1, -1)
    tissue = np.where(mask > 0, tissue * 0.25, tissue)
    gray = np.clip(tissue * 70 + 10, 0, 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), mask > 0


# ------------------------------------------------------------------------ layouts


def random_layout(rng: np.random.Generator, **fixed) -> Layout:
    """A layout with every choice drawn from `rng`; keyword arguments fix some."""
    width = int(rng.choice(CANVAS_WIDTHS))
    height = int(round(width / float(rng.choice(ASPECTS))))
    dark = int(rng.integers(10, 46))
    backgrounds = [(0, 0, 0), (dark, dark, dark), (dark + 12, dark + 4, dark)]   # black, gray, blue-gray
    background = backgrounds[int(rng.integers(0, 3))] if rng.random() < 0.6 else (0, 0, 0)
    pane = (0, 0, 0) if background != (0, 0, 0) and rng.random() < 0.4 else None
    panels = tuple(s for s in SIDES if rng.random() < (0.6 if s in ("left", "top") else 0.35))
    layout = Layout(
        canvas=(width, height),
        scan_height=float(rng.uniform(0.5, 0.85)),
        position=float(rng.uniform(0, 1)),
        vertical=float(rng.uniform(0, 1)),
        background=background,
        pane=pane,
        probe=str(rng.choice(PROBES, p=[0.5, 0.3, 0.2])),
        apex=float(rng.uniform(0.4, 1.4)),
        panels=panels,
        ruler=(None if rng.random() < 0.15 else str(rng.choice(["left", "right"]))),
        ruler_gap=int(rng.integers(0, 7)),
        focus_marker=bool(rng.random() < 0.6),
        gray_bar=bool(rng.random() < 0.6),
        colour_bar=bool(rng.random() < 0.25),
        logo=bool(rng.random() < 0.6),
        body_marker=bool(rng.random() < 0.6),
        frame_line=bool(rng.random() < 0.2),
        text_colour=[WHITE, (200, 200, 200), CYAN, YELLOW][int(rng.integers(0, 4))],
        jpeg_quality=(int(rng.integers(80, 96)) if rng.random() < 0.4 else None),
    )
    return replace(layout, **fixed)


# ------------------------------------------------------------------------ the screen


def make_screen(scan: np.ndarray, rng: np.random.Generator, layout: Layout | None = None) -> Screen:
    """`scan` (HxWx3 uint8 BGR) placed on a synthetic scanner screen. The box is where the
    scan lies (for curved and sector probes: the box around the fan)."""
    layout = layout or random_layout(rng)
    cw, ch = layout.canvas
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[:] = layout.background
    sw, sh = _scan_size(scan, layout)
    placed = cv2.resize(scan, (sw, sh), interpolation=cv2.INTER_AREA if sh < scan.shape[0] else cv2.INTER_LINEAR)
    x, y = _scan_place(layout, sw, sh)
    inner = (0, 0, 0) if layout.pane is not None else layout.background
    keep_out = (x, y, sw, sh)                        # where the logo must not go
    if layout.pane is not None:
        # a black image pane holding the scan with its ruler, bars and body marker, as
        # scanners draw it; text panels may fall inside or outside it
        side_pad, end_pad = int(110 * max(ch / 1000, 0.6)), 70
        pad = int(rng.integers(12, 40))
        px0, py0 = max(0, x - side_pad - pad), max(0, y - end_pad - pad)
        px1, py1 = min(cw, x + sw + side_pad + pad), min(ch, y + sh + end_pad + pad)
        cv2.rectangle(canvas, (px0, py0), (px1 - 1, py1 - 1), layout.pane, -1)
        keep_out = (px0, py0, px1 - px0, py1 - py0)
    if layout.probe != "linear":
        fan = fan_mask(sh, sw, layout.probe, layout.apex)
        placed = placed.copy()
        placed[fan == 0] = inner
    canvas[y:y + sh, x:x + sw] = placed
    box = (x, y, sw, sh)
    regions: list[dict] = []
    scale = max(0.35, ch / 1000)
    side = "right" if layout.ruler == "left" else "left"
    if layout.ruler:
        _ruler(canvas, box, layout.ruler, layout.ruler_gap, layout.text_colour, scale, rng, layout.focus_marker)
    if layout.gray_bar:
        regions.append(_bar(canvas, box, side, scale, rng, colour=False))
    if layout.colour_bar:
        regions.append(_bar(canvas, box, side, scale, rng, colour=True, below=layout.gray_bar))
    for panel in layout.panels:
        _text_panel(canvas, box, panel, layout.text_colour, scale, rng)
    if layout.logo:
        _logo(canvas, keep_out, scale, rng)
    if layout.body_marker:
        _body_marker(canvas, box, scale, rng)
    if layout.frame_line:
        gap = int(rng.integers(2, 5))
        cv2.rectangle(canvas, (x - gap, y - gap), (x + sw + gap - 1, y + sh + gap - 1), (120, 120, 120), 1)
    if layout.jpeg_quality is not None:
        ok, data = cv2.imencode(".jpg", canvas, (cv2.IMWRITE_JPEG_QUALITY, layout.jpeg_quality))
        canvas = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return Screen(canvas, box, layout, [r for r in regions if r])


def _scan_size(scan: np.ndarray, layout: Layout) -> tuple[int, int]:
    cw, ch = layout.canvas
    h, w = scan.shape[:2]
    sh = int(round(layout.scan_height * ch))
    sw = int(round(sh * w / h))
    if sw > 0.62 * cw:                               # leave room for panels beside a wide scan
        sw = int(0.62 * cw)
        sh = int(round(sw * h / w))
    return max(32, sw), max(32, sh)


def _scan_place(layout: Layout, sw: int, sh: int) -> tuple[int, int]:
    """Top-left corner: inside the room the panels leave, at the layout's position."""
    cw, ch = layout.canvas
    left = int(0.2 * cw) if "left" in layout.panels else int(0.06 * cw)
    right = cw - (int(0.2 * cw) if "right" in layout.panels else int(0.06 * cw))
    top = int(0.1 * ch) if "top" in layout.panels else int(0.05 * ch)
    bottom = ch - (int(0.1 * ch) if "bottom" in layout.panels else int(0.05 * ch))
    free_x, free_y = max(0, right - left - sw), max(0, bottom - top - sh)
    x = left + int(layout.position * free_x) if right - left >= sw else (cw - sw) // 2
    y = top + int(layout.vertical * free_y) if bottom - top >= sh else (ch - sh) // 2
    return max(0, min(x, cw - sw)), max(0, min(y, ch - sh))


def plain_scan(scan: np.ndarray, layout: Layout) -> np.ndarray:
    """The scan as the layout's probe shows it, without the screen: a curved or sector
    probe's fan on black (the scan itself for a linear probe). The reference a framed
    scan is compared with."""
    if layout.probe == "linear":
        return scan
    out = scan.copy()
    out[fan_mask(scan.shape[0], scan.shape[1], layout.probe, layout.apex) == 0] = 0
    return out


def _text(canvas, text, org, colour, scale, thickness=1, font=cv2.FONT_HERSHEY_SIMPLEX):
    cv2.putText(canvas, text, (int(org[0]), int(org[1])), font, scale, colour, thickness, cv2.LINE_AA)


def _ruler(canvas, box, side, gap, colour, scale, rng, focus):
    """A depth scale: a line beside the scan, a tick every cm (smaller ones between),
    the depth numbers, and a focus marker."""
    x, y, w, h = box
    depth_cm = int(rng.integers(3, 7))
    step = h / depth_cm
    lx = x - gap - 1 if side == "left" else x + w + gap
    direction = -1 if side == "left" else 1
    if rng.random() < 0.5:
        cv2.line(canvas, (lx, y), (lx, y + h - 1), colour, 1)
    for k in range(depth_cm * 2 + 1):
        ty = int(round(y + k * step / 2))
        if ty >= y + h:
            break
        length = int(8 * scale + 4) if k % 2 == 0 else int(4 * scale + 2)
        cv2.line(canvas, (lx, ty), (lx + direction * length, ty), colour, 1 + (k % 2 == 0 and rng.random() < 0.3))
        if k % 2 == 0 and k > 0:
            label = str(k // 2)
            tx = lx + direction * (length + 4) - (int(12 * scale) if side == "left" else 0)
            _text(canvas, label, (tx, ty + 5), colour, 0.45 * scale + 0.1)
    if focus:
        fy = int(y + rng.uniform(0.2, 0.7) * h)
        fx = lx + direction * int(14 * scale + 8)
        pts = np.array([[fx, fy], [fx + direction * 8, fy - 5], [fx + direction * 8, fy + 5]], np.int32)
        cv2.fillPoly(canvas, [pts], YELLOW)


def _bar(canvas, box, side, scale, rng, colour: bool, below: bool = False) -> dict | None:
    """A vertical gray (or colour) bar with a gap of at least 10 px from the scan."""
    x, y, w, h = box
    ch, cw = canvas.shape[:2]
    bw = int(rng.integers(8, 22))
    bh = int(h * rng.uniform(0.3, 0.55))
    gap = int(rng.integers(40, 70) * max(scale, 0.6))
    bx = x - gap - bw if side == "left" else x + w + gap
    by = y + (h // 2 + 10 if below else int(h * 0.05))
    if bx < 0 or bx + bw > cw or by + bh > ch:
        return None
    ramp = np.linspace(255, 0, bh, dtype=np.float32).astype(np.uint8)[:, None]
    ramp = np.repeat(ramp, bw, axis=1)
    block = (cv2.applyColorMap(ramp, int(rng.choice([cv2.COLORMAP_JET, cv2.COLORMAP_HOT, cv2.COLORMAP_AUTUMN])))
             if colour else cv2.cvtColor(ramp, cv2.COLOR_GRAY2BGR))
    canvas[by:by + bh, bx:bx + bw] = block
    return {"kind": "colour bar" if colour else "gray bar", "box": (bx, by, bw, bh)}


PANEL_LINES = ("ACME SONO 5000", "L12-5 38mm", "Breast", "MI 1.1  TIS 0.4", "Gn 52  DR 60", "FR 25Hz",
               "2024-03-01 10:22:31", "PATIENT ID 0012345", "C5-1", "Frq 12.0MHz", "D 4.0cm", "B", "Res")


def _text_panel(canvas, box, side, colour, scale, rng):
    """A few lines of scanner text on one side of the scan, at least 12 px from it."""
    x, y, w, h = box
    ch, cw = canvas.shape[:2]
    n = int(rng.integers(2, 7))
    size = float(rng.uniform(0.35, 0.6)) * scale * 1.6
    font = FONTS[int(rng.integers(0, len(FONTS)))]
    line_h = int(28 * size) + 4
    lines = [str(rng.choice(PANEL_LINES)) for _ in range(n)]
    if side in ("left", "right"):
        # right of the scan: beyond the ruler and the bars
        x0 = int(rng.integers(4, 12)) if side == "left" else x + w + int(100 * max(scale, 0.6)) + int(rng.integers(0, 30))
        limit = x - 12 if side == "left" else cw
        y0 = y + int(rng.integers(10, 40))
        for i, line in enumerate(lines):
            line = _fit(line, limit - x0, size, font)
            _text(canvas, line, (x0, y0 + i * line_h), colour, size, 1, font)
    else:
        x0 = x + int(rng.integers(0, max(1, w // 3)))
        rows = min(n, 2)
        base = y - 12 - (rows - 1) * line_h if side == "top" else y + h + 12 + line_h - 6
        for i in range(rows):
            _text(canvas, "   ".join(lines[i * 2:i * 2 + 2]), (x0, base + i * line_h), colour, size, 1, font)


def _fit(line: str, room: int, size: float, font) -> str:
    while line and cv2.getTextSize(line, font, size, 1)[0][0] > room:
        line = line[:-1]
    return line


def _logo(canvas, box, scale, rng):
    """A logo block in a corner of the screen, clear of `box` (the scan, or the image
    pane): a filled box with the maker's name."""
    ch, cw = canvas.shape[:2]
    x, y, w, h = box
    lw, lh = int(110 * scale + 30), int(34 * scale + 12)
    corners = [(6, 6), (cw - lw - 6, 6), (6, ch - lh - 6), (cw - lw - 6, ch - lh - 6)]
    free = [c for c in corners if not _touches((c[0], c[1], lw, lh), box, 10)]
    if not free:
        return
    lx, ly = free[int(rng.integers(0, len(free)))]
    colour = tuple(int(v) for v in rng.integers(40, 200, 3))
    cv2.rectangle(canvas, (lx, ly), (lx + lw, ly + lh), colour, -1)
    _text(canvas, "ACME", (lx + 8, ly + lh - 10), WHITE, 0.8 * scale + 0.2, 2)


def _body_marker(canvas, box, scale, rng):
    """A breast body-marker icon (circle, nipple, probe bar) below or beside the scan."""
    x, y, w, h = box
    ch, cw = canvas.shape[:2]
    r = int(20 * scale + 8)
    options = [(x + w + r + 16, y + h - r), (x - r - 16, y + h - r), (x + w // 2, y + h + r + 14)]
    options = [(cx, cy) for cx, cy in options if r < cx < cw - r and r < cy < ch - r]
    if not options:
        return
    cx, cy = options[int(rng.integers(0, len(options)))]
    colour = (200, 200, 200)
    cv2.circle(canvas, (cx, cy), r, colour, 1, cv2.LINE_AA)
    cv2.circle(canvas, (cx, cy), max(2, r // 6), colour, -1, cv2.LINE_AA)
    a = rng.uniform(0, math.pi)
    px, py = int(cx + 0.6 * r * math.cos(a)), int(cy + 0.6 * r * math.sin(a))
    dx, dy = int(0.4 * r * math.sin(a)), int(-0.4 * r * math.cos(a))
    cv2.line(canvas, (px - dx, py - dy), (px + dx, py + dy), YELLOW, 3)


def _touches(a, b, margin):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return not (ax + aw + margin <= bx or bx + bw + margin <= ax or ay + ah + margin <= by or by + bh + margin <= ay)


# ------------------------------------------------------------------------ marks on the scan


def draw_calipers(scan: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
    """A copy of `scan` with a sonographer's marks: one or two measurements (calipers
    '+' or 'x' at both ends, a dotted line between, a number beside each), a measurement
    text ("D1 1.23 cm") in a corner, sometimes an arrow. With a lesion mask the calipers
    sit on the lesion's edges (width, then depth), as when a lesion is measured."""
    out = scan.copy()
    h, w = out.shape[:2]
    unit = max(h, w) / 400                                  # marks scale with the picture
    colour = MARK_COLOURS[int(rng.integers(0, len(MARK_COLOURS)))]
    marker = cv2.MARKER_CROSS if rng.random() < 0.6 else cv2.MARKER_TILTED_CROSS
    size = max(5, int(round(rng.uniform(8, 14) * unit)))
    thickness = 1 if unit < 1.5 or rng.random() < 0.6 else 2
    pairs = _measurements(h, w, rng, mask)[:int(rng.integers(1, 3))]
    labels = []
    for k, (a, b) in enumerate(pairs, start=1):
        for p in (a, b):
            cv2.drawMarker(out, p, colour, marker, size, thickness, cv2.LINE_AA)
        _dotted(out, a, b, colour, max(3, int(5 * unit)))
        _text(out, str(k), (b[0] + size // 2 + 2, b[1] + size // 2 + 2), colour, 0.35 * unit + 0.1)
        length_cm = math.dist(a, b) / w * rng.uniform(3.5, 5.0)
        labels.append(f"D{k} {length_cm:.2f} cm")
    corner = int(rng.integers(0, 2))
    for i, label in enumerate(labels):
        tx = int(6 * unit) if corner == 0 else int(w * 0.58)
        ty = int(h - (len(labels) - i) * 18 * unit) if corner == 0 else int((i + 1) * 18 * unit + 4)
        _text(out, label, (tx, ty), colour, 0.45 * unit + 0.1)
    if rng.random() < 0.4:                                 # an arrow pointing at the lesion
        tip = pairs[0][0]
        tail = (int(np.clip(tip[0] - 30 * unit, 0, w - 1)), int(np.clip(tip[1] - 30 * unit, 0, h - 1)))
        cv2.arrowedLine(out, tail, tip, colour, thickness, cv2.LINE_AA, tipLength=0.3)
    return out


def _measurements(h, w, rng, mask) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(end, end) pairs: the lesion's width and depth through its centre, or two random
    segments in the middle of the picture without a mask."""
    if mask is not None and mask.shape[:2] == (h, w) and np.count_nonzero(mask) >= 20:
        ys, xs = np.nonzero(mask)
        cy, cx = int(np.median(ys)), int(np.median(xs))
        row, col = np.nonzero(mask[cy])[0], np.nonzero(mask[:, cx])[0]
        if row.size and col.size:
            return [((int(row.min()), cy), (int(row.max()), cy)), ((cx, int(col.min())), (cx, int(col.max())))]
    out = []
    for _ in range(2):
        a = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h))
        b = (int(np.clip(a[0] + rng.uniform(-0.3, 0.3) * w, 0, w - 1)),
             int(np.clip(a[1] + rng.uniform(-0.3, 0.3) * h, 0, h - 1)))
        out.append((a, b))
    return out


def _dotted(image, a, b, colour, spacing):
    n = max(2, int(math.dist(a, b) / spacing))
    for t in np.linspace(0, 1, n + 1)[1:-1]:
        p = (int(round(a[0] + t * (b[0] - a[0]))), int(round(a[1] + t * (b[1] - a[1]))))
        cv2.circle(image, p, 1, colour, -1)


# ------------------------------------------------------------------------ DICOM


def screen_dicom(screen: Screen, mm_per_pixel: tuple[float, float] = (0.1, 0.1), frames: int = 1) -> bytes | None:
    """The screen as an ultrasound DICOM file (RGB) with a Sequence of Ultrasound Regions:
    the scan's box as a tissue region (RegionDataType 1) with its physical deltas in cm,
    and each gray/colour bar of the screen as a gray-bar (0x0D) / colour-bar (0x0E)
    region, listed first so a reader must pick the tissue region by type. `frames` > 1
    repeats the screen as a cine loop (each frame a little brighter). None without
    pydicom."""
    try:
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence
    except ImportError:
        return None
    from benchmarks.reliability.fuzz import dicom

    items = []
    for region in screen.regions:
        kind = 0x0E if region["kind"] == "colour bar" else 0x0D
        items.append(_region_item(Dataset(), region["box"], kind, None))
    items.append(_region_item(Dataset(), screen.box, 0x01, mm_per_pixel))
    rgb = np.ascontiguousarray(screen.image[..., ::-1])
    if frames > 1:
        rgb = np.stack([np.clip(rgb.astype(np.int16) + k, 0, 255).astype(np.uint8) for k in range(frames)])
    extra: dict[str, Any] = {"SequenceOfUltrasoundRegions": Sequence(items)}
    if frames > 1:
        extra["NumberOfFrames"] = frames
    return dicom(rgb, "RGB", **extra)


def _region_item(item, box, data_type: int, mm_per_pixel):
    x, y, w, h = (int(v) for v in box)
    item.RegionSpatialFormat = 1 if data_type == 0x01 else 0        # 1: 2D tissue image; 0: none
    item.RegionDataType = data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x, y
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x + w - 1, y + h - 1   # inclusive
    if mm_per_pixel is not None:
        item.PhysicalUnitsXDirection = 3                             # cm
        item.PhysicalUnitsYDirection = 3
        item.PhysicalDeltaX = float(mm_per_pixel[0]) / 10
        item.PhysicalDeltaY = float(mm_per_pixel[1]) / 10
    else:
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 0
        item.PhysicalDeltaX = item.PhysicalDeltaY = 0.0
    return item


# ------------------------------------------------------------------------ colour modes

OVERLAYS = ("colour Doppler", "power Doppler", "elastography")


def add_overlay(scan: np.ndarray, rng: np.random.Generator, kind: str, size: float) -> np.ndarray:
    """A copy of `scan` with a colour overlay in a box covering `size` of its area, as a
    scanner draws it: colour Doppler (red and blue flow blobs, bright at their centre),
    power Doppler (orange-to-yellow blobs) or elastography (the whole box tinted with a
    smooth rainbow stiffness map, about 60 % opaque). The box's outline is drawn in gray."""
    if kind not in OVERLAYS:
        raise ValueError(f"unknown overlay {kind!r}; choose from {', '.join(OVERLAYS)}")
    out = scan.copy()
    h, w = out.shape[:2]
    bw = int(np.clip(round(math.sqrt(size * h * w) * rng.uniform(0.8, 1.25)), 8, w))
    bh = int(np.clip(round(size * h * w / bw), 8, h))
    x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    box = out[y:y + bh, x:x + bw]
    if kind == "elastography":
        field_ = cv2.GaussianBlur(rng.random((bh, bw)).astype(np.float32), (0, 0), max(2.0, min(bh, bw) / 6))
        field_ = cv2.normalize(field_, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        colours = cv2.applyColorMap(field_, cv2.COLORMAP_JET)
        box[:] = cv2.addWeighted(box, 0.4, colours, 0.6, 0)
    else:
        flow = np.zeros((bh, bw), np.float32)
        n = int(rng.integers(2, 6))
        for v in range(n):                              # vessels: thick curved strokes
            points = np.cumsum(rng.normal(0, min(bh, bw) / 5, (5, 2)), axis=0) + (rng.uniform(0, bw), rng.uniform(0, bh))
            points = np.clip(points, 0, (bw - 1, bh - 1)).astype(np.int32)
            sign = 1.0 if kind == "power Doppler" or v % 2 == 0 else -1.0   # flow towards and away
            width = max(2, int(min(bh, bw) * rng.uniform(0.06, 0.16)))
            cv2.polylines(flow, [points], False, sign, width, cv2.LINE_AA)
        flow = cv2.GaussianBlur(flow, (0, 0), 1.2)
        strength = np.clip(np.abs(flow), 0, 1)
        on = strength > 0.25
        ramp = np.zeros((bh, bw, 3), np.uint8)
        if kind == "power Doppler":                     # dark orange-red to amber, yellow at the brightest
            ramp[..., 2] = (150 + 105 * strength).astype(np.uint8)
            ramp[..., 1] = (30 + 170 * strength ** 2).astype(np.uint8)
            ramp[..., 0] = (20 * strength).astype(np.uint8)
        else:                                           # red to yellow towards, blue to cyan away
            value = (90 + 165 * strength).astype(np.uint8)
            fast = (np.clip(strength - 0.7, 0, 1) * 600).astype(np.uint8)
            towards = flow > 0
            ramp[..., 2] = np.where(towards, value, 0)
            ramp[..., 1] = fast
            ramp[..., 0] = np.where(towards, 0, value)
        box[on] = ramp[on]
    cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), (180, 180, 180), 1)
    return out
