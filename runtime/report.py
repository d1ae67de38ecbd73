"""One-page reports (issue 21, part 5): what a clinician files with the exam.

    from runtime.report import report_html, write_report, write_reports
    scan = clf.decode("scan.png")
    pred = clf.predict_decoded([scan], ["scan.png"], with_cam=True)[0]
    page = report_html(pred, scan.display, clf)       # the HTML, as a string
    write_report("scan_report.html", pred, scan.display, clf)
    write_reports(clf, ["scans/"], "reports/")        # one per image + index.html + summary.csv

A report is one self-contained HTML page that prints to one A4 sheet (runtime/report_page.py):
the scan with the box that was classified (and the lesion box, when the prediction has
one), the Grad-CAM overlay, the probability against the threshold and whose threshold it
is (the model's or a site profile's), the call worded as decision support, the
out-of-distribution flag, the model's name, version, variant and the sha256 of its file,
the date, the input's name, a cine loop's frames and the disclaimer. A prediction that
failed (an unreadable file, a colour Doppler screen refused) gives a report that says why.

Numpy, OpenCV and the standard library only, like the rest of the runtime.
"""
from __future__ import annotations

import base64
import csv
import io
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from runtime import atomic, gradcam
from runtime.classifier import Classifier, Prediction
from runtime.engines import AUTO
from runtime.host import DISCLAIMER, utc_now
from runtime.images import DEFAULT_MAX_PIXELS, to_bgr_uint8
from runtime.model_files import sha256_file
from runtime.predict_files import ROI_FIELDS, PredictConfig, expand_inputs, flat_row, rows
from runtime.report_page import Page, Panel, Result, IndexRow, esc, index_page, report_page
from runtime.scan_input import DecodedScan
from runtime.site_adapt import adaptation_note
from runtime.site_profile import load_for

IMAGE_SIDE = 640              # px, long side of the pictures in a report (about 180 dpi on the printed page)
REGION_COLOUR = "#00a8ff"     # the scan region classified
LESION_COLOUR = "#ffb000"     # the lesion box (Prediction.roi)
MAX_FRAMES_LISTED = 8        # a cine loop's frames listed with their probabilities (the page has room for so many)
REPORT_SUFFIX = "_report.html"
INDEX_NAME = "index.html"
SUMMARY_NAME = "summary.csv"
SUMMARY_FIELDS = ("path", "report", "label", "probability", "threshold", "out_of_distribution", "ood_score",
                  "error")
_REGION_SOURCES = {"dicom": "the DICOM file's own tissue region", "found": "found by the scan-region finder",
                   "given": "the box given", "whole": "the whole image"}
_UNSAFE = re.compile(r"[^\w.()+-]+")

Progress = Callable[[int, int], None]


class ReportError(ValueError):
    """Reports cannot be written as asked (no inputs, an output folder that can't be written)."""


# ---------------------------------------------------------------------- config


@dataclass(frozen=True)
class ReportConfig:
    """What `bcd report` can set (the library's defaults; the CLI passes what is given)."""

    model: str | os.PathLike | None = None   # export dir, manifest.json or .onnx; None: $BCD_MODEL, else the shipped model
    variant: str | None = None               # None: onnx-int8 if it passed the export checks, else onnx-fp32
    threads: int | None = None               # None: physical cores
    backend: str = AUTO
    max_pixels: int = DEFAULT_MAX_PIXELS     # decompression-bomb guard
    region: str | None = None                # auto | off | "X,Y,W,H"; None: the export's setting (auto if none)
    frames: str | int = "middle"             # a cine loop's frames: middle | all | frame number N (from 1)
    site: str | os.PathLike | None = None    # a site profile from `bcd calibrate`; None: the model's threshold
    roi: str | None = None                   # the lesion box: "X,Y,W,H" (one image only) or auto; None: none

    def __post_init__(self) -> None:
        self.predict_config()                # the same checks as `bcd predict`, before any file is read

    def predict_config(self) -> PredictConfig:
        return PredictConfig(model=self.model, variant=self.variant, threads=self.threads, backend=self.backend,
                             max_pixels=self.max_pixels, region=self.region, frames=self.frames, roi=self.roi)

    def load_classifier(self) -> Classifier:
        """The model, with the site profile applied when one is set."""
        classifier = self.predict_config().load_classifier()
        load_for(classifier, self.site)
        return classifier


# ---------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelFacts:
    """Which model made the call, as a report names it."""

    name: str                 # the export's folder name (a lone .onnx file: its stem)
    tool_version: str         # the bcd version that exported it
    exported: str             # when (UTC, ISO 8601)
    variant: str
    format: str
    precision: str
    engine: str
    file: str
    sha256: str               # of the model file
    sha256_checked: bool      # True: it matched the manifest's when the model was loaded
    adapted: str = ""         # non-empty: `bcd adapt` aligned it to one site's scans (what, when)

    @property
    def version(self) -> str:
        return f"exported {self.exported or 'at an unknown time'} by breast-cancer-edge {self.tool_version}"


def model_facts(classifier: Classifier) -> ModelFacts:
    """The facts of the served model. Its sha256 is the manifest's when the file was checked
    against it on load (the same bytes), else computed from the file now."""
    info, manifest = classifier.info, classifier.manifest
    listed = None
    if manifest is not None and info.source == "manifest" and info.sha256_verified:
        listed = next((v.sha256 for v in manifest.variants if v.name == info.variant), None)
    named_by_folder = info.source == "manifest"
    return ModelFacts(
        name=info.file.parent.name if named_by_folder else info.file.stem,
        tool_version=str((manifest.tool or {}).get("version", "unknown")) if manifest is not None else "unknown",
        exported=str(manifest.created) if manifest is not None else "",
        variant=info.variant, format=info.format, precision=info.precision, engine=classifier.engine,
        file=info.file.name, sha256=(listed or sha256_file(info.file)).lower(), sha256_checked=listed is not None,
        adapted=adaptation_note(manifest.training_data if manifest is not None else None))


def threshold_source(classifier: Classifier, pred: Prediction | None = None) -> str:
    """Whose threshold makes the call: the model's (with its policy), its lesion-box
    threshold (a prediction with a box, when the model has one), or a site profile's."""
    site = classifier.site
    if site is not None:
        return f"site profile '{_short(site.name)}'" + (f": {site.policy}" if site.policy else "")
    t = classifier.manifest.threshold if classifier.manifest is not None else {}
    whose = "the model's"
    if pred is not None and pred.roi is not None and classifier.roi_threshold is not None and t.get("roi"):
        t, whose = t["roi"], "the model's for a lesion box"
    details = ", ".join(x for x in (t.get("policy"), f"chosen on the {t['chosen_on']}" if t.get("chosen_on")
                                    else None) if x)
    return whose + (f": {details}" if details else "")


# ---------------------------------------------------------------------- one report


def report_html(pred: Prediction, image: np.ndarray | DecodedScan | None, classifier: Classifier, *,
                input_name: str | None = None, created: str | None = None,
                facts: ModelFacts | None = None) -> str:
    """The one-page report of `pred` as a self-contained HTML document.

    image: the decoded image the prediction was made on (the HxWx3 uint8 BGR array, or
        the runtime.scan_input.DecodedScan: its displayed frame); None when the file could
        not be read. Boxes and the Grad-CAM map are in its pixels.
    classifier: the one that made the prediction (model facts, threshold source, site).
    input_name: the name shown (default: the prediction's path).
    created: the report's time (default: now, UTC); facts: reuse model_facts() across reports.
    """
    facts = facts or model_facts(classifier)
    created = created or utc_now()
    name = input_name or pred.path or "image"
    picture = _as_image(image)
    lesion = lesion_box(pred)
    page = Page(
        title="Breast ultrasound: model report",
        subtitle=f"<b>{esc(Path(name).name or name, 120)}</b> &middot; report created {esc(created)} (UTC) "
                 f"&middot; model {esc(facts.name)} ({esc(facts.variant)})",
        panels=_panels(pred, picture, lesion),
        result=_result(pred, classifier),
        facts=_facts(pred, classifier, facts, name, created, lesion),
        data=_data(pred, classifier, facts, name, created, lesion),
    )
    return report_page(page)


def write_report(target: str | os.PathLike, pred: Prediction, image: np.ndarray | DecodedScan | None,
                 classifier: Classifier, **options) -> Path:
    """Write report_html(pred, image, classifier, **options) to `target`, atomically."""
    atomic.write_text(target, report_html(pred, image, classifier, **options))
    return Path(target)


def lesion_box(pred: Prediction) -> tuple[tuple[int, int, int, int], str] | None:
    """The prediction's lesion box (x, y, w, h) and its source, if it has one. Read with
    getattr: Prediction.roi / roi_source arrive with the region-of-interest work."""
    box = _box(getattr(pred, "roi", None))
    return (box, str(getattr(pred, "roi_source", None) or "given")) if box is not None else None


def _box(value: Any) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) from a box object (x, y, width, height), a dict or a 4-sequence."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = [value.get(k) for k in ("x", "y", "width", "height")]
    elif all(hasattr(value, k) for k in ("x", "y", "width", "height")):
        value = [value.x, value.y, value.width, value.height]
    try:
        x, y, w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (x, y, w, h) if w > 0 and h > 0 else None


# ---------------------------------------------------------------------- pictures


def _as_image(image) -> np.ndarray | None:
    if image is None:
        return None
    if isinstance(image, DecodedScan):
        image = image.display
    return to_bgr_uint8(np.asarray(image))


def _panels(pred: Prediction, image: np.ndarray | None, lesion) -> list[Panel]:
    legend = _swatch(REGION_COLOUR, "scan region classified") if pred.region is not None else ""
    legend += _swatch(LESION_COLOUR, "lesion box") if lesion is not None else ""
    if image is None:
        return [Panel("Scan", None, missing="The file could not be read: there is no image to show."),
                Panel("Grad-CAM heat map", None, missing="Not classified.")]
    small, scale = _fit(image)
    boxes = ([(_region_box(pred), REGION_COLOUR)] if pred.region is not None else []) + \
            ([(lesion[0], LESION_COLOUR)] if lesion is not None else [])
    scan = Panel("Scan", _png_uri(_drawn(small, boxes, scale)), legend)
    if not pred.ok:
        heat = Panel("Grad-CAM heat map", None, missing="Not classified: no heat map.")
    elif pred.cam is None:
        heat = Panel("Grad-CAM heat map", None, missing="This model variant has no Grad-CAM output.")
    else:
        overlay = gradcam.overlay(small, pred.cam)
        caption = "red: the strongest evidence the model used, blue: none (scaled per image)"
        lesion_legend = _swatch(LESION_COLOUR, "lesion box") if lesion is not None else ""
        lesion_only = [(lesion[0], LESION_COLOUR)] if lesion is not None else []
        heat = Panel("Grad-CAM heat map", _png_uri(_drawn(overlay, lesion_only, scale)), esc(caption) + lesion_legend)
    return [scan, heat]


def _fit(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The image shrunk to IMAGE_SIDE on its long side (never enlarged), and the scale."""
    h, w = image.shape[:2]
    scale = min(1.0, IMAGE_SIDE / max(h, w))
    if scale == 1.0:
        return image.copy(), 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _region_box(pred: Prediction) -> tuple[int, int, int, int]:
    r = pred.region
    return r.x, r.y, r.width, r.height


def _drawn(image: np.ndarray, boxes, scale: float) -> np.ndarray:
    """The image with each (box, colour) outlined, boxes in the original image's pixels."""
    out = image.copy()
    h, w = out.shape[:2]
    thickness = max(2, round(max(h, w) / 260))
    for (x, y, bw, bh), colour in boxes:
        x0, y0 = _clamp(round(x * scale), w), _clamp(round(y * scale), h)
        x1, y1 = _clamp(round((x + bw) * scale) - 1, w), _clamp(round((y + bh) * scale) - 1, h)
        cv2.rectangle(out, (x0, y0), (x1, y1), _bgr(colour), thickness)
    return out


def _clamp(v: int, size: int) -> int:
    return min(max(int(v), 0), size - 1)


def _bgr(colour: str) -> tuple[int, int, int]:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return b, g, r


def _png_uri(image: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("could not encode a report picture as PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _swatch(colour: str, text: str) -> str:
    return f"<span class=\"swatch\" style=\"border-color:{colour}\"></span>{esc(text)}"


# ---------------------------------------------------------------------- text


def _result(pred: Prediction, classifier: Classifier) -> Result:
    if not pred.ok:
        return Result(ok=False, error=_reason(pred))
    p, t = float(pred.probability), float(pred.threshold)
    above = p >= t
    label = classifier.positive if above else classifier.negative
    side = "at or above" if above else "below"
    sentence = (f"{side} the threshold: the model reads this image as {label}-looking. Decision support for the "
                "reading clinician, not a diagnosis.")
    ood = ("Out of distribution: this image looks unlike the images the model was trained on, so its probability "
           "and call mean nothing here." if pred.out_of_distribution else "")
    whose = f"site profile '{_short(classifier.site.name)}'" if classifier.site is not None else "the model's"
    return Result(ok=True, call=f"{label}-looking", above=above, probability=p, threshold=t,
                  shown=agreeing_digits(p, t), threshold_whose=whose, sentence=sentence, ood_warning=ood)


def agreeing_digits(p: float, t: float, least: int = 3) -> tuple[str, str]:
    """p and t printed with `least` decimals, or more where needed for the printed numbers
    to agree with the decision (0.409 against 0.41 must not both read 0.41)."""
    for digits in (least, least + 1, least + 3):
        ps, ts = f"{p:.{digits}f}", f"{t:.{digits}f}"
        if (float(ps) >= float(ts)) == (p >= t):
            return ps, ts
    return f"{p:.8f}", f"{t:.8f}"


def _short(name: str, limit: int = 60) -> str:
    """A name from outside (a site profile's) shortened to fit its line."""
    return name if len(name) <= limit else name[:limit - 1] + "\u2026"


def _reason(pred: Prediction) -> str:
    reason = pred.error or "failed"
    return reason[len(pred.path) + 2:] if pred.path and reason.startswith(f"{pred.path}: ") else reason


def _facts(pred: Prediction, classifier: Classifier, facts: ModelFacts, name: str, created: str,
           lesion) -> list[tuple[str, str]]:
    site = classifier.site
    recal = site is not None and site.recalibration.method != "none"
    threshold = (f"{pred.threshold:.4f}, {esc(threshold_source(classifier, pred), 200)}"
                 + (f"; probabilities recalibrated by the profile ({esc(site.recalibration.method)})" if recal else "")
                 if _finite(pred.threshold) else "unknown")
    checked = "checked against the manifest on loading" if facts.sha256_checked else "computed from the file"
    return [
        ("Input", esc(name, 200)),
        ("Report created", f"{esc(created)} (UTC)"),
        ("Scan region", _region_text(pred)),
        ("Lesion box", _lesion_text(lesion)),
        ("Cine frames", esc(frames_text(pred))),
        ("Out of distribution", esc(ood_text(pred, classifier))),
        ("Operating threshold", threshold),
        ("Site profile", esc(_short(site.name)) if site is not None else "none (the model's own threshold)"),
        ("Model", f"{esc(facts.name)}, {esc(facts.version)}"
                  + (f"; <b>{esc(facts.adapted)}</b>" if facts.adapted else "")),
        ("Variant", f"{esc(facts.variant)} ({esc(facts.format)}, {esc(facts.precision)}), file {esc(facts.file)}, "
                    f"run by {esc(facts.engine)}"),
        ("Model file sha256", f"<span class=\"mono\" id=\"bcd-sha256\">{esc(facts.sha256)}</span> ({checked})"),
    ]


def _region_text(pred: Prediction) -> str:
    r = pred.region
    if r is None:
        return "none (the image was not read)"
    mm = f"; {r.mm_per_pixel[0]:.3f} &times; {r.mm_per_pixel[1]:.3f} mm per pixel" if r.mm_per_pixel else ""
    return (_swatch(REGION_COLOUR, "") + f"x {r.x}, y {r.y}, {r.width} &times; {r.height} px: "
            f"{esc(_REGION_SOURCES.get(r.source, r.source))}{mm}")


def _lesion_text(lesion) -> str:
    if lesion is None:
        return "none (no lesion box was given or proposed)"
    (x, y, w, h), source = lesion
    return _swatch(LESION_COLOUR, "") + f"x {x}, y {y}, {w} &times; {h} px ({esc(source)})"


def frames_text(pred: Prediction) -> str:
    f = pred.frames
    if f is None:
        return "a still image" if pred.region is not None else "none"
    if len(f.numbers) == 1:
        return f"cine loop of {f.count} frames: frame {f.numbers[0]} classified"
    each = ", ".join(f"{n}: {p:.3f}" for n, p in zip(f.numbers[:MAX_FRAMES_LISTED], f.probabilities))
    more = f" and {len(f.numbers) - MAX_FRAMES_LISTED} more" if len(f.numbers) > MAX_FRAMES_LISTED else ""
    return (f"cine loop of {f.count} frames: {len(f.numbers)} classified, the probability is their mean "
            f"(highest {f.max_probability:.3f}); frame: probability {each}{more}")


def ood_text(pred: Prediction, classifier: Classifier) -> str:
    if pred.out_of_distribution is None:
        return ("not checked (the image was not classified)" if not pred.ok else
                "not available: this model raises no out-of-distribution flag")
    limit = f" (score {pred.ood_score:.3g}, flag at {classifier.ood_threshold:.3g})" \
        if pred.ood_score is not None and classifier.ood_threshold is not None else ""
    return ("FLAGGED: unlike the training images, do not trust this prediction" if pred.out_of_distribution
            else "not flagged") + limit


def _data(pred: Prediction, classifier: Classifier, facts: ModelFacts, name: str, created: str,
          lesion) -> dict[str, Any]:
    site = classifier.site
    return _finite_only({
        "prediction": rows([pred], site.name if site is not None else None)[0],
        "input": name, "created": created,
        "threshold_source": threshold_source(classifier, pred),
        "site_profile": site.name if site is not None else None,
        "lesion_box": None if lesion is None else {**dict(zip(("x", "y", "width", "height"), lesion[0])),
                                                   "source": lesion[1]},
        "model": {**asdict(facts), "version": facts.version},
        "disclaimer": DISCLAIMER,
    })


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _finite_only(obj):
    """JSON-safe: non-finite numbers become null."""
    if isinstance(obj, dict):
        return {k: _finite_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_only(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------- many reports


@dataclass
class ReportEntry:
    prediction: Prediction
    file: Path                    # the report written


@dataclass
class ReportSet:
    out_dir: Path
    entries: list[ReportEntry]
    index: Path
    summary: Path

    @property
    def failed(self) -> int:
        return sum(not e.prediction.ok for e in self.entries)


def report_name(path: str | os.PathLike | None) -> str:
    """`<stem>_report.html`, the stem kept to letters, digits and . ( ) + - _."""
    stem = _UNSAFE.sub("_", Path(str(path or "image")).stem).strip("._")[:100]
    return f"{stem or 'image'}{REPORT_SUFFIX}"


def report_names(paths: Sequence[str]) -> dict[str, str]:
    """A report name per path, unique even when stems collide (benign/1.png and
    malignant/1.png: `1_report.html`, `1_2_report.html`), ignoring case."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in paths:
        base = report_name(path)[:-len(REPORT_SUFFIX)]
        name, n = f"{base}{REPORT_SUFFIX}", 1
        while name.lower() in taken:
            n += 1
            name = f"{base}_{n}{REPORT_SUFFIX}"
        taken.add(name.lower())
        names[path] = name
    return names


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create the report folder and check it can be written (ReportError says why not)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: exists and is not a folder (reports are written into a folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".bcd-write-check-"):
            pass
    except OSError as err:
        raise ReportError(f"{out}: cannot write reports there ({err.strerror or err})") from None
    return out


def classify_for_report(classifier: Classifier, path: str | os.PathLike, roi=None
                        ) -> tuple[Prediction, np.ndarray | None]:
    """One file's Prediction (with its Grad-CAM map when the variant has one; for the
    lesion box `roi` as Classifier.predict takes it) and the image it was made on (None
    when the file could not be read); never raises for a bad file."""
    _, scan, error = classifier.decode_or_error(path)
    if scan is None:
        return Prediction(str(path), None, None, classifier.threshold, error=error), None
    pred = classifier.predict_decoded([scan], [str(path)], with_cam=classifier.has_cam, roi=roi)[0]
    return pred, scan.display


def write_reports(classifier: Classifier, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                  progress: Progress | None = None, created: str | None = None, roi=None) -> ReportSet:
    """One report per file named by `inputs` (files, folders searched recursively, globs)
    in `out_dir`, plus index.html (a table linking to each) and summary.csv; every file
    written atomically. An input naming nothing usable gets an error report; ReportError
    when there are no inputs or no input names any file, or a box (`roi` other than
    "auto") is given for more than one file."""
    inputs = [str(i) for i in inputs]
    if not inputs:
        raise ReportError("no inputs: name image files, folders or glob patterns")
    files, problems = expand_inputs(inputs)
    if not files:
        raise ReportError("no image files found: " + "; ".join(p.error or str(p.path) for p in problems))
    if roi is not None and str(roi).strip().lower() != "auto" and len(files) > 1:
        raise ReportError(f"a lesion box is for one image; {len(files)} files were named (use --roi auto)")
    out = prepare_out_dir(out_dir)
    created = created or utc_now()
    facts = model_facts(classifier)
    names = report_names([str(f) for f in files] + [str(p.path) for p in problems])
    entries: list[ReportEntry] = []
    work = [(str(f), None) for f in files] + [(str(p.path), p) for p in problems]
    for done, (path, problem) in enumerate(work, 1):
        if problem is not None:
            problem.threshold = classifier.threshold
            pred, image = problem, None
        else:
            pred, image = classify_for_report(classifier, path, roi)
        entries.append(ReportEntry(pred, write_report(out / names[path], pred, image, classifier,
                                                      created=created, facts=facts)))
        if progress is not None:
            progress(done, len(work))
    entries.sort(key=lambda e: e.prediction.path or "")
    result = ReportSet(out, entries, out / INDEX_NAME, out / SUMMARY_NAME)
    atomic.write_text(result.index, _index_html(entries, classifier, facts, created))
    atomic.write_text(result.summary, _summary_csv(entries, classifier))
    return result


def _index_html(entries: list[ReportEntry], classifier: Classifier, facts: ModelFacts, created: str) -> str:
    site = classifier.site
    subtitle = (f"{len(entries)} input(s) &middot; created {esc(created)} (UTC) &middot; model {esc(facts.name)} "
                f"({esc(facts.variant)}, sha256 {esc(facts.sha256[:12])}&hellip;) &middot; threshold "
                f"{classifier.threshold:.4f}, {esc(threshold_source(classifier))}"
                + (f" (lesion boxes: {classifier.roi_threshold:.4f})" if classifier.roi_threshold is not None
                   and any(e.prediction.roi is not None for e in entries) else "")
                + f" &middot; site profile {esc(site.name) if site is not None else 'none'}")
    out = []
    for e in entries:
        p = e.prediction
        shown = agreeing_digits(p.probability, p.threshold, least=4) if p.ok else ("", "")
        ood = "" if not p.ok else "n/a" if p.out_of_distribution is None else \
            "flagged" if p.out_of_distribution else "no"
        out.append(IndexRow(file=p.path or "", report=e.file.name, probability=shown[0],
                            threshold=shown[1] if p.ok else (f"{p.threshold:.4f}" if _finite(p.threshold) else ""),
                            call=f"{p.label}-looking" if p.ok else "", ood=ood,
                            error="" if p.ok else _reason(p)))
    return index_page("Breast ultrasound: model reports", subtitle, out)


def _summary_csv(entries: list[ReportEntry], classifier: Classifier) -> str:
    """index.html's table as CSV (the values of `bcd predict --csv`, plus the report's file name)."""
    site = classifier.site.name if classifier.site is not None else None
    buffer = io.StringIO()
    boxes = any(e.prediction.roi_source is not None for e in entries)
    fields = SUMMARY_FIELDS + (ROI_FIELDS if boxes else ()) + (("site_profile",) if site is not None else ())
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for entry, row in zip(entries, rows([e.prediction for e in entries], site)):
        row = {**flat_row(row), "report": entry.file.name}
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return buffer.getvalue()
