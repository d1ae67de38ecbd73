"""The demo's lesion box and report (issue 21, parts 4 and 5), with the shipped model (no
training: each classification takes milliseconds): the proposed box is found and drawn,
a box drawn with two clicks is classified exactly as `Classifier.predict(roi=box)`
classifies it, bad boxes give a message and leave the result as it was, cine loops use
the box on every frame, and the report downloaded holds the call and the box.

The browser test (slow) drives the page in Debian's Chromium: upload a real BUSI image,
see the proposed box, click two corners, get the new call, download the report, and save
results/demo-roi.png (docs/images/demo-roi.png is a copy of one).
"""
from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from demo import views
from demo.config import DemoConfig
from demo.service import LESION_COLOUR, MINE, PROPOSED, DemoService, PageState, box_from_corners, click, to_original
from runtime.classifier import Classifier
from runtime.host import DISCLAIMER
from runtime.lesion_box import Box, mask_box, with_margin
from runtime.manifest import read_manifest
from runtime.report import model_facts
from tests.conftest import BUSI, dicom_bytes, missing

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "runtime" / "models" / "bus-vgg16-w50-128"


@pytest.fixture(scope="module")
def service():
    if not (MODEL / "manifest.json").is_file():
        missing(f"the shipped model {MODEL} is missing")
    s = DemoService(DemoConfig(model=MODEL, threads=1, backend="onnxruntime"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def clf(service) -> Classifier:
    return service.classifier(service.default_variant)


def generated_scan(seed: int = 3, height: int = 300, width: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 90, (height, width), dtype=np.uint8), (3, 3), 0)
    gray[height // 3:height // 2, width // 3:width // 2] += 120
    return gray


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A malignant BUSI image of the shipped model's held-out test split when the data is
    here (its name has a space and parentheses, as uploads do), else a generated scan."""
    folder = tmp_path_factory.mktemp("roi")
    if BUSI.is_dir():
        split = json.loads((MODEL / "split.json").read_text())
        name = next(f["path"] for f in split["files"]["test"]
                    if f["class"] == "malignant" and f.get("source", "busi") == "busi")
        return Path(shutil.copy(BUSI / name, folder / Path(name).name))
    path = folder / "generated scan (1).png"
    cv2.imwrite(str(path), generated_scan())
    return path


def magenta(rgb: np.ndarray) -> np.ndarray:
    b, g, r = LESION_COLOUR
    return np.all(rgb == (r, g, b), axis=2)


def outline_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def uploaded(service, image: Path) -> tuple[PageState, object]:
    state = PageState.for_upload(image.read_bytes(), image.name)
    outcome = service.rerun(state, None, None)
    assert outcome.ok, outcome.error
    return state, outcome


def display_point(outcome, x: int, y: int) -> tuple[float, float]:
    """Where a click lands, in the shown picture's pixels, for original pixel (x, y)."""
    sy = outcome.image_rgb.shape[0] / outcome.picture.shape[0]
    sx = outcome.image_rgb.shape[1] / outcome.picture.shape[1]
    return (x + 0.5) * sx, (y + 0.5) * sy


# ---------------------------------------------------------------------- the proposed box


def test_the_proposed_box_is_found_and_drawn_while_the_call_is_for_the_whole_scan(service, clf, image):
    state, outcome = uploaded(service, image)
    whole = clf.predict(str(image))
    auto = clf.predict(str(image), roi="auto")
    # the export's lesion localiser proposes when it ships one (the shipped model does), its Grad-CAM otherwise
    source = "proposed:localiser" if read_manifest(MODEL / "manifest.json").localiser is not None else "proposed:gradcam"
    said = {"proposed:localiser": "proposed by the lesion localiser",
            "proposed:gradcam": "proposed from the model&#x27;s Grad-CAM"}[source]
    assert outcome.probability == pytest.approx(whole.probability, abs=1e-6) and outcome.roi is None
    assert auto.roi is not None and auto.roi_source == source
    assert outcome.proposed == {**auto.roi.to_dict(), "source": source}
    assert outcome.to_json()["proposed_roi"] == outcome.proposed and outcome.to_json()["roi"] is None
    # drawn in magenta where the box lies (scaled to the picture shown), on the input and the heatmap
    scale = outcome.image_rgb.shape[1] / outcome.picture.shape[1]
    x0, y0, x1, y1 = outline_box(magenta(outcome.image_rgb))
    box = auto.roi
    assert abs(x0 - box.x * scale) <= 2 and abs(y0 - box.y * scale) <= 2          # the line is 3 px wide
    assert abs(x1 - (box.right * scale - 1)) <= 2 and abs(y1 - (box.bottom * scale - 1)) <= 2
    assert magenta(outcome.overlay_rgb).any()
    card = views.result_html(outcome)
    assert f"Lesion box {said}:" in card
    assert f"x {box.x}, y {box.y}, {box.width}&times;{box.height} px" in card
    assert "The call above is for the whole scan region" in card and views.esc(DISCLAIMER) in card
    assert state.shown is outcome and state.mode == "whole"

    proposed = service.rerun(state, None, None, PROPOSED)
    assert proposed.ok and proposed.probability == pytest.approx(auto.probability, abs=1e-6)
    assert proposed.roi == {**auto.roi.to_dict(), "source": source} and state.mode == PROPOSED
    card = views.result_html(proposed)
    assert "Lesion box classified" in card and f"({said})" in card
    assert "Scan region: x" in card and views.esc(DISCLAIMER) in card
    # its Grad-CAM lies over the box only
    cam = proposed.prediction.cam
    inside = np.zeros(cam.shape, bool)
    inside[box.y:box.bottom, box.x:box.right] = True
    assert cam[inside].max() > 0 and cam[~inside].max() == 0


# ---------------------------------------------------------------------- a box of one's own


def test_clicks_map_from_the_shown_picture_to_the_original_pixels():
    # an enlarged small image (x4), a shrunk large one, and the box of two corners
    assert to_original(0, 0, (400, 320, 3), (100, 80, 3)) == (0, 0)
    assert to_original(319.9, 399.9, (400, 320, 3), (100, 80, 3)) == (79, 99)
    assert to_original(101, 43, (400, 320, 3), (100, 80, 3)) == (25, 10)
    assert to_original(512, 384, (768, 1024, 3), (1500, 2000, 3)) == (1000, 750)
    assert to_original(1024, 10, (768, 1024, 3), (1500, 2000, 3)) is None       # just outside
    assert to_original(None, 3, (768, 1024, 3), (1500, 2000, 3)) is None
    assert box_from_corners((90, 70), (30, 20)) == Box(30, 20, 61, 51)          # either order, corners inside


def test_two_clicks_classify_the_box_as_the_runtime_does(service, clf, image):
    state, first = uploaded(service, image)
    height, width = first.picture.shape[:2]
    corner_a, corner_b = (width // 5, height // 4), (width * 3 // 4, height * 3 // 4)
    step = click(state, *display_point(first, *corner_a))
    assert step.corner == corner_a and step.box is None and "now click the opposite corner" in step.message
    assert magenta(step.image_rgb).sum() > magenta(first.image_rgb).sum()      # the corner is marked
    step = click(state, *display_point(first, *corner_b))
    expected = box_from_corners(corner_a, corner_b)
    assert step.box == f"{expected.x},{expected.y},{expected.width},{expected.height}" and state.corner is None

    outcome = service.rerun(state, None, None, MINE, step.box)
    runtime = clf.predict(str(image), roi=expected)
    assert outcome.ok and outcome.probability == pytest.approx(runtime.probability, abs=1e-6)
    assert outcome.roi == {**expected.to_dict(), "source": "given"} and outcome.proposed is None
    assert (state.mode, state.box, state.shown) == (MINE, step.box, outcome)
    x0, y0, x1, y1 = outline_box(magenta(outcome.image_rgb))
    scale = outcome.image_rgb.shape[1] / width
    assert abs(x0 - expected.x * scale) <= 2 and abs(x1 - (expected.right * scale - 1)) <= 2
    assert "(your box)" in views.result_html(outcome)
    # typed as text, with spaces: the same box, the same call
    typed = service.rerun(state, None, None, MINE, f" {expected.x}, {expected.y}, {expected.width}, "
                                                   f"{expected.height} ")
    assert typed.probability == pytest.approx(runtime.probability, abs=1e-6)
    # a box reaching past the image is clipped, and the clipped box is the one shown
    past = service.rerun(state, None, None, MINE, f"{width - 40},{height - 50},400,400")
    assert past.ok and past.roi == {"x": width - 40, "y": height - 50, "width": 40, "height": 50, "source": "given"}


@pytest.mark.parametrize("box, words", [
    ("10,10,0,20", "must be positive"),
    ("5000,5000,50,50", "lies entirely outside"),
    ("10,10,8,8", "at least 16 pixels on each side"),
    ("-5,0,40,40", "is negative"),
    ("a,b,c,d", "is not a number"),
    ("1,2,3", "not 4"),
    ("<img src=x onerror=alert(1)>,1,2,3", "is not a number"),
])
def test_a_bad_box_gets_a_message_and_the_result_stays(service, image, box, words):
    state, shown = uploaded(service, image)
    good = service.rerun(state, None, None, PROPOSED)
    bad = service.rerun(state, None, None, MINE, box)
    assert not bad.ok and bad.roi_error and words in bad.error and bad.error.startswith("This box can't be used")
    assert "Traceback" not in bad.error
    assert state.shown is good and state.mode == PROPOSED and state.box == ""   # nothing changed
    line = views.roi_status_html(bad.error, problem=True)
    assert views.esc(bad.error) in line and "bcd-roi-problem" in line and "<img" not in line


def test_a_new_scan_region_that_leaves_the_box_out_classifies_the_whole_region(service, image):
    """A variant or scan-region change must replace the result (never show another
    setting's call): a box it can't use gives way to the whole scan region, and says so."""
    state, shown = uploaded(service, image)
    height, width = shown.picture.shape[:2]
    box = f"{width - 60},{height - 60},50,50"
    assert service.rerun(state, None, None, MINE, box).ok
    corner = f"0,0,{width // 2},{height // 2}"                      # a scan region the box lies outside
    kept = service.rerun(state, None, corner)
    assert kept.roi_error and state.mode == MINE                     # without fallback: the page keeps its result
    moved = service.rerun(state, None, corner, fallback=True)
    assert moved.ok and moved.roi is None and moved.region["width"] == width // 2
    assert "lies entirely outside" in moved.box_dropped and moved.box_dropped.endswith("the whole scan region.")
    assert state.mode == "whole" and state.box == box and state.shown is moved


def test_two_clicks_on_one_spot_and_clicks_without_an_image_get_a_message(service, image):
    assert "upload one first" in click(PageState(), 10, 10).message
    state, shown = uploaded(service, image)
    point = display_point(shown, 40, 40)
    click(state, *point)
    tiny = click(state, *point)
    assert tiny.box == "40,40,1,1"
    bad = service.rerun(state, None, None, MINE, tiny.box)
    assert bad.roi_error and "at least 16 pixels" in bad.error and state.shown is shown
    assert "no box of yours yet" in service.rerun(state, None, None, MINE, "").error
    assert "outside the image" in click(state, shown.image_rgb.shape[1] + 5, 3).message


def test_a_cine_loop_uses_the_box_on_every_frame(service, clf, image):
    gray = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
    frames = np.stack([np.roll(gray, k * 3, axis=1) for k in range(3)])
    data = dicom_bytes(frames, NumberOfFrames=3)
    state = PageState.for_upload(data, "loop.dcm")
    height, width = gray.shape
    box = Box(width // 4, height // 4, width // 2, height // 2)
    outcome = service.rerun(state, None, None, MINE, f"{box.x},{box.y},{box.width},{box.height}")
    assert outcome.ok, outcome.error
    assert outcome.frames["used"] == [1, 2, 3] and outcome.roi["source"] == "given"
    scan = clf.decode(data, frames="all")
    runtime = clf.predict_decoded([scan], ["loop.dcm"], roi=box)[0]
    assert outcome.probability == pytest.approx(runtime.probability, abs=1e-6)
    assert outcome.frames["probabilities"] == pytest.approx(runtime.frames.probabilities, abs=1e-6)
    assert "Cine loop of 3 frames" in views.result_html(outcome)


# ---------------------------------------------------------------------- the report


def report_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="bcd-report-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_the_report_holds_the_call_and_the_box(service, clf, image, tmp_path):
    state, _ = uploaded(service, image)
    height, width = state.shown.picture.shape[:2]
    box = Box(width // 5, height // 5, width // 2, height // 2)
    outcome = service.rerun(state, None, None, MINE, f"{box.x},{box.y},{box.width},{box.height}")
    path = service.write_report(outcome, tmp_path)
    # named after the upload (not a temporary path), in a folder of its own inside the cache
    assert path.parent.parent == tmp_path and path.name == re.sub(r"[^\w.()+-]+", "_", image.stem) + "_report.html"
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
    page = path.read_text()
    data = report_data(page)
    assert data["input"] == image.name
    assert data["prediction"]["probability"] == pytest.approx(outcome.probability, abs=1e-6)
    assert data["prediction"]["label"] == outcome.label
    assert data["lesion_box"] == {**box.to_dict(), "source": "given"}
    assert f"x {box.x}, y {box.y}, {box.width} &times; {box.height} px (given)" in page
    assert DISCLAIMER in page and data["model"]["sha256"] == model_facts(clf).sha256
    # the whole-scan call has no lesion box in its report (the box drawn then was only proposed)
    whole = service.rerun(state, None, None, "whole")
    assert report_data(service.report(whole))["lesion_box"] is None
    with pytest.raises(ValueError):
        service.report(service.rerun(PageState(), None, None))


# ---------------------------------------------------------------------- served


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_api_takes_a_lesion_box_and_returns_the_report(service, image, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from demo.app import launch

    blocks, url = launch(DemoConfig(model=MODEL, threads=1, backend="onnxruntime", port=_free_port(), quiet=True,
                                    temp_dir=tmp_path / "cache"), block=False)
    try:
        client = gradio_client.Client(url, verbose=False, download_files=False, analytics_enabled=False)
        file = gradio_client.handle_file(str(image))
        variant = service.default_variant
        whole = client.predict(file, variant, "auto", api_name="/classify")
        assert whole[3]["error"] is None and whole[3]["roi"] is None and whole[3]["proposed_roi"]["x"] is not None
        given = client.predict(file, variant, "auto", "20,20,120,100", api_name="/classify")
        assert given[3]["roi"] == {"x": 20, "y": 20, "width": 120, "height": 100, "source": "given"}
        # the report button's update (the last output but the emptied upload box): its file, in the private cache
        report = given[-2]["value"]
        saved = Path(report["path"])
        assert report["orig_name"] == re.sub(r"[^\w.()+-]+", "_", image.stem) + "_report.html"
        assert tmp_path / "cache" in saved.parents and "20, y 20, 120 &times; 100 px" in saved.read_text()
        bad = client.predict(file, variant, "auto", "0,0,0,0", api_name="/classify")
        assert "This box can't be used" in bad[3]["error"]
        # Gradio keeps track of the report like its result images: its cache clean-up deletes it
        from gradio.route_utils import delete_files_created_by_app
        delete_files_created_by_app(blocks, None)
        assert not saved.exists()
    finally:
        blocks.close()


# ---------------------------------------------------------------------- in a real browser

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = REPO / "results" / "demo-roi.png"        # gitignored; docs/images/demo-roi.png is a copy


PICTURE_LOADED = ("() => { const i = document.querySelector('#bcd-input img'); "
                  "return i && i.complete && i.naturalWidth > 0; }")


def _shown_rect(page) -> dict:
    """Where the input picture's pixels lie on the screen (object-fit: contain), and its own size."""
    return page.locator("#bcd-input img").evaluate("""img => {
        const r = img.getBoundingClientRect();
        const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
        return {left: r.left + (r.width - img.naturalWidth * s) / 2,
                top: r.top + (r.height - img.naturalHeight * s) / 2,
                scale: s, width: img.naturalWidth, height: img.naturalHeight};
    }""")


def lesion_corners(image: Path) -> list[tuple[float, float]]:
    """Where a clinician would click (as shares of the image's width and height): the
    corners of the lesion mask's box with a 20 % margin when BUSI's mask is here."""
    masks = list(BUSI.glob(f"*/{image.stem}_mask.png"))
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE) if masks else None
    box = mask_box(mask > 0) if mask is not None else None
    if box is None:
        return [(0.25, 0.30), (0.70, 0.75)]
    height, width = mask.shape
    box = with_margin(box, 0.2, width, height)
    return [((box.x + 0.5) / width, (box.y + 0.5) / height),
            ((box.right - 0.5) / width, (box.bottom - 0.5) / height)]


@pytest.mark.slow   # browser
def test_browser_draws_a_box_gets_its_call_and_downloads_the_report(service, clf, image, tmp_path):
    if not Path(CHROMIUM).exists() or not BUSI.is_dir():
        missing("needs chromium and ../shared/data/busi")
    pytest.importorskip("playwright.sync_api")
    from demo.app import launch
    from tests.demo.test_demo import _chromium_page

    blocks, url = launch(DemoConfig(model=MODEL, threads=1, backend="onnxruntime", port=_free_port(), quiet=True),
                         block=False)
    try:
        with _chromium_page() as page:
            page.goto(url, wait_until="load", timeout=60_000)
            page.locator("#bcd-upload input[type=file]").set_input_files(str(image), timeout=60_000)
            page.locator("#bcd-result .bcd-verdict").wait_for(timeout=60_000)
            page.locator("#bcd-overlay img").wait_for(timeout=30_000)
            card = page.locator("#bcd-result").inner_text()
            proposed = ("Lesion box proposed by the lesion localiser" if read_manifest(MODEL / "manifest.json").localiser
                        else "Lesion box proposed from the model's Grad-CAM")
            assert proposed in card and DISCLAIMER in card

            # two clicks on the picture as the screen shows it (scaled down to fit, from the 2x display image)
            rect = _shown_rect(page)
            shown_w, shown_h = rect["width"], rect["height"]
            height, width = cv2.imread(str(image)).shape[:2]
            # scaled twice: the picture sent is enlarged from the original, and the screen shrinks it to fit
            assert shown_w != width and rect["scale"] < 1
            corners = lesion_corners(image)
            for (fx, fy), said in zip(corners, ("First corner at", "Your box")):
                page.mouse.click(rect["left"] + fx * shown_w * rect["scale"],
                                 rect["top"] + fy * shown_h * rect["scale"])
                page.locator("#bcd-roi-status", has_text=said).wait_for(timeout=30_000)
                page.wait_for_function(PICTURE_LOADED, timeout=30_000)   # the picture with the corner marked
            page.locator("#bcd-result .bcd-roi", has_text="your box").wait_for(timeout=30_000)
            page.wait_for_timeout(500)
            typed = page.locator("#bcd-roi-box textarea, #bcd-roi-box input").first.input_value()
            x, y, w, h = (int(v) for v in typed.split(","))
            # the box in the original image's pixels, within a pixel or two of where the clicks were
            (fx0, fy0), (fx1, fy1) = corners
            assert abs(x - fx0 * width) <= 2 and abs(y - fy0 * height) <= 2
            assert abs(x + w - 1 - fx1 * width) <= 2 and abs(y + h - 1 - fy1 * height) <= 2
            runtime = clf.predict(str(image), roi=Box(x, y, w, h))
            card = page.locator("#bcd-result").inner_text()
            assert f"x {x}, y {y}, {w}×{h} px (your box)" in card and DISCLAIMER in card
            assert f"probability {views.fmt_prob_pair(runtime.probability, runtime.threshold)[0]}" in card
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            with page.expect_download(timeout=30_000) as info:
                page.locator("#bcd-report").click()
            download = info.value
            assert download.suggested_filename.endswith("_report.html")
            saved = tmp_path / download.suggested_filename
            download.save_as(str(saved))
            text = saved.read_text()
            assert f"x {x}, y {y}, {w} &times; {h} px (given)" in text and DISCLAIMER in text
            assert report_data(text)["prediction"]["probability"] == pytest.approx(runtime.probability, abs=1e-6)

            # a bad box typed in: a message, and the call stays
            page.locator("#bcd-roi-box textarea, #bcd-roi-box input").first.fill("5,5,4,4")
            page.locator("#bcd-roi-use").click()
            page.locator("#bcd-roi-status .bcd-roi-problem").wait_for(timeout=30_000)
            assert "at least 16 pixels" in page.locator("#bcd-roi-status").inner_text()
            assert f"x {x}, y {y}, {w}×{h} px (your box)" in page.locator("#bcd-result").inner_text()
    finally:
        blocks.close()
    assert SCREENSHOT.stat().st_size > 10_000
