"""Finding labelled images: folder-per-class datasets and CSV indexes.

Layouts understood (the class folder may be any ancestor of the image):
  BUSI     root/benign/benign (1).png, root/malignant/..., root/normal/...
  BreakHis root/benign/SOB/adenosis/<slide>/40X/*.png

Lesion masks that real BUSI downloads contain (`* _mask.png`, `*_mask_1.png`) are never
taken for images; an image's own `<stem>_mask.png` beside it becomes its lesion mask (an
empty mask, as BUSI's normal images have, means no lesion). Files are returned in a
stable (sorted, relative-path) order.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from runtime.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

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
    mask: Path | None = None      # <stem>_mask.png beside the image, if there is one


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


def mask_beside(path: Path) -> Path | None:
    """BUSI's layout: the lesion mask of `x.png` is `x_mask.png` in the same folder."""
    mask = path.with_name(f"{path.stem}_mask.png")
    return mask if mask.is_file() else None


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
        result.entries.append(ImageEntry(path, class_name, label, mask_beside(path)))
    return result


# ---------------------------------------------------------------------------- sources
#
# A dataset ("source") is either a folder with one folder per class, or a CSV index.
# One reader, `read_source`, serves every command that reads labelled data: training,
# external evaluation, calibration images for export, benchmarks and site calibration.

class DatasetError(ValueError):
    """A dataset that cannot be used at all (missing, empty, wrong columns); the message
    is meant for the user as is."""


# Canonical CSV columns. `path` may be relative to the CSV's folder or absolute.
CANONICAL_COLUMNS = {"path": "{path}", "label": "label", "group": "group", "mask": "{mask}", "birads": "birads"}
BIRADS_LEVELS = range(1, 7)    # BI-RADS assessment categories a score can take (0 = incomplete: unknown)


def _template_fields(template: str) -> list[tuple[str, str]]:
    """(column, prefix to strip) for every {COLUMN} or {COLUMN#PREFIX} in a template."""
    return [(m.group(1), m.group(2) or "") for m in _FIELD.finditer(template)]


_FIELD = re.compile(r"\{([^{}#]+)(?:#([^{}]*))?\}")


def fill_template(template: str, row: dict[str, str]) -> str:
    """'Masks/mask_{ID#bus_}.png' with ID=bus_0001-l -> 'Masks/mask_0001-l.png'.
    {COLUMN#PREFIX} removes PREFIX from the start of the value, as in the shell."""
    def value(match: re.Match) -> str:
        text = (row.get(match.group(1)) or "").strip()
        prefix = match.group(2) or ""
        return text[len(prefix):] if prefix and text.startswith(prefix) else text
    return _FIELD.sub(value, template)


@dataclass(frozen=True)
class CsvMapping:
    """How the columns of a CSV index become image path, label, group and mask.

    `path` and `mask` are templates over the row's columns ("{path}", "Images/{ID}.png");
    `label`, `group` and `birads` name a column. `group`, `mask` and `birads` (the
    radiologist's BI-RADS category, an auxiliary training target) are optional: an empty
    value, or a column the CSV does not have, means none. BUS-BRA's own bus_data.csv:
        path=Images/{ID}.png,label=Pathology,group=Case,mask=Masks/mask_{ID#bus_}.png,birads=BIRADS
    """

    path: str = CANONICAL_COLUMNS["path"]
    label: str = CANONICAL_COLUMNS["label"]
    group: str = CANONICAL_COLUMNS["group"]
    mask: str = CANONICAL_COLUMNS["mask"]
    birads: str = CANONICAL_COLUMNS["birads"]

    @classmethod
    def parse(cls, text: str) -> "CsvMapping":
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in cls.__dataclass_fields__ or not value.strip():
                raise DatasetError(
                    f"bad CSV mapping entry {part!r}: use path=TEMPLATE, label=COLUMN, group=COLUMN, "
                    "mask=TEMPLATE, birads=COLUMN, e.g. path=Images/{ID}.png,label=Pathology,group=Case")
            fields[key] = value.strip()
        return cls(**fields)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def required_columns(self) -> set[str]:
        return {c for c, _ in _template_fields(self.path)} | {self.label}

    def optional_columns(self) -> set[str]:
        return {self.group, self.birads} | {c for c, _ in _template_fields(self.mask)}


@dataclass(frozen=True)
class DataSource:
    """One dataset: a class-folder tree or a CSV index, with the name its images carry
    into splits, predictions and per-source metrics."""

    path: Path
    name: str
    mapping: CsvMapping | None = None         # CSV only; None: the canonical columns
    labels: LabelMap = field(default_factory=LabelMap)

    @property
    def is_csv(self) -> bool:
        return self.path.suffix.lower() == ".csv"

    @property
    def root(self) -> Path:
        """What relative image paths are relative to: the folder, or the CSV's folder."""
        return self.path.parent if self.is_csv else self.path

    @classmethod
    def parse(cls, text: str, mapping: CsvMapping | None = None, labels: LabelMap | None = None) -> "DataSource":
        """'PATH' or 'NAME=PATH'. The default name is the folder's name, or the CSV's
        folder name (bus_data.csv in busbra/ is 'busbra')."""
        name, sep, rest = text.partition("=")
        if sep and _NAME.fullmatch(name) and not Path(text).exists():
            path = Path(rest)
        else:
            name, path = "", Path(text)
        if not path.exists():
            raise DatasetError(f"--data {text}: no such folder or CSV file")
        if path.is_file() and path.suffix.lower() != ".csv":
            raise DatasetError(f"--data {text}: expected a folder of class folders or a .csv index")
        if mapping is not None and path.is_dir():
            raise DatasetError(f"--csv-map applies to a CSV index, but {path} is a folder")
        resolved = path.resolve()
        default = resolved.parent.name if resolved.is_file() else resolved.name
        return cls(path=path, name=name or default or "data", mapping=mapping, labels=labels or LabelMap())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(Path(self.path).resolve()),
                "kind": "csv" if self.is_csv else "folder",
                "mapping": self.mapping.to_dict() if self.mapping else None,
                "class_labels": self.labels.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | Path | None = None) -> "DataSource":
        """From split.json; `path` overrides where the data lives now (it moved)."""
        mapping = CsvMapping(**d["mapping"]) if d.get("mapping") else None
        return cls(path=Path(path or d["path"]), name=d["name"], mapping=mapping,
                   labels=LabelMap(dict(d.get("class_labels") or DEFAULT_CLASS_LABELS)))


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def unique_names(sources: list[DataSource]) -> list[DataSource]:
    """Sources with distinct names (a second 'busi' becomes 'busi-2')."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        out.append(s if n == 1 else replace(s, name=f"{s.name}-{n}"))
    return out


@dataclass(frozen=True)
class Sample:
    """One labelled image of a source."""

    source: str
    path: Path                 # where the image is
    relative: str              # path relative to the source root (as split.json stores it)
    label: int | None
    class_name: str | None
    group: str | None = None   # patient or study id, if the source has one
    mask: Path | None = None   # lesion mask, if the source has one
    birads: int | None = None  # the radiologist's BI-RADS category, if the source has one


@dataclass
class SourceScan:
    source: DataSource
    samples: list[Sample]
    bad_rows: list[dict] = field(default_factory=list)   # {"row", "path", "reason"}
    masks_skipped: int = 0
    unlabelled: int = 0

    @property
    def labelled(self) -> list[Sample]:
        return [s for s in self.samples if s.label is not None]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_source(source: DataSource) -> SourceScan:
    """Every image of a source with its label (and group and mask where known)."""
    if source.is_csv:
        return read_csv_index(source)
    scan = scan_folder(source.path, source.labels)
    samples = [Sample(source.name, e.path, _relative(e.path, source.root), e.label, e.class_name, mask=e.mask)
               for e in scan.entries if e.label is not None]
    return SourceScan(source, samples, masks_skipped=scan.masks_skipped, unlabelled=len(scan.unlabelled))


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c for c in (reader.fieldnames or []) if c is not None]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path}: cannot read the CSV index ({err})") from None
    return columns, rows


def read_csv_index(source: DataSource) -> SourceScan:
    """Rows of a CSV index -> samples. Bad rows (missing image, unknown label, duplicate
    path) are listed and skipped; a CSV without the needed columns, or without rows,
    fails at once."""
    mapping = source.mapping or CsvMapping()
    columns, rows = _csv_rows(source.path)
    missing = sorted(mapping.required_columns() - set(columns))
    if missing:
        raise DatasetError(
            f"{source.path}: missing column(s) {', '.join(missing)}; the CSV has "
            f"{', '.join(columns) if columns else 'no header'}. Use --csv-map to map other column names "
            "(e.g. path=Images/{ID}.png,label=Pathology,group=Case).")
    if not rows:
        raise DatasetError(f"{source.path}: the CSV index has a header but no rows")
    has_group = mapping.group in columns
    has_mask = all(c in columns for c, _ in _template_fields(mapping.mask))
    has_birads = mapping.birads in columns
    scan = SourceScan(source, [])
    seen: set[Path] = set()
    for number, row in enumerate(rows, start=2):     # row 1 is the header
        sample, reason = _row_sample(source, mapping, row, has_group, has_mask, seen)
        if sample is not None and has_birads:
            sample = replace(sample, birads=birads_level(row.get(mapping.birads)))
        if sample is None:
            scan.bad_rows.append({"row": number, "path": fill_template(mapping.path, row), "reason": reason})
        else:
            scan.samples.append(sample)
    if scan.bad_rows:
        log.warning("%s: skipped %d bad row(s) of %d, e.g. row %d: %s", source.path, len(scan.bad_rows),
                    len(rows), scan.bad_rows[0]["row"], scan.bad_rows[0]["reason"])
    return scan


def birads_level(text: str | None) -> int | None:
    """'4', '4a', '4C', ' 5 ' -> 4, 4, 4, 5; empty, 0 (incomplete) or anything else -> None.
    The subcategories a-c of 4 count as 4."""
    match = re.fullmatch(r"\s*([0-9])\s*[abcABC]?\s*", text or "")
    level = int(match.group(1)) if match else None
    return level if level in BIRADS_LEVELS else None


def _row_sample(source: DataSource, mapping: CsvMapping, row: dict, has_group: bool, has_mask: bool,
                seen: set[Path]) -> tuple[Sample | None, str]:
    text = fill_template(mapping.path, row)
    if not text:
        return None, "empty image path"
    path = Path(text) if Path(text).is_absolute() else source.root / text
    class_name = (row.get(mapping.label) or "").strip().lower()
    label = source.labels.classes.get(class_name)
    if label is None:
        return None, (f"unknown label {class_name!r} (known: {', '.join(sorted(source.labels.classes))})"
                      if class_name else "empty label")
    key = path.resolve()
    if key in seen:
        return None, "duplicate path (an earlier row has the same image)"
    if not path.is_file():
        return None, "image file not found"
    seen.add(key)
    group = (row.get(mapping.group) or "").strip() or None if has_group else None
    mask = None
    if has_mask:
        mask_text = fill_template(mapping.mask, row)
        if mask_text:
            mask_path = Path(mask_text) if Path(mask_text).is_absolute() else source.root / mask_text
            mask = mask_path if mask_path.is_file() else None
    return Sample(source.name, path, _relative(path, source.root), label, class_name, group, mask), ""


def sources_of_split(doc: dict, data_override: str | None = None, class_labels: dict | None = None) -> list[DataSource]:
    """The sources a split.json was made from (older files name one folder, data_root).

    `data_override` says where the data lives now, if it moved: for one source, the
    folder (or CSV) itself; for several, a folder holding each source's folder under its
    original name (e.g. a copy of data/ with busi/ and busbra/bus_data.csv in it)."""
    if not doc.get("sources"):
        labels = LabelMap(dict(class_labels)) if class_labels else None
        return [DataSource.parse(str(data_override or doc["data_root"]), labels=labels)]
    if data_override is None:
        return [DataSource.from_dict(d) for d in doc["sources"]]
    return [DataSource.from_dict(d, _relocated(d, Path(data_override), len(doc["sources"]) == 1))
            for d in doc["sources"]]


def recorded_folder(d: dict) -> Path:
    """The folder of a source as split.json recorded it (a CSV index's folder, for a CSV)."""
    recorded = Path(d["path"])
    return recorded.parent if d.get("kind") == "csv" else recorded


def _relocated(d: dict, base: Path, single: bool) -> Path:
    """Where a source recorded in split.json is found under `base`."""
    recorded = Path(d["path"])
    csv_name = recorded.name if d.get("kind") == "csv" else None
    folder = recorded_folder(d)
    candidates = [base / folder.name]
    if single:
        candidates.insert(0, base)
    if csv_name:
        candidates = [c / csv_name for c in candidates] + ([base] if single and base.is_file() else [])
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise DatasetError(f"source {d['name']!r} is not under {base} (looked for "
                       f"{', '.join(str(c) for c in candidates)})")


def samples_of_split(doc: dict, split: str, root_override: str | None = None) -> list[Sample]:
    """The images of one part of a saved split.json as samples of their sources (with
    lesion masks where the source has them), in the split's order."""
    if split not in doc["files"]:
        raise DatasetError(f"the saved split has no {split!r} part (has: {', '.join(doc['files'])})")
    sources = sources_of_split(doc, root_override)
    single = sources[0].name if len(sources) == 1 else None
    known: dict[tuple[str, str], Sample] = {}
    for source in sources:
        if not source.path.exists():
            raise DatasetError(f"the dataset of the saved split is not at {source.path} (moved?)")
        known.update({(s.source, s.relative): s for s in read_source(source).samples})
    entries = doc["files"][split]
    key = lambda e: (e.get("source", single), e["path"])  # noqa: E731
    missing = [e["path"] for e in entries if key(e) not in known]
    if missing:
        raise DatasetError(f"{len(missing)} file(s) of the saved split are missing, e.g. {missing[0]}")
    return [known[key(e)] for e in entries]
