"""Finding labelled images in a folder-per-class dataset.

Layouts understood (the class folder may be any ancestor of the image):
  BUSI     root/benign/benign (1).png, root/malignant/..., root/normal/...
  BreakHis root/benign/SOB/adenosis/<slide>/40X/*.png

Lesion masks that real BUSI downloads contain (`* _mask.png`, `*_mask_1.png`) are
skipped. Files are returned in a stable (sorted, relative-path) order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.images import IMAGE_EXTENSIONS

# BreastMNIST convention: malignant is the positive class; benign and normal are negative.
DEFAULT_CLASS_LABELS = {"benign": 0, "normal": 0, "malignant": 1}
LABEL_NAMES = ("benign", "malignant")


@dataclass(frozen=True)
class LabelMap:
    """Which class folder means which binary label (0 = benign, 1 = malignant)."""

    classes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CLASS_LABELS))

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.classes.items() if v not in (0, 1)}
        if bad:
            raise ValueError(f"labels must be 0 (benign) or 1 (malignant), got {bad}")
        if set(self.classes.values()) != {0, 1}:
            raise ValueError("the label map needs at least one class for each of 0 and 1")

    @classmethod
    def parse(cls, text: str) -> "LabelMap":
        """Parse 'benign=0,normal=0,malignant=1'."""
        classes: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep or value.strip() not in ("0", "1") or not name.strip():
                raise ValueError(f"bad label map entry {part!r}: use NAME=0 or NAME=1")
            classes[name.strip().lower()] = int(value)
        return cls(classes)

    def label_of(self, relative: Path) -> tuple[str | None, int | None]:
        """Class folder and label of a file, from the first ancestor folder that is a class."""
        for part in relative.parts[:-1]:
            label = self.classes.get(part.lower())
            if label is not None:
                return part.lower(), label
        return None, None

    def to_dict(self) -> dict[str, int]:
        return dict(self.classes)


@dataclass(frozen=True)
class ImageEntry:
    path: Path
    class_name: str | None
    label: int | None


@dataclass
class ScanResult:
    entries: list[ImageEntry]
    masks_skipped: int = 0
    unlabelled: list[Path] = field(default_factory=list)

    @property
    def labelled(self) -> list[ImageEntry]:
        return [e for e in self.entries if e.label is not None]


def is_mask(path: Path) -> bool:
    return "_mask" in path.stem.lower()


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def scan_folder(root: str | Path, label_map: LabelMap | None = None) -> ScanResult:
    """List the images below `root` with their labels (None where no class folder applies)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    label_map = label_map or LabelMap()
    result = ScanResult(entries=[])
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if not is_image_file(path):
            continue
        if is_mask(path):
            result.masks_skipped += 1
            continue
        class_name, label = label_map.label_of(path.relative_to(root))
        if label is None:
            result.unlabelled.append(path)
        result.entries.append(ImageEntry(path, class_name, label))
    return result
