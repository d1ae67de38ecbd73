"""One-page reports (runtime/report.py, issue 21 part 5) with the shipped INT8 model: the
numbers printed are the prediction's, the sha256 is the model file's, the pictures are
embedded and are the scan with its boxes and the Grad-CAM overlay, failures give a report
that says why, a folder gives one report per image with an index and a CSV. The browser
test prints a report with Chromium and checks it fills exactly one A4 page."""
from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import html
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import gradcam
from runtime.classifier import Classifier, FrameResults
from runtime.lesion_box import Box
from runtime.host import DISCLAIMER
from runtime.report import (INDEX_NAME, LESION_COLOUR, REGION_COLOUR, SUMMARY_NAME, ReportConfig, ReportError,
                            agreeing_digits, classify_for_report, model_facts, report_html, report_name,
                            report_names, write_report, write_reports)
from runtime.shipped import MODELS_DIR, SHIPPED_MODEL
from runtime.site_profile import Recalibration, SiteProfile
from tests.conftest import BUSI, dicom_bytes, missing, needs_module

REPO = Path(__file__).resolve().parents[2]
MODEL = MODELS_DIR / SHIPPED_MODEL
MODEL_FILE = MODEL / "onnx-int8.onnx"
RESULTS = REPO / "results"
CHROMIUM = "/usr/bin/chromium"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def clf() -> Classifier:
    if not (MODEL / "manifest.json").is_file():
        missing(f"the shipped model {MODEL} is missing")
    return Classifier.load(MODEL, threads=1, backend="onnxruntime")


def scan(seed: int = 0, height: int = 300, width: int = 400) -> np.ndarray:
    """A gray speckle image with a bright blob (passes the input checks), BGR."""
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 90, (height, width), dtype=np.uint8), (3, 3), 0)
    gray[height // 3:height // 2, width // 3:width // 2] += 120
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


@pytest.fixture(scope="module")
def real_image(tmp_path_factory) -> Path:
    """A real BUSI malignant image of the shipped model's held-out test split when the data
    is here (copied to busi/<class>/<name>), else a generated scan."""
    folder = tmp_path_factory.mktemp("real")
    if BUSI.is_dir():
        split = json.loads((MODEL / "split.json").read_text())
        name = next(f["path"] for f in split["files"]["test"]
                    if f["class"] == "malignant" and f.get("source", "busi") == "busi")
        target = folder / "busi" / name
        target.parent.mkdir(parents=True)
        return Path(shutil.copy(BUSI / name, target))
    path = folder / "generated.png"
    cv2.imwrite(str(path), scan(3))
    return path


def pictures(page: str) -> list[np.ndarray]:
    """The report's embedded PNGs, decoded."""
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [cv2.imdecode(np.frombuffer(base64.b64decode(u), np.uint8), cv2.IMREAD_COLOR) for u in uris]


def data_block(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="bcd-report-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def shown_value(page: str, element: str) -> tuple[float, str]:
    """(the exact value, the text printed) of the probability or threshold element."""
    found = re.search(rf'id="bcd-{element}" data-value="([^"]+)">([^<]+)<', page)
    return float(found.group(1)), found.group(2)


def assert_self_contained(page: str) -> None:
    """Nothing fetched from anywhere: every src is a data URI, no links, styles or scripts
    from outside, and the only script is the JSON data block (never run)."""
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'\ssrc="([^"]*)"', page))
    for outside in ("<link", "@import", "url(", "href=", "<iframe", "<object", "<embed"):
        assert outside not in page, outside
    assert re.findall(r"<script[^>]*>", page) == ['<script type="application/json" id="bcd-report-data">']


def bgr(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (5, 3, 1))


# ---------------------------------------------------------------------- one report


def test_report_of_a_real_image_prints_the_predictions_numbers_and_the_models_hash(clf, real_image):
    pred, image = classify_for_report(clf, real_image)
    assert pred.ok and pred.cam is not None and image.shape[:2] == pred.cam.shape
    page = report_html(pred, image, clf, created="2026-01-02T03:04:05+00:00")

    probability, printed_p = shown_value(page, "probability")
    threshold, printed_t = shown_value(page, "threshold")
    assert probability == pred.probability and threshold == pred.threshold == clf.threshold
    assert (printed_p, printed_t) == agreeing_digits(pred.probability, pred.threshold)
    assert (float(printed_p) >= float(printed_t)) == (pred.probability >= pred.threshold)
    assert f"threshold {printed_t}</text>" in page                     # marked on the bar
    call = f"{pred.label}-looking"
    assert f"Model's call: {call}</div>" in page
    assert "the model&#x27;s: best specificity at sensitivity" in page and "Site profile</th><td>none" in page

    sha = hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()
    assert f'id="bcd-sha256">{sha}</span>' in page
    manifest = json.loads((MODEL / "manifest.json").read_text())
    assert f"exported {manifest['created']} by breast-cancer-edge {manifest['tool']['version']}" in page
    assert SHIPPED_MODEL in page and "onnx-int8" in page and html.escape(real_image.name) in page
    assert "2026-01-02T03:04:05+00:00 (UTC)" in page and "a still image" in page
    assert page.count(DISCLAIMER) >= 2
    assert "not flagged" in page if not pred.out_of_distribution else "Out of distribution" in page
    assert_self_contained(page)

    data = data_block(page)
    assert data["prediction"]["probability"] == pred.probability and data["model"]["sha256"] == sha
    assert data["disclaimer"] == DISCLAIMER and data["lesion_box"] is None and data["site_profile"] is None
    scan_png, heat_png = pictures(page)
    scale = min(1.0, 640 / max(image.shape[:2]))
    assert scan_png.shape[:2] == (round(image.shape[0] * scale), round(image.shape[1] * scale))
    assert heat_png.shape == scan_png.shape


def test_the_pictures_are_the_scan_with_its_boxes_and_the_gradcam_overlay(clf):
    image = scan(5)
    box = (40, 30, 300, 220)
    pred = clf.predict_decoded([image], ["generated.png"], with_cam=True, region=",".join(map(str, box)))[0]
    assert pred.ok and (pred.region.x, pred.region.width, pred.region.source) == (40, 300, "given")
    plain_scan, plain_heat = pictures(report_html(pred, image, clf))
    assert np.array_equal(plain_heat, gradcam.overlay(image, pred.cam))   # at the image's own size: no rescaling
    assert tuple(plain_scan[30 + 100, 40]) == bgr(REGION_COLOUR)          # the region's left edge
    assert tuple(plain_scan[30, 40 + 150]) == bgr(REGION_COLOUR)          # its top edge
    assert np.array_equal(plain_scan[60:200, 80:300], image[60:200, 80:300])   # inside: the scan untouched

    pred = clf.predict_decoded([image], ["generated.png"], with_cam=True, region=",".join(map(str, box)),
                               roi=(150, 100, 80, 70))[0]                   # the clinician's lesion box
    assert pred.ok and pred.roi_source == "given"
    page = report_html(pred, image, clf)
    with_roi, heat_roi = pictures(page)
    assert tuple(with_roi[100 + 30, 150]) == bgr(LESION_COLOUR) == tuple(heat_roi[100 + 30, 150])
    assert tuple(with_roi[30 + 100, 40]) == bgr(REGION_COLOUR)
    assert "x 150, y 100, 80 &times; 70 px (given)" in page and "lesion box" in page
    assert data_block(page)["lesion_box"] == {"x": 150, "y": 100, "width": 80, "height": 70, "source": "given"}
    pred.cam = None                                                        # a variant without a cam output
    page = report_html(pred, image, clf)
    assert len(pictures(page)) == 1 and "This model variant has no Grad-CAM output." in page


def test_a_large_image_is_shrunk_and_its_boxes_follow(clf):
    image = cv2.resize(scan(6), (1600, 1200), interpolation=cv2.INTER_NEAREST)
    pred = clf.predict_decoded([image], ["big.png"], with_cam=True, region="400,300,800,600")[0]
    picture = pictures(report_html(pred, image, clf))[0]
    assert picture.shape[:2] == (480, 640)                                 # scale 0.4
    assert tuple(picture[120 + 120, 160]) == bgr(REGION_COLOUR)


def test_an_unreadable_file_gives_a_report_that_says_why(clf, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(PNG + b"\x00\x00\x00\rIHDR" + b"\x01" * 7)
    pred, image = classify_for_report(clf, bad)
    assert not pred.ok and image is None
    page = report_html(pred, image, clf)
    assert "No result for this image" in page and 'id="bcd-error">not a readable image' in page
    assert "bcd-probability" not in page and "bcd-call" not in page and pictures(page) == []
    assert "The file could not be read" in page and DISCLAIMER in page
    assert hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest() in page
    data = data_block(page)
    assert data["prediction"]["error"] == pred.error and data["prediction"]["probability"] is None
    assert_self_contained(page)


def test_a_refused_colour_screen_shows_the_scan_and_the_reason(clf):
    image = scan(7)
    image[100:200, 100:250] = (0, 0, 255)                                  # a colour flow box
    pred = clf.predict_decoded([image], ["doppler.png"], with_cam=True)[0]
    assert not pred.ok and "colour" in pred.error
    page = report_html(pred, image, clf)
    assert len(pictures(page)) == 1 and "Not classified: no heat map." in page
    assert html.escape(pred.error.split(": ", 1)[1]) in page


def test_names_and_messages_from_outside_are_text(clf, tmp_path):
    hostile = tmp_path / "<img src=x onerror=alert(1)>.png"
    cv2.imwrite(str(tmp_path / "plain.png"), scan(8))
    hostile.write_bytes((tmp_path / "plain.png").read_bytes())
    pred, image = classify_for_report(clf, hostile)
    page = report_html(pred, image, clf)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert_self_contained(page)


def test_a_site_profile_is_named_with_its_threshold(real_image):
    with Classifier.load(MODEL, threads=1, backend="onnxruntime") as local:
        sha = hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()
        local.use_site(SiteProfile(name="clinic <a>", model={"sha256": sha, "variant": "onnx-int8"},
                                   threshold=0.5, policy="best specificity at sensitivity >= 0.85"))
        pred, image = classify_for_report(local, real_image)
        page = report_html(pred, image, local)
    assert shown_value(page, "threshold")[0] == 0.5 == pred.threshold
    assert "site profile &#x27;clinic &lt;a&gt;&#x27;: best specificity at sensitivity &gt;= 0.85" in page
    assert "Site profile</th><td>clinic &lt;a&gt;</td>" in page
    assert data_block(page)["site_profile"] == "clinic <a>"


def test_a_cine_loop_report_lists_its_frames(clf, tmp_path):
    needs_module("pydicom", minversion="3.0")
    frames = np.stack([scan(20 + k)[..., 0] for k in range(3)])
    path = tmp_path / "loop.dcm"
    path.write_bytes(dicom_bytes(frames, NumberOfFrames=3))
    scan_3 = clf.decode(path, frames="all")
    pred = clf.predict_decoded([scan_3], [str(path)], with_cam=True)[0]
    page = report_html(pred, scan_3, clf)
    assert pred.frames.numbers == [1, 2, 3]
    assert "cine loop of 3 frames: 3 classified, the probability is their mean" in page
    assert f"highest {pred.frames.max_probability:.3f}" in page
    assert shown_value(page, "probability")[0] == pred.probability


def test_write_report_is_atomic_and_the_demo_can_call_it(clf, real_image, tmp_path):
    scan_ = clf.decode(real_image)
    pred = clf.predict_decoded([scan_], [str(real_image)], with_cam=True)[0]
    target = write_report(tmp_path / "r" / report_name(real_image), pred, scan_, clf, input_name="upload.png")
    assert target.name.endswith("_report.html") and target.read_text().startswith("<!DOCTYPE html>")
    assert "upload.png" in target.read_text() and [p.name for p in target.parent.iterdir()] == [target.name]


# ---------------------------------------------------------------------- many reports


def test_report_names_are_unique_and_safe():
    names = report_names(["a/1.png", "b/1.png", "c/1.PNG", "x/1_2.png", "../we ird;name.png", "*.png"])
    assert list(names.values()) == ["1_report.html", "1_2_report.html", "1_3_report.html", "1_2_2_report.html",
                                    "we_ird_name_report.html", "image_report.html"]
    assert len({n.lower() for n in names.values()}) == len(names)


def test_a_folder_gives_one_report_per_image_an_index_and_a_csv(clf, real_image, tmp_path):
    root = tmp_path / "scans"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        shutil.copy(real_image, root / sub / "scan.png")
    cv2.imwrite(str(root / "b" / "Scan.png"), scan(9))                     # same stem, other case
    (root / "corrupt.png").write_bytes(PNG + b"junk")
    calls: list[tuple[int, int]] = []
    result = write_reports(clf, [root, tmp_path / "missing.png"], tmp_path / "out",
                           progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (5, 5) and len(calls) == 5
    assert len(result.entries) == 5 and result.failed == 2
    names = sorted(e.file.name for e in result.entries)
    assert names == ["Scan_2_report.html", "corrupt_report.html", "missing_report.html", "scan_3_report.html",
                     "scan_report.html"]
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == sorted(names + [INDEX_NAME, SUMMARY_NAME])               # nothing else (no temp files)

    index = result.index.read_text()
    for entry in result.entries:
        assert f'href="{entry.file.name}"' in index and entry.file.is_file()
        page = entry.file.read_text()
        assert DISCLAIMER in page
        if entry.prediction.ok:
            assert shown_value(page, "probability")[0] == entry.prediction.probability
    assert "file not found" in index and "not a readable image" in index and DISCLAIMER in index

    with open(result.summary, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [e.prediction.path for e in result.entries]
    assert [r["report"] for r in rows] == [e.file.name for e in result.entries]
    for row, entry in zip(rows, result.entries):
        p = entry.prediction
        assert (float(row["probability"]) == p.probability) if p.ok else (row["probability"] == "" and row["error"])
        assert float(row["threshold"]) == clf.threshold


def test_bad_outputs_and_no_inputs_are_clear_errors(clf, real_image, tmp_path):
    with pytest.raises(ReportError, match="no inputs"):
        write_reports(clf, [], tmp_path / "out")
    with pytest.raises(ReportError, match="no image files found: .*nothing.png: file not found"):
        write_reports(clf, [tmp_path / "nothing.png"], tmp_path / "out")
    assert not (tmp_path / "out").exists()                                 # nothing written
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ReportError, match="not a folder"):
        write_reports(clf, [real_image], afile)
    with pytest.raises(ReportError, match="cannot write reports there"):
        write_reports(clf, [real_image], afile / "sub")
    if os.geteuid() != 0:                                                  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        try:
            with pytest.raises(ReportError, match="cannot write reports there .*ermission denied"):
                write_reports(clf, [real_image], locked)
        finally:
            locked.chmod(0o700)


def test_report_config_checks_like_predict_and_loads_the_shipped_model():
    assert ReportConfig().predict_config().model_path() == MODEL
    with pytest.raises(ValueError, match="a box X,Y,W,H"):
        ReportConfig(region="1,2,3")
    with pytest.raises(ValueError):
        ReportConfig(frames="first")
    with ReportConfig(threads=1, backend="onnxruntime").load_classifier() as loaded:
        assert loaded.variant == "onnx-int8" and loaded.site is None
        assert model_facts(loaded).sha256 == hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- real browser


BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium_page():
    """A page in Debian's headless Chromium, driven by Playwright, with a throwaway profile."""
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} not installed")
    needs_module("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="bcd-chromium-") as profile:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=BROWSER_FLAGS, viewport={"width": 860, "height": 1200})
        try:
            yield browser.new_page()
        finally:
            browser.close()


def pdf_pages(pdf: bytes) -> int:
    """Page objects in a PDF (Chromium writes them uncompressed)."""
    assert pdf.startswith(b"%PDF-")
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf))


def crowded_report(image_file: Path, folder: Path, target: Path) -> Path:
    """A report with every optional part at its longest: a long path, a site profile with
    recalibration and a long name, the out-of-distribution warning, a lesion box and a cine
    loop of 60 frames (the flag and the frames are set by hand: this is about the layout)."""
    path = Path(shutil.copy(image_file, folder / ("a-very-long-file-name-" * 10 + ".png")))
    with Classifier.load(MODEL, threads=1, backend="onnxruntime") as local:
        sha = hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()
        local.use_site(SiteProfile(name="a clinic with a rather long name " * 3, model={"sha256": sha},
                                   threshold=0.42, policy="best specificity at sensitivity >= 0.90",
                                   recalibration=Recalibration("platt", a=1.2, b=-0.3)))
        pred, image = classify_for_report(local, path)
        pred.out_of_distribution = True
        pred.roi, pred.roi_source = Box(60, 50, 90, 70), "proposed:localiser"
        pred.frames = FrameResults(60, list(range(1, 61)), [0.5 + k / 200 for k in range(60)])
        return write_report(target, pred, image, local)


@pytest.mark.slow   # browser
def test_chromium_prints_each_report_on_one_a4_page(clf, real_image, tmp_path):
    """A real image's report, an error report with a very long message and name, and a
    report with everything that takes room: each prints to exactly one A4 page and fetches nothing.
    results/report.png is the real image's report as a browser shows it (docs/images/report.png)."""
    pred, image = classify_for_report(clf, real_image)
    shown_name = real_image.relative_to(real_image.parents[2]) if BUSI.is_dir() else real_image.name
    reports = {"real": write_report(tmp_path / "real.html", pred, image, clf, input_name=str(shown_name))}
    long_name = tmp_path / ("a-deep-folder-" * 15) / ("a-very-long-file-name-" * 10 + ".png")
    long_name.parent.mkdir()
    long_name.write_bytes(b"not an image " * 200)
    bad, _ = classify_for_report(clf, long_name)
    bad.error = f"{bad.error} " + "and a very long reason " * 60
    reports["error"] = write_report(tmp_path / "error.html", bad, None, clf)
    reports["crowded"] = crowded_report(real_image, long_name.parent, tmp_path / "crowded.html")
    RESULTS.mkdir(exist_ok=True)
    requests: list[str] = []
    with chromium_page() as page:
        page.on("request", lambda r: requests.append(r.url))
        for name, path in reports.items():
            requests.clear()
            page.goto(path.as_uri(), wait_until="load")
            assert page.locator("#bcd-disclaimer").is_visible()
            pdf = page.pdf(prefer_css_page_size=True, print_background=True)
            assert pdf_pages(pdf) == 1, f"{name}: {pdf_pages(pdf)} pages"
            assert re.search(rb"/MediaBox \[0 0 59[45]\.?\d* 84[12]\.?\d*\]", pdf)   # A4: 595 x 842 points
            assert [u for u in requests if not u.startswith(("file:", "data:"))] == [], name
            if name == "real":
                assert page.locator("#bcd-call").inner_text().startswith("Model's call:")
                assert all(page.eval_on_selector_all(".panel img", "els => els.map(e => e.naturalWidth > 0)"))
                page.screenshot(path=str(RESULTS / "report.png"), full_page=True)
    assert (RESULTS / "report.png").stat().st_size > 50_000
