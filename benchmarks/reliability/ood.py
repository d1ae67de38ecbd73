"""How well the out-of-distribution flag works (export/ood.py): false alarms on the
export's own validation and test images, detections on images that are not breast
ultrasound.

    python -m benchmarks.reliability.ood EXPORT_DIR [--variant onnx-int8] [--out DIR] [--split-root DIR]
                             [--external DIR [--external-limit 200]]

Non-ultrasound images come from two sources, both without any download:
* generated here, seeded: colour noise, text documents, smooth colour gradients, cloud
  textures, geometric shapes and a crude mammogram-like image (a bright breast outline on
  black with a pectoral wedge);
* the sample images that scikit-image ships inside its wheel (photographs, microscopy,
  astronomy, text scans), when scikit-image is installed (`pip install scikit-image`),
  each in colour and converted to grayscale (a grayscale photo is the harder case: it
  passes any colour check).

--external names a folder of real breast ultrasound from elsewhere (e.g. BUS-BRA's
Images/): its flag rate says how often a plausible scan from another scanner is flagged.

Writes ood.json and ood.md into --out (default EXPORT_DIR/ood-<variant>).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime import atomic
from runtime.classifier import Classifier
from runtime.colour_modes import OVERLAY_REASON
from runtime.input_checks import REFUSED
from runtime.images import read_image


BATCH = 16
# scikit-image's bundled sample files (skimage/data/*; the others need a download)
SKIMAGE_FILES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
    "logo.png", "microaneurysms.png", "moon.png", "motorcycle_left.png", "page.png", "phantom.png",
    "retina.jpg", "rocket.jpg", "text.png", "chessboard_GRAY.png",
)


@dataclass
class Sample:
    kind: str                  # group the detection rate is reported by
    name: str
    image: np.ndarray          # HxWx3 uint8 BGR


# ---------------------------------------------------------------------- generated images


def _colour_noise(rng, size):
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _document(rng, size):
    page = np.full((size, size, 3), 245, np.uint8)
    words = ["patient", "report", "the", "invoice", "total", "date", "of", "and", "results", "page", "summary"]
    y = int(size * 0.08)
    while y < size * 0.95:
        line = " ".join(rng.choice(words, size=int(rng.integers(3, 8))))
        cv2.putText(page, line, (int(size * 0.05), y), cv2.FONT_HERSHEY_SIMPLEX, size / 700, (20, 20, 20), 1,
                    cv2.LINE_AA)
        y += int(size * rng.uniform(0.05, 0.08))
    return page


def _gradient(rng, size):
    yy, xx = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        a, b, f = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(1, 4)
        channels.append(0.5 + 0.25 * (a * xx + b * yy) + 0.25 * np.sin(2 * np.pi * f * (xx + yy * a)))
    return np.clip(np.stack(channels, -1) * 255, 0, 255).astype(np.uint8)


def _clouds(rng, size):
    field = np.zeros((size, size), np.float64)
    for octave in range(1, 6):
        cells = 2 ** octave
        small = rng.normal(size=(cells, cells))
        field += cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC) / octave
    field = (field - field.min()) / (np.ptp(field) or 1.0)
    gray = (field * 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def _shapes(rng, size):
    canvas = np.full((size, size, 3), 255, np.uint8)
    for _ in range(12):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = tuple(int(c) for c in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.circle(canvas, centre, int(rng.integers(size // 20, size // 5)), colour, -1)
        else:
            corner = tuple(int(c) for c in rng.integers(0, size, 2))
            cv2.rectangle(canvas, centre, corner, colour, -1)
    return canvas


def _mammogram(rng, size):
    """A crude craniocaudal-like view: black background, a bright half-ellipse breast
    against the left edge with fibroglandular texture, a pectoral wedge in the corner."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, ry, rx = size * rng.uniform(0.45, 0.55), size * rng.uniform(0.38, 0.46), size * rng.uniform(0.55, 0.75)
    inside = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2 <= 1.0
    texture = cv2.GaussianBlur(rng.normal(size=(size, size)), (0, 0), size / 40)
    texture = (texture - texture.min()) / (np.ptp(texture) or 1.0)
    depth = np.clip(1.0 - xx / rx, 0, 1)                      # denser towards the chest wall
    image = np.where(inside, 0.35 + 0.35 * depth + 0.3 * texture, 0.02)
    pectoral = xx < (size * 0.25) * (1 - yy / (size * 0.4))
    image = np.where(pectoral & inside, 0.9, image)
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


GENERATORS = {
    "colour noise": _colour_noise,
    "text document": _document,
    "colour gradient": _gradient,
    "cloud texture (gray)": _clouds,
    "geometric shapes": _shapes,
    "mammogram-like (gray)": _mammogram,
}


def generated_images(per_kind: int = 5, size: int = 256, seed: int = 0) -> list[Sample]:
    """Seeded non-ultrasound images, `per_kind` of each kind in GENERATORS."""
    rng = np.random.default_rng(seed)
    return [Sample(kind, f"{kind} {i + 1}", make(rng, size))
            for kind, make in GENERATORS.items() for i in range(per_kind)]


def skimage_images() -> list[Sample]:
    """scikit-image's bundled sample images: colour ones as they are and in grayscale,
    grayscale ones once. Empty when scikit-image is not installed."""
    try:
        import skimage.data
    except ImportError:
        return []
    root = Path(skimage.data.__file__).parent
    samples = []
    for name in SKIMAGE_FILES:
        path = root / name
        if not path.is_file():
            continue
        image = read_image(path)
        gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        colour = is_colour(image)
        if colour:
            samples.append(Sample("scikit-image sample (colour)", name, image))
        samples.append(Sample("scikit-image sample (gray)", f"{name} (gray)" if colour else name, gray))
    return samples


def is_colour(image: np.ndarray) -> bool:
    """Whether the channels differ anywhere by more than a little (JPEG noise aside)."""
    return int((image.max(axis=2).astype(np.int16) - image.min(axis=2)).max()) > 8


# ---------------------------------------------------------------------- measuring


def _flags(classifier: Classifier, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """OOD score and flag per image. An image the runtime refuses (its input checks: too
    small, flat, strongly coloured; or a colour overlay: runtime.colour_modes) never gets
    a prediction, so it counts as caught, with a NaN score."""
    scores, flags = [], []
    for start in range(0, len(images), BATCH):
        for pred in classifier.predict_decoded(images[start:start + BATCH]):
            if not pred.ok:
                if REFUSED not in (pred.error or "") and OVERLAY_REASON not in (pred.error or ""):
                    raise RuntimeError(pred.error)
                scores.append(np.nan)
                flags.append(True)
                continue
            scores.append(np.nan if pred.ood_score is None else pred.ood_score)
            flags.append(bool(pred.out_of_distribution))
    return np.asarray(scores, np.float64), np.asarray(flags, bool)


def _split_images(export_dir: Path, split: str, split_root: Path | None) -> list[np.ndarray]:
    from runtime.dataset import samples_of_split
    from runtime.manifest import split_file

    doc = json.loads(split_file(export_dir).read_text())
    return [read_image(s.path) for s in samples_of_split(doc, split, str(split_root) if split_root else None)]


def external_images(folder: str | Path, limit: int = 200, seed: int = 0) -> list[np.ndarray]:
    """Up to `limit` images of a folder (recursively, masks skipped), a seeded sample."""
    from runtime.dataset import scan_folder

    paths = sorted(e.path for e in scan_folder(Path(folder)).entries)
    if not paths:
        raise FileNotFoundError(f"{folder}: no images")
    if len(paths) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), size=limit, replace=False))
        paths = [paths[i] for i in keep]
    return [read_image(p) for p in paths]


def _rate(flags: np.ndarray) -> dict:
    return {"flagged": int(flags.sum()), "n": int(len(flags)), "rate": float(flags.mean()) if len(flags) else None}


def measure(export_dir: str | Path, variant: str | None = None, split_root: str | Path | None = None,
            per_kind: int = 5, force: bool = False, external: str | Path | None = None,
            external_limit: int = 200) -> dict:
    export_dir = Path(export_dir)
    with Classifier.load(export_dir, variant=variant, threads=None, force=force) as clf:
        if not clf.has_ood:
            raise ValueError(f"variant {clf.variant} of {export_dir} has no out-of-distribution score "
                             "(export it again with a bcd that has export/ood.py)")
        doc: dict = {"export": str(export_dir), "variant": clf.variant, "ood_threshold": clf.ood_threshold,
                     "manifest_ood": clf.manifest.ood if clf.manifest else None, "in_distribution": {},
                     "out_of_distribution": {}}
        for split in ("val", "test"):
            scores, flags = _flags(clf, _split_images(export_dir, split, Path(split_root) if split_root else None))
            doc["in_distribution"][split] = dict(_rate(flags), score_median=float(np.nanmedian(scores)),
                                                 score_max=float(np.nanmax(scores)))
        if external is not None:
            scores, flags = _flags(clf, external_images(external, external_limit))
            doc["in_distribution"][f"external ultrasound {external}"] = dict(
                _rate(flags), score_median=float(np.nanmedian(scores)), score_max=float(np.nanmax(scores)))
        samples = generated_images(per_kind) + skimage_images()
        scores, flags = _flags(clf, [s.image for s in samples])
    by_kind: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_kind.setdefault(s.kind, []).append(i)
    for kind, idx in by_kind.items():
        finite = scores[idx][np.isfinite(scores[idx])]      # refused images have no score
        doc["out_of_distribution"][kind] = dict(_rate(flags[idx]),
                                                score_median=float(np.median(finite)) if len(finite) else None,
                                                missed=[samples[i].name for i in idx if not flags[i]])
    gray_only = [i for i, s in enumerate(samples) if not is_colour(s.image)]
    doc["detection_all"] = _rate(flags)
    doc["detection_grayscale"] = _rate(flags[gray_only])
    return doc


def markdown(doc: dict) -> str:
    pct = lambda r: "n/a" if r is None else f"{100 * r:.1f} %"  # noqa: E731
    lines = [f"# Out-of-distribution flag: {doc['export']} ({doc['variant']})", "",
             f"Flag threshold {doc['ood_threshold']:.4g} (chosen on the validation split).", "",
             "| images | flagged | n | rate | median score |", "|---|---|---|---|---|"]
    for split, r in doc["in_distribution"].items():
        what = f"{split} split (false alarms)" if split in ("val", "test") else f"{split} (flagged)"
        lines.append(f"| {what} | {r['flagged']} | {r['n']} | {pct(r['rate'])} | "
                     f"{r['score_median']:.4g} |")
    for kind, r in doc["out_of_distribution"].items():
        median = "refused" if r["score_median"] is None else f"{r['score_median']:.4g}"
        lines.append(f"| {kind} (detections) | {r['flagged']} | {r['n']} | {pct(r['rate'])} | {median} |")
    a, g = doc["detection_all"], doc["detection_grayscale"]
    lines += ["", f"Detected: {a['flagged']} of {a['n']} non-ultrasound images ({pct(a['rate'])}); "
                  f"grayscale ones (equal channels) only: {g['flagged']} of {g['n']} ({pct(g['rate'])}).", ""]
    missed = [f"{name}" for r in doc["out_of_distribution"].values() for name in r["missed"]]
    if missed:
        lines += ["Missed: " + ", ".join(missed), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability.ood", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path, help="export directory (manifest.json with an 'ood' section)")
    parser.add_argument("--variant", help="variant to measure (default as `bcd predict`)")
    parser.add_argument("--split-root", type=Path, help="where the run's dataset lives now, if it moved")
    parser.add_argument("--per-kind", type=int, default=5, help="generated images per kind (default 5)")
    parser.add_argument("--out", type=Path, help="output folder (default EXPORT/ood-<variant>)")
    parser.add_argument("--force", action="store_true", help="also measure a variant that failed the export's checks")
    parser.add_argument("--external", type=Path, help="folder of breast ultrasound images from another source")
    parser.add_argument("--external-limit", type=int, default=200, help="at most this many of them (default 200)")
    args = parser.parse_args(argv)
    try:
        doc = measure(args.export, args.variant, args.split_root, args.per_kind, args.force, args.external,
                      args.external_limit)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.export / f"ood-{doc['variant']}"
    atomic.write_json(out / "ood.json", doc)
    text = markdown(doc)
    atomic.write_text(out / "ood.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
