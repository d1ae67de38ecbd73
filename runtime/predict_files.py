"""Classify files, folders and globs, and write the results: the library behind
`bcd predict`.

    clf = Classifier.load("exports/busi-224")
    results = predict_paths(clf, ["scans/", "extra/*.png"], heatmap_dir="heatmaps")
    write_json("results.json", results); write_csv("results.csv", results)

Inputs are expanded into one sorted list of files (folders recursively, with the
runtime.dataset conventions: image extensions only, lesion masks skipped). Every input
ends as exactly one Prediction per file: unreadable, missing or unmatched inputs become
rows with `error` set, and the rest are still classified. Nothing here raises for bad
input data.
"""
from __future__ import annotations

import csv
import functools
import glob
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from runtime import atomic, gradcam
from runtime.classifier import DEFAULT_BATCH_SIZE, Classifier, Prediction
from runtime.dataset import is_image_file, is_mask, scan_folder
from runtime.engines import AUTO, BACKENDS
from runtime.images import DEFAULT_MAX_PIXELS
from runtime.scan_crop import RegionSetting
from runtime.scan_input import FrameChoice
from runtime.shipped import MODEL_ENV, default_model_path
from runtime.read_ahead import Pipeline, read_ahead
from runtime.roi import RoiRequest, parse_roi_text, roi_request

REPORT_FIELDS = ("path", "label", "probability", "threshold", "out_of_distribution", "ood_score", "error")
# CSV columns of the region classified and of a cine loop's frames (JSON nests them as
# "region" and "frames", see Prediction.to_dict); empty cells where they do not apply.
REGION_FIELDS = ("region_x", "region_y", "region_width", "region_height", "region_source",
                 "mm_per_pixel_x", "mm_per_pixel_y")
FRAME_FIELDS = ("frames_in_file", "frames_used", "frame_probabilities", "frame_summary", "max_frame_probability")
# CSV columns of the lesion box classified (runtime.roi; JSON nests it as "roi"): empty
# without an ROI, and the box's cells empty when roi "auto" proposed none
ROI_FIELDS = ("roi_x", "roi_y", "roi_width", "roi_height", "roi_source")
# The columns of a boxes file (--rois): one row per lesion; `width`/`height` may stand for w/h
ROIS_COLUMNS = ("path", "x", "y", "w", "h")
SITE_FIELD = "site_profile"
HEATMAP_SUFFIX = "_gradcam.png"
_GLOB_CHARS = set("*?[")

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------- inputs


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Prediction]]:
    """Files to classify (sorted, de-duplicated) and error rows for inputs that name
    nothing usable (missing path, glob without matches, folder without images)."""
    files: dict[str, Path] = {}
    problems: list[Prediction] = []

    def add(path: Path) -> None:
        files.setdefault(os.path.normpath(str(path)), path)

    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if path.is_dir():
            found = [entry.path for entry in scan_folder(path).entries]
            if not found:
                problems.append(_input_error(text, "folder contains no image files"))
            for f in found:
                add(f)
        elif path.exists() or path.is_symlink():
            add(path)                       # named explicitly: tried whatever its extension
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            before = len(files)
            for match in map(Path, matches):
                if match.is_dir():
                    for entry in scan_folder(match).entries:
                        add(entry.path)
                elif is_image_file(match) and not is_mask(match):
                    add(match)
            if len(files) == before:
                problems.append(_input_error(text, "no image files match this pattern"))
        else:
            problems.append(_input_error(text, "file not found"))
    ordered = [files[key] for key in sorted(files)]
    return ordered, problems


def _input_error(path: str, reason: str) -> Prediction:
    return Prediction(path=path, label=None, probability=None, threshold=float("nan"), error=f"{path}: {reason}")


# ---------------------------------------------------------------------- predicting


@dataclass(frozen=True)
class PredictConfig:
    """What `bcd predict` can set (the library's defaults; the CLI passes what is given)."""

    model: str | os.PathLike | None = None   # export dir, manifest.json or .onnx; None: $BCD_MODEL, else the shipped model
    variant: str | None = None               # None: onnx-int8 if it passed the export checks, else onnx-fp32
    threads: int | None = None               # None: physical cores
    backend: str = AUTO
    max_pixels: int = DEFAULT_MAX_PIXELS     # decompression-bomb guard
    batch_size: int = DEFAULT_BATCH_SIZE
    force: bool = False                      # run a variant that failed the export's checks (investigation only)
    heatmap_dir: str | os.PathLike | None = None
    partial_every: float = 10.0              # seconds between updates of FILE.partial.json
    region: str | None = None                # auto | off | "X,Y,W,H"; None: the export's setting (auto if none)
    frames: str | int = "middle"             # a cine loop's frames: middle | all | frame number N (from 1)
    roi: str | None = None                   # the lesion box: "X,Y,W,H" (one image only) or auto; None: none
    rois: str | os.PathLike | None = None    # a boxes file (columns path,x,y,w,h): the images and their boxes

    def __post_init__(self) -> None:
        for name in ("threads", "max_pixels", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1")
        if self.partial_every < 0:
            raise ValueError("the partial-results interval must not be negative")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.region is not None:
            RegionSetting.parse(self.region)            # bad boxes fail here, before any file is read
        FrameChoice.parse(self.frames)
        if self.roi is not None and self.rois is not None:
            raise ValueError("give either one box (roi) or a boxes file (rois), not both")
        if self.roi is not None:
            try:
                parse_roi_text(self.roi)                # a bad box fails here, before any file is read
            except ValueError as err:
                raise ValueError(f"roi: {err}") from None

    def model_path(self) -> Path | None:
        return Path(self.model) if self.model is not None else default_model_path()

    def load_classifier(self) -> Classifier:
        model = self.model_path()
        if model is None:
            raise ValueError("no model: pass an export directory from `bcd export` (the shipped reference model is "
                             f"missing; set {MODEL_ENV} to use another default)")
        return Classifier.load(model, variant=self.variant, threads=self.threads, force=self.force,
                               max_pixels=self.max_pixels, backend=self.backend, region=self.region,
                               frames=self.frames)


def predict_paths(classifier: Classifier, inputs: Iterable[str | os.PathLike], *, heatmap_dir: str | os.PathLike | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                  partial: "PartialResults | None" = None, pipeline: "Pipeline | None" = None,
                  roi=None) -> list[Prediction]:
    """One Prediction per file named by `inputs` (files, folders, globs), sorted by path.

    heatmap_dir: also write a Grad-CAM overlay `<stem>_gradcam.png` per classified image
        (names made unique when stems collide); needs a variant with a cam output.
    progress: called as progress(done, total) after each batch.
    partial: kept up to date with the results so far (see PartialResults), so a run that
        dies half-way leaves what it had done.
    pipeline: how many threads read and decode files ahead of inference (see Pipeline);
        the results are the same with any setting.
    roi: the lesion box (runtime.roi): "auto" for every file, or a box (x, y, w, h) for
        inputs that name exactly one file (ValueError otherwise, before any work; a box
        per file: predict_rois).
    """
    _check_options(classifier, heatmap_dir, batch_size)
    request = classifier.roi_requests(roi, 1)[0]
    files, problems = expand_inputs(inputs)
    if request is not None and not request.auto and len(files) + len(problems) != 1:
        raise ValueError(f"a box (roi {request.text}) is for one image, but the inputs name {len(files)} image files "
                         f"and {len(problems)} other input(s): give a boxes file (rois: columns "
                         f"{','.join(ROIS_COLUMNS)}) for a box per image, or roi auto")
    for row in problems:
        row.threshold = classifier.threshold
    results = _predict_jobs(classifier, [(path, request) for path in files], problems, heatmap_dir, batch_size,
                            progress, partial, pipeline)
    return sorted(results + problems, key=lambda p: p.path or "")


def predict_rois(classifier: Classifier, rois_file: str | os.PathLike, *, heatmap_dir: str | os.PathLike | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                 partial: "PartialResults | None" = None, pipeline: "Pipeline | None" = None) -> list[Prediction]:
    """One Prediction per row of a boxes file (read_rois: an image and a lesion box per
    row; several rows for one image are several lesions), in the file's order. A row
    whose box is bad, or whose image cannot be used, gives an error row; the rest go on.
    The other options are those of predict_paths."""
    _check_options(classifier, heatmap_dir, batch_size)
    return _predict_jobs(classifier, read_rois(rois_file), [], heatmap_dir, batch_size, progress, partial, pipeline)


def _check_options(classifier: Classifier, heatmap_dir, batch_size: int) -> None:
    if heatmap_dir is not None and not classifier.has_cam:
        raise ValueError(f"variant {classifier.variant!r} has no Grad-CAM output; choose another variant "
                         "for heat maps (e.g. onnx-fp32 or onnx-int8)")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")


def _predict_jobs(classifier: Classifier, jobs: Sequence[tuple[Path, RoiRequest | None]], problems: list[Prediction],
                  heatmap_dir, batch_size: int, progress: Progress | None, partial: "PartialResults | None",
                  pipeline: "Pipeline | None") -> list[Prediction]:
    """One Prediction per (file, its ROI request) job, in order."""
    # a name per job that may give a map (a row whose box is bad never does)
    named = [k for k, (_, request) in enumerate(jobs) if request is None or request.error is None]
    heat_names = dict(zip(named, _heatmap_names([jobs[k][0] for k in named]))) if heatmap_dir is not None else {}
    results: list[Prediction] = []
    total = len(jobs)
    numbered = list(enumerate(jobs))
    chunks = [numbered[start:start + batch_size] for start in range(0, total, batch_size)]
    place = functools.partial(_place_job, classifier=classifier)
    # Files are read, decoded, cut to their scan region and preprocessed in worker threads
    # a few batches ahead of the one being classified (runtime.read_ahead); this loop sees
    # them in order, as if done here.
    for placed in read_ahead(chunks, place, pipeline or Pipeline()):
        preds = classifier.infer([item for _, item in placed], with_cam=heatmap_dir is not None)
        for (index, item), pred in zip(placed, preds):
            if heatmap_dir is not None and pred.ok and pred.cam is not None:
                _write_heatmap(pred, item.scan.display, Path(heatmap_dir) / heat_names[index])
            results.append(pred)
        if progress is not None:
            progress(len(results), total)
        if partial is not None:
            partial.update(results + problems, total + len(problems))
    return results


def _place_job(job: tuple[int, tuple[Path, RoiRequest | None]], classifier: Classifier):
    """(job number, runtime.classifier.Placed) for one file and its ROI request; a bad
    box is an error row without reading the file."""
    index, (path, request) = job
    if request is not None and request.error is not None:
        return index, classifier.place(str(path), None, f"{path}: {request.error}")
    return index, _read_and_place(path, classifier, request)[1]


def _read_and_place(path: Path, classifier: Classifier, roi: RoiRequest | None = None):
    """Everything done to one file before inference (runs in the read-ahead threads):
    (path, runtime.classifier.Placed)."""
    scan, error = _read(path, classifier)
    return path, classifier.place(str(path), scan, error, roi=roi)


def _read(path: Path, classifier: Classifier):
    """(the decoded scan, None) or (None, the reason it cannot be used)."""
    _, scan, error = classifier.decode_or_error(path)
    return scan, error


def _write_heatmap(pred: Prediction, image, target: Path) -> None:
    try:
        gradcam.save_overlay(image, pred.cam, target)
    except OSError as err:
        pred.error = f"{pred.path}: classified, but the heat map could not be written ({err})"


def _heatmap_names(files: Sequence[Path]) -> list[str]:
    """`<stem>_gradcam.png` for each file in order, with `_2`, `_3` ... added when stems
    collide (benign/1.png and malignant/1.png, or two boxes on one image)."""
    names: list[str] = []
    taken: set[str] = set()
    for path in files:
        base = path.stem
        name, n = f"{base}{HEATMAP_SUFFIX}", 1
        while name.lower() in taken:
            n += 1
            name = f"{base}_{n}{HEATMAP_SUFFIX}"
        taken.add(name.lower())
        names.append(name)
    return names


# ---------------------------------------------------------------------- boxes files


def read_rois(rois_file: str | os.PathLike) -> list[tuple[Path, RoiRequest | None]]:
    """The rows of a boxes file: CSV with a header naming the columns path,x,y,w,h
    (`width`/`height` may stand for w/h; other columns are ignored), one lesion per row;
    a relative path is taken from the file's folder. A row that is not a usable box (a
    cell missing, not a number, negative, zero size) keeps its place with a RoiRequest
    whose error names its line. ValueError when the file cannot be read, lacks a column
    or has no rows."""
    source = Path(rois_file)
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"boxes file {source}: cannot read it ({err})") from None
    try:
        return _read_rois(source, csv.reader(io.StringIO(text)))
    except csv.Error as err:                 # e.g. a field over the csv module's size limit
        raise ValueError(f"boxes file {source}: not a readable CSV ({err})") from None


def _read_rois(source: Path, reader) -> list[tuple[Path, RoiRequest | None]]:
    header = [cell.strip().lower() for cell in next(reader, [])]
    header = [{"width": "w", "height": "h"}.get(cell, cell) for cell in header]
    missing = [c for c in ROIS_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"boxes file {source}: no column(s) {', '.join(missing)}; the first line must name the "
                         f"columns {','.join(ROIS_COLUMNS)}")
    where = [header.index(c) for c in ROIS_COLUMNS]
    jobs: list[tuple[Path, RoiRequest | None]] = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue                         # a blank line
        jobs.append(_rois_row(cells, where, source, reader.line_num))
    if not jobs:
        raise ValueError(f"boxes file {source}: no rows after the header")
    return jobs


def _rois_row(cells: list[str], where: list[int], source: Path, line: int) -> tuple[Path, RoiRequest]:
    name = cells[where[0]].strip() if where[0] < len(cells) else ""
    path = Path(name) if name and Path(name).is_absolute() else source.parent / name
    at = f"{source.name} line {line}"
    if not name:
        return Path(f"({at})"), RoiRequest(error=f"{at}: the path is empty")
    values = [cells[k].strip() if k < len(cells) else "" for k in where[1:]]
    empty = [column for column, value in zip(ROIS_COLUMNS[1:], values) if value == ""]
    if empty:
        return path, RoiRequest(error=f"{at}: no value for {', '.join(empty)} (columns {','.join(ROIS_COLUMNS)})")
    request = roi_request(",".join(values))
    return path, request if request.error is None else RoiRequest(error=f"{at}: {request.error}", text=request.text)


# ---------------------------------------------------------------------- reports


def rows(predictions: Iterable[Prediction], site: str | None = None) -> list[dict]:
    """Report rows; with a site profile in use, each row also names it (`site_profile`),
    so a reader knows which operating point made the call."""
    out = []
    for p in predictions:
        d = p.to_dict()
        if d["threshold"] is not None and d["threshold"] != d["threshold"]:  # NaN: not known
            d["threshold"] = None
        if site is not None:
            d[SITE_FIELD] = site
        out.append(d)
    return out


def write_json(target: str | os.PathLike, predictions: Iterable[Prediction], site: str | None = None) -> None:
    """A JSON list of {path, label, probability, threshold, out_of_distribution, ood_score,
    error} (+ site_profile when one is in use), written atomically (out_of_distribution and
    ood_score are null when the model has no OOD score)."""
    atomic.write_json(target, rows(predictions, site))


def write_csv(target: str | os.PathLike, predictions: Iterable[Prediction], site: str | None = None) -> None:
    """CSV with the columns of REPORT_FIELDS, REGION_FIELDS, FRAME_FIELDS and ROI_FIELDS (an empty
    cell for null; lists of frames joined with ";"; + site_profile when one is in use);
    atomically."""
    buffer = io.StringIO()
    fields = REPORT_FIELDS + REGION_FIELDS + FRAME_FIELDS + ROI_FIELDS + ((SITE_FIELD,) if site is not None else ())
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows(predictions, site):
        writer.writerow({k: "" if v is None else v for k, v in flat_row(row).items()})
    atomic.write_text(target, buffer.getvalue())


def flat_row(row: dict) -> dict:
    """A report row with its nested region, frames and ROI as CSV columns."""
    out = {k: v for k, v in row.items() if k not in ("region", "frames", "roi")}
    roi = row.get("roi") or {}
    out.update(roi_x=roi.get("x"), roi_y=roi.get("y"), roi_width=roi.get("width"), roi_height=roi.get("height"),
               roi_source=roi.get("source"))
    region, frames = row.get("region") or {}, row.get("frames") or {}
    mm = region.get("mm_per_pixel") or (None, None)
    out.update(region_x=region.get("x"), region_y=region.get("y"), region_width=region.get("width"),
               region_height=region.get("height"), region_source=region.get("source"),
               mm_per_pixel_x=mm[0], mm_per_pixel_y=mm[1])
    joined = lambda key: ";".join(map(str, frames[key])) if frames.get(key) is not None else None  # noqa: E731
    out.update(frames_in_file=frames.get("count"), frames_used=joined("used"),
               frame_probabilities=joined("probabilities"), frame_summary=frames.get("summary"),
               max_frame_probability=frames.get("max_probability"))
    return out


class PartialResults:
    """While a long run works, `<target>.partial.json` holds the results so far:
    {"partial": true, "done": k, "total": n, "results": [rows]}, rewritten atomically at
    most every `every_seconds`. The final report replaces it (finish() removes it), so a
    run that crashes or is killed half-way leaves either nothing or this valid file,
    which says it is partial; never a truncated or complete-looking report."""

    SUFFIX = ".partial.json"

    def __init__(self, target: str | os.PathLike, every_seconds: float = 10.0) -> None:
        self.path = Path(str(target) + self.SUFFIX)
        self.every = every_seconds
        self._last = time.monotonic()

    def update(self, predictions: Sequence[Prediction], total: int) -> None:
        if time.monotonic() - self._last < self.every or len(predictions) >= total:
            return
        atomic.write_json(self.path, {
            "partial": True,
            "note": "bcd predict had not finished when this was written; if it is still here, the run was "
                    "interrupted and these are the results it had so far",
            "done": len(predictions), "total": total,
            "results": rows(sorted(predictions, key=lambda p: p.path or "")),
        })
        self._last = time.monotonic()

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


OOD_NOTE = "OUT-OF-DISTRIBUTION: unlike the training images, do not trust this prediction"


def roi_note(p: Prediction) -> str:
    """The lesion box of a prediction in words: "roi 40,60,120,90 (given)"."""
    if p.roi is None:
        return f"roi: {p.roi_source}, the whole scan region was classified"
    return f"roi {p.roi.x},{p.roi.y},{p.roi.width},{p.roi.height} ({p.roi_source})"


def format_table(predictions: Sequence[Prediction]) -> str:
    """A plain-text table: path, label, probability, threshold; with a lesion box, the
    row names it (roi_note); a row flagged out of distribution ends with OOD_NOTE; a
    failed row shows "ERROR: <reason>" after its path."""
    cells = []
    for p in predictions:
        threshold = "" if p.threshold is None or p.threshold != p.threshold else f"{p.threshold:.4f}"
        if p.ok:
            if p.frames is not None and len(p.frames.numbers) > 1:
                threshold = (f"{threshold}  mean of {len(p.frames.numbers)} frames "
                             f"(highest {p.frames.max_probability:.4f})")
            elif p.frames is not None:
                threshold = f"{threshold}  frame {p.frames.numbers[0]} of {p.frames.count}"
            if p.roi_source is not None:
                threshold = f"{threshold}  {roi_note(p)}"
            if p.out_of_distribution:
                threshold = f"{threshold}  {OOD_NOTE}"
            cells.append((p.path or "-", p.label or "", f"{p.probability:.4f}", threshold))
        else:
            reason = p.error or "failed"
            if p.path and reason.startswith(f"{p.path}: "):
                reason = reason[len(p.path) + 2:]
            cells.append((p.path or "-", f"ERROR: {reason}", None, None))
    path_w = max([len("path")] + [len(c[0]) for c in cells])
    label_w = max([len("label")] + [len(c[1]) for c in cells if c[2] is not None])
    lines = [f"{'path'.ljust(path_w)}  {'label'.ljust(label_w)}  {'probability':>11}  {'threshold':>9}"]
    for path, label, prob, threshold in cells:
        if prob is None:
            lines.append(f"{path.ljust(path_w)}  {label}")
        else:
            lines.append(f"{path.ljust(path_w)}  {label.ljust(label_w)}  {prob:>11}  {threshold.rjust(9)}")
    return "\n".join(line.rstrip() for line in lines)
