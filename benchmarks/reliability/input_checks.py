"""Measure the runtime's input checks (runtime/input_checks.py) on real scans and on
images that are not scans: how many real scans would be refused (must be 0), and which
non-scans are caught.

    python -m benchmarks.reliability.input_checks [--busi DIR] [--busbra DIR]

Real scans: every image of BUSI (folder per class, lesion masks skipped) and of BUS-BRA
(Images/). Non-scans: scikit-image's sample images when scikit-image is installed
(photographs, figures, gray pictures), plus generated ones (tiny, flat, colour gradient).
Prints Markdown; the figures in docs/RELIABILITY.md come from this command.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from runtime.dataset import scan_folder
from runtime.images import ImageReadError, read_image, to_bgr_uint8
from runtime.input_checks import DEFAULT_CHECKS, measure

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "colorwheel",
                   "logo", "hubble_deep_field", "camera", "brick", "grass", "gravel", "moon", "page", "text",
                   "coins", "horse", "clock", "checkerboard", "microaneurysms", "shepp_logan_phantom", "cell")


def scan_files(busi: Path | None, busbra: Path | None) -> dict[str, list[Path]]:
    sets = {}
    if busi is not None and busi.is_dir():
        sets["BUSI"] = [e.path for e in scan_folder(busi).entries]
    if busbra is not None and (busbra / "Images").is_dir():
        sets["BUS-BRA"] = sorted((busbra / "Images").glob("*.png"))
    return sets


def with_doppler_box(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """The scan with a colour-Doppler box as machines draw it: a box over 40% x 40% of
    the image (16% of its area) in which 70% of the pixels show red/blue flow, plus a
    yellow caliper cross: about 11% coloured pixels, a generous case."""
    out = image.copy()
    h, w = out.shape[:2]
    box = out[int(h * 0.3):int(h * 0.7), int(w * 0.3):int(w * 0.7)]
    flow = np.random.default_rng(seed).random(box.shape[:2]) < 0.7
    red = flow & (np.arange(box.shape[1])[None, :] % 2 == 0)
    box[flow] = (200, 60, 20)
    box[red] = (30, 40, 220)
    import cv2
    cv2.drawMarker(out, (w // 5, h // 5), (0, 255, 255), cv2.MARKER_CROSS, 20, 2)
    return out


def real_scans(sets: dict[str, list[Path]]) -> list[str]:
    lines = ["| dataset | images | refused | refused with a Doppler box added | smallest side (px) | "
             "lowest gray std | highest coloured share |", "|---|---|---|---|---|---|---|"]
    for name, files in sets.items():
        refused, sides, stds, colours, boxed = [], [], [], [], 0
        for f in files:
            try:
                image = read_image(f)
            except ImageReadError as err:
                refused.append(f"{f}: {err}")
                continue
            stats = measure(image, DEFAULT_CHECKS.colour_chroma)
            sides.append(min(image.shape[:2]))
            stds.append(stats.gray_std)
            colours.append(stats.colour_fraction)
            problem = DEFAULT_CHECKS.problem(image)
            if problem:
                refused.append(f"{f}: {problem}")
            boxed += DEFAULT_CHECKS.problem(with_doppler_box(image)) is not None
        lines.append(f"| {name} | {len(files)} | {len(refused)} | {boxed} | {min(sides)} | {min(stds):.1f} | "
                     f"{max(colours):.2%} |")
        lines += [f"|   refused: {r} |" for r in refused[:10]]
    return lines


def non_scans() -> list[str]:
    samples: list[tuple[str, np.ndarray]] = []
    try:
        from skimage import data
        for name in SKIMAGE_SAMPLES:
            try:
                img = getattr(data, name)()
            except Exception:  # noqa: BLE001 - a sample that needs a download is skipped
                continue
            if img.ndim == 3 and img.shape[2] >= 3:
                img = img[..., [2, 1, 0]]            # skimage gives RGB; the runtime works in BGR
            samples.append((f"skimage {name}", to_bgr_uint8(img)))
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    hue = np.tile(np.linspace(0, 179, 400, dtype=np.float32), (300, 1)).astype(np.uint8)
    import cv2
    gradient = cv2.cvtColor(np.dstack([hue, np.full_like(hue, 200), np.full_like(hue, 220)]), cv2.COLOR_HSV2BGR)
    samples += [("2x2 black", np.zeros((2, 2, 3), np.uint8)),
                ("constant gray 300x300", np.full((300, 300, 3), 128, np.uint8)),
                ("flat + noise (sigma 1.5)", np.clip(128 + rng.normal(0, 1.5, (300, 300, 3)), 0, 255).astype(np.uint8)),
                ("colour gradient", gradient)]
    lines = ["| image | size | gray std | coloured share | outcome |", "|---|---|---|---|---|"]
    for name, image in samples:
        stats = measure(image) if min(image.shape[:2]) > 0 else None
        problem = DEFAULT_CHECKS.problem(image)
        outcome = "refused: " + problem.split(": ", 1)[1] if problem else "passes the checks (left to the OOD flag)"
        lines.append(f"| {name} | {image.shape[1]}x{image.shape[0]} | {stats.gray_std:.1f} | "
                     f"{stats.colour_fraction:.1%} | {outcome} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability.input_checks", description=__doc__.split("\n")[0])
    parser.add_argument("--busi", type=Path, default=DATA / "busi")
    parser.add_argument("--busbra", type=Path, default=DATA / "busbra")
    args = parser.parse_args(argv)
    c = DEFAULT_CHECKS
    print(f"Limits: short side >= {c.min_side} px, gray std >= {c.min_gray_std:g}, coloured share <= "
          f"{c.max_colour_fraction:.0%} (a pixel is coloured when max-min of B,G,R >= {c.colour_chroma})\n")
    print("\n".join(real_scans(scan_files(args.busi, args.busbra))))
    print()
    print("\n".join(non_scans()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
