"""The lesion box (issue 21) in the runtime API, with the shipped model (ONNX INT8, runs in
milliseconds): a given box is what the model sees, clipped to the scan region; every kind
of bad box fails only its input; "auto" proposes a box from the model's Grad-CAM map (or
a localiser); the box travels in to_dict, JSON and CSV. No mocks of the model."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.classifier import Classifier
from runtime.lesion_box import Box, iou, mask_box
from runtime.predict_files import (ROI_FIELDS, format_table, predict_paths, predict_rois, read_rois, write_csv,
                                   write_json)
from runtime.roi import (ROI_MIN_SIDE, GRADCAM_THRESHOLD, RoiError, at_least, fit_roi, parse_roi_text, propose, roi_request,
                         roi_requests)
from runtime.scan_region import ScanRegion
from runtime.shipped import default_model_path
from tests.conftest import BUSI, busi_files, dicom_bytes, missing

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "runtime" / "models" / "bus-vgg16-w50-128"
H, W = 200, 260
BOX = (40, 30, 120, 100)                        # x, y, width, height, inside the generated scans


@pytest.fixture(scope="module")
def clf() -> Classifier:
    """The shipped model with Grad-CAM as its proposer: the shipped export carries a lesion
    localiser, which test_the_shipped_localiser_proposes_on_real_lesions exercises; the
    other tests here pin the Grad-CAM path (and swap in stand-in localisers)."""
    if not (SHIPPED / "manifest.json").is_file():
        missing("the shipped model is not in runtime/models/")
    model = Classifier.load(SHIPPED, threads=1)
    model.localiser = None
    return model


def scan(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    """Gray speckle with a bright blob off-centre (passes the input checks), BGR."""
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 90, (height, width), dtype=np.uint8), (3, 3), 0)
    gray[height // 4:height // 2, width // 5:width // 2] += 110
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def cut(image: np.ndarray, box) -> np.ndarray:
    x, y, w, h = box
    return np.ascontiguousarray(image[y:y + h, x:x + w])


def same(a, b) -> None:
    assert a.ok and b.ok, (a.error, b.error)
    assert a.probability == pytest.approx(b.probability, abs=1e-6)


def busi_lesion(n: int = 1) -> list[tuple[Path, Box]]:
    """Real BUSI images with their lesion mask's box (skips without the data)."""
    if not BUSI.is_dir():
        missing("BUSI development data not present")
    out = []
    for path in busi_files("malignant", n):
        mask = cv2.imread(str(path.with_name(f"{path.stem}_mask.png")), cv2.IMREAD_GRAYSCALE)
        out.append((path, mask_box(mask)))
    return out


# ------------------------------------------------------------------ parsing, without the model


def test_a_box_is_four_numbers_and_bad_ones_say_why():
    assert roi_request((10, 20, 30, 40)).box == Box(10, 20, 30, 40)
    assert roi_request("10, 20, 30, 40").box == Box(10, 20, 30, 40)
    assert roi_request(np.array([10.4, 20.6, 30, 40])).box == Box(10, 21, 30, 40)   # drawn boxes have fractions
    assert roi_request(Box(1, 2, 3, 4)).box == Box(1, 2, 3, 4)
    assert roi_request("AUTO").auto and roi_request(None) is None
    for value, words in [((0, 0, 0, 10), "size 0x10 must be positive"), ((0, 0, 10, -5), "size 10x-5"),
                         ((-1, 0, 10, 10), "corner -1,0 is negative"), (("a", 0, 10, 10), "x = 'a' is not a number"),
                         ((0, None, 10, 10), "y = None is not a number"), ((0, 0, float("nan"), 10), "w = nan"),
                         ((0, 0, 10, True), "h = True is not a number"), ((1, 2, 3), "3 value(s), not 4"),
                         ("1,2,3,x", "h = 'x' is not a number")]:
        request = roi_request(value)
        assert request.box is None and words in request.error, (value, request.error)
        assert request.error.startswith("roi ") and "x,y,w,h" in request.error
    with pytest.raises(TypeError, match="roi: expected"):
        roi_request({"x": 1})


def test_one_box_for_all_inputs_or_one_per_input():
    assert [r.box for r in roi_requests((1, 2, 30, 40), 3)] == [Box(1, 2, 30, 40)] * 3
    per = roi_requests([(1, 2, 30, 40), None, "auto", ("a", 1, 2, 3)], 4)
    assert per[0].box == Box(1, 2, 30, 40) and per[1] is None and per[2].auto and per[3].error
    assert roi_requests(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), 2)[1].box == Box(5, 6, 7, 8)
    with pytest.raises(ValueError, match="a list of 2 boxes for 3 input"):
        roi_requests([(1, 2, 3, 4), (1, 2, 3, 4)], 3)
    with pytest.raises(TypeError):
        roi_requests([{"x": 1}, None], 2)


def test_command_line_text():
    assert parse_roi_text("auto").auto and parse_roi_text(" 5,6,70,80 ").box == Box(5, 6, 70, 80)
    for text, words in [("5,6,70", "3 value(s), not 4"), ("a,b,c,d", "x = 'a'"), ("0,0,0,9", "size 0x9"),
                        ("", "1 value(s)")]:
        with pytest.raises(ValueError, match="expected auto or x,y,w,h as integers") as err:
            parse_roi_text(text)
        assert words in str(err.value)


def test_a_box_is_clipped_to_the_scan_region_or_refused():
    region = ScanRegion(20, 10, 200, 150, source="found")
    assert fit_roi(Box(50, 40, 80, 70), region, 64) == Box(50, 40, 80, 70)
    assert fit_roi(Box(0, 0, 100, 100), region, 64) == Box(20, 10, 80, 90)           # past the region's corner
    assert fit_roi(Box(180, 100, 500, 500), region, 30) == Box(180, 100, 40, 60)     # past the image too
    with pytest.raises(RoiError, match="entirely outside the scan region 20,10,200,150 .found."):
        fit_roi(Box(300, 200, 50, 50), region, 1)
    with pytest.raises(RoiError, match="entirely outside the 260x200 image"):
        fit_roi(Box(300, 0, 50, 50), ScanRegion(0, 0, 260, 200, source="whole"), 1)
    with pytest.raises(RoiError, match="40x60 pixels after clipping .* at least 64 pixels on each side"):
        fit_roi(Box(180, 100, 500, 500), region, 64)


def test_a_proposed_box_comes_from_the_map_and_lies_in_the_region():
    region = ScanRegion(30, 20, 200, 160, source="found")
    lesion = np.zeros((160, 200), np.float32)
    lesion[50:90, 60:140] = 1.0
    assert propose(lesion, 0.5, region, 1) == Box(30 + 60, 20 + 50, 80, 40)     # the map's box, in the image
    assert propose(lesion, 0.5, region, 1, margin=0.1) == Box(30 + 60 - 8, 20 + 50 - 4, 80 + 16, 40 + 8)
    assert propose(np.zeros((160, 200), np.float32), 0.5, region, 1) is None
    small = np.zeros((160, 200), np.float32)
    small[0:4, 196:200] = 1.0                                       # a speck in the region's corner
    grown = propose(small, 0.5, region, 64)
    assert (grown.width, grown.height) == (64, 64) and grown.right == region.x + region.width and grown.y == region.y
    assert at_least(Box(10, 10, 100, 100), 64, 200, 200) == Box(10, 10, 100, 100)


# ------------------------------------------------------------------ a given box, with the model


def test_the_model_sees_the_box(clf):
    image = scan(1)
    with_box = clf.predict(image, roi=BOX, region="off", with_cam=True)
    direct = clf.predict(cut(image, BOX), region="off", with_cam=True)
    whole = clf.predict(image, region="off")
    same(with_box, direct)
    assert abs(with_box.probability - whole.probability) > 1e-4       # the box changed the input
    assert with_box.roi == Box(*BOX) and with_box.roi_source == "given"
    assert (with_box.region.x, with_box.region.width, with_box.region.source) == (0, W, "whole")
    # the Grad-CAM map lies where the box lies in the original image, zero elsewhere
    x, y, w, h = BOX
    assert with_box.cam.shape == (H, W)
    np.testing.assert_allclose(with_box.cam[y:y + h, x:x + w], direct.cam, atol=1e-6)
    outside = with_box.cam.copy()
    outside[y:y + h, x:x + w] = 0
    assert not outside.any() and direct.cam.max() > 0.9
    assert clf.predict(image, region="off").roi is None


def test_the_box_is_taken_inside_the_scan_region_and_clipped(clf):
    image = scan(2)
    region = (30, 20, 180, 150)
    pred = clf.predict(image, region=region, roi=(100, 60, 400, 400))      # reaches past region and image
    assert pred.roi == Box(100, 60, 110, 110)                              # what was classified is recorded
    same(pred, clf.predict(cut(image, (100, 60, 110, 110)), region="off"))
    assert (pred.region.x, pred.region.y, pred.region.source) == (30, 20, "given")


def test_on_a_real_scan_the_box_is_cut_from_the_found_region(clf):
    [(path, lesion)] = busi_lesion(1)
    image = cv2.imread(str(path))
    pred = clf.predict(str(path), roi=lesion)
    inside = Box(pred.region.x, pred.region.y, pred.region.width, pred.region.height)
    expected = Box(max(lesion.x, inside.x), max(lesion.y, inside.y),
                   min(lesion.right, inside.right) - max(lesion.x, inside.x),
                   min(lesion.bottom, inside.bottom) - max(lesion.y, inside.y))
    assert pred.roi == expected
    same(pred, clf.predict(cut(image, (expected.x, expected.y, expected.width, expected.height)), region="off"))


def test_every_bad_box_fails_only_its_input(clf):
    image = scan(3)
    boxes = [BOX, (400, 300, 50, 50), (10, 10, 0, 50), (-5, 10, 80, 80), ("ten", 10, 80, 80), (10, 10, 12, 30),
             (10, 10, 80), (10, 10, float("inf"), 80), None]
    preds = clf.predict([image] * len(boxes), roi=boxes, region="off")
    words = [None, "entirely outside the 260x200 image", "size 0x50", "corner -5,10 is negative",
             "x = 'ten' is not a number", "12x30 pixels; a box needs at least 16", "3 value(s), not 4",
             "w = inf is not a number", None]
    for pred, expected in zip(preds, words):
        if expected is None:
            assert pred.ok, pred.error
        else:
            assert not pred.ok and expected in pred.error, (expected, pred.error)
            assert pred.error.startswith("image: roi ") and pred.label is None and pred.roi is None
    same(preds[0], clf.predict(image, roi=BOX, region="off"))
    same(preds[-1], clf.predict(image, region="off"))
    with pytest.raises(TypeError):
        clf.predict(image, roi=3.5)
    with pytest.raises(ValueError, match="a list of 2 boxes for 1 input"):
        clf.predict([image], roi=[BOX, BOX])


def test_decoded_images_and_cine_loops_take_the_box(clf):
    frames = [scan(10 + k) for k in range(3)]
    [decoded] = clf.predict_decoded([frames[0]], roi=[BOX], region="off")
    same(decoded, clf.predict(cut(frames[0], BOX), region="off"))
    loop = dicom_bytes(np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]), NumberOfFrames=3)
    pred = clf.predict(loop, roi=BOX, region="off", frames="all")
    assert pred.ok and pred.roi == Box(*BOX) and pred.frames.numbers == [1, 2, 3]
    decoded = clf.decode(loop, frames="all").frames          # as the DICOM decoder gives them
    each = clf.predict([cut(f, BOX) for f in decoded], region="off")
    assert pred.frames.probabilities == pytest.approx([p.probability for p in each], abs=1e-6)


# ------------------------------------------------------------------ proposed boxes


def test_auto_proposes_a_box_inside_the_scan_region_on_a_real_lesion(clf):
    found = 0
    for path, lesion in busi_lesion(4):
        pred = clf.predict(str(path), roi="auto", with_cam=True)
        assert pred.ok, pred.error
        region = Box(pred.region.x, pred.region.y, pred.region.width, pred.region.height)
        assert pred.roi_source == "proposed:gradcam"
        assert pred.roi.x >= region.x and pred.roi.y >= region.y
        assert pred.roi.right <= region.right and pred.roi.bottom <= region.bottom
        assert min(pred.roi.width, pred.roi.height) >= 16
        # the ROI pass is an ordinary given-box prediction of the proposed box
        same(pred, clf.predict(str(path), roi=pred.roi))
        found += iou(pred.roi, lesion) > 0
    assert found >= 3                                   # the proposals lie on the lesions


def test_the_shipped_localiser_proposes_on_real_lesions():
    """The shipped export's own localiser (manifest 'localiser') proposes roi='auto' boxes:
    inside the scan region, at least 16 px a side, on the lesion, classified like a given box."""
    if not (SHIPPED / "manifest.json").is_file():
        missing("the shipped model is not in runtime/models/")
    with Classifier.load(SHIPPED, threads=1) as own:
        if own.localiser is None:
            pytest.skip("the shipped model has no lesion localiser")
        found = 0
        for path, lesion in busi_lesion(4):
            pred = own.predict(str(path), roi="auto")
            assert pred.ok, pred.error
            assert pred.roi_source == "proposed:localiser"
            region = Box(pred.region.x, pred.region.y, pred.region.width, pred.region.height)
            assert pred.roi.x >= region.x and pred.roi.y >= region.y
            assert pred.roi.right <= region.right and pred.roi.bottom <= region.bottom
            assert min(pred.roi.width, pred.roi.height) >= 16
            same(pred, own.predict(str(path), roi=pred.roi))
            found += iou(pred.roi, lesion) >= 0.5
        assert found >= 3                               # its boxes match the lesions' boxes


def test_the_gradcam_proposal_is_the_map_cut_at_its_threshold(clf):
    image = scan(4)
    whole = clf.predict(image, region="off", with_cam=True)
    expected = propose(whole.cam, GRADCAM_THRESHOLD, ScanRegion(0, 0, W, H, source="whole"), ROI_MIN_SIDE)
    assert expected is not None
    assert clf.predict(image, region="off", roi="auto").roi == expected


class Blob:
    """A lesion localiser (runtime.roi.Localiser) that marks a fixed part of the region:
    stands in for the segmentation network another branch builds."""

    threshold = 0.5

    def __init__(self, box: tuple[int, int, int, int] | None, shape_error: bool = False) -> None:
        self.box, self.shape_error = box, shape_error

    def lesion_map(self, image: np.ndarray) -> np.ndarray:
        out = np.zeros(image.shape[:2] if not self.shape_error else (3, 3), np.float32)
        if self.box is not None:
            x, y, w, h = self.box
            out[y:y + h, x:x + w] = 0.9
        return out


def test_a_localiser_proposes_first_and_none_proposed_falls_back(clf):
    image = scan(5)
    try:
        clf.localiser = Blob((20, 20, 100, 80))
        pred = clf.predict(image, region=(10, 10, 220, 180), roi="auto")
        assert pred.roi_source == "proposed:localiser"
        assert pred.roi == Box(10 + 20, 10 + 20, 100, 80)               # from the region's pixels to the image's
        same(pred, clf.predict(image, region=(10, 10, 220, 180), roi=pred.roi))
        clf.localiser = Blob(None)
        nothing = clf.predict(image, region=(10, 10, 220, 180), roi="auto")
        assert nothing.roi is None and nothing.roi_source == "none proposed:localiser"
        same(nothing, clf.predict(image, region=(10, 10, 220, 180)))
        assert nothing.to_dict()["roi"] == {"x": None, "y": None, "width": None, "height": None,
                                            "source": "none proposed:localiser"}
        assert "roi: none proposed:localiser, the whole scan region was classified" in format_table([nothing])
        clf.localiser = Blob((0, 0, 5, 5), shape_error=True)
        broken, fine = clf.predict([image, image], roi=["auto", BOX], region="off")
        assert "the lesion localiser failed" in broken.error and fine.ok
    finally:
        clf.localiser = None


# ------------------------------------------------------------------ files and reports


def write_scans(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        paths.append(folder / f"s{k}.png")
        cv2.imwrite(str(paths[-1]), scan(20 + k))
    return paths


def test_reports_carry_the_box(clf, tmp_path):
    [one] = write_scans(tmp_path / "in", 1)
    results = predict_paths(clf, [one], roi=BOX)
    assert results[0].roi == Box(*BOX)
    write_json(tmp_path / "r.json", results)
    write_csv(tmp_path / "r.csv", results)
    [row] = json.loads((tmp_path / "r.json").read_text())
    assert row["roi"] == {"x": 40, "y": 30, "width": 120, "height": 100, "source": "given"}
    [flat] = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [flat[f] for f in ROI_FIELDS] == ["40", "30", "120", "100", "given"]
    assert "roi 40,30,120,100 (given)" in format_table(results)
    plain = predict_paths(clf, [one])                                    # without a box: empty, as before
    write_csv(tmp_path / "p.csv", plain)
    [flat] = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [flat[f] for f in ROI_FIELDS] == [""] * 5 and plain[0].to_dict()["roi"] is None
    assert "roi" not in format_table(plain)


def test_one_box_is_for_one_image_and_auto_for_any(clf, tmp_path):
    paths = write_scans(tmp_path / "in", 3)
    with pytest.raises(ValueError, match="is for one image, but the inputs name 3 image files"):
        predict_paths(clf, [tmp_path / "in"], roi=BOX)
    auto = predict_paths(clf, [tmp_path / "in"], roi="auto", heatmap_dir=tmp_path / "heat")
    assert [p.roi_source for p in auto] == ["proposed:gradcam"] * 3
    assert sorted(f.name for f in (tmp_path / "heat").iterdir()) == [f"{p.stem}_gradcam.png" for p in paths]


def test_a_boxes_file_gives_a_row_per_box_and_error_rows_for_bad_ones(clf, tmp_path):
    paths = write_scans(tmp_path / "in", 2)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x,y,w,h,note\n"
                     f"in/{paths[0].name},40,30,120,100,first lesion\n"
                     f"in/{paths[0].name},100,80,100,90,second lesion\n"
                     f"{paths[1]},10,10,abc,90,not a number\n"
                     f"in/{paths[1].name},10,10\n"
                     f"in/{paths[1].name},-3,10,90,90,negative\n"
                     f"in/{paths[1].name},10,10,0,90,zero\n"
                     f"in/{paths[1].name},900,900,90,90,outside\n"
                     "in/missing.png,10,10,90,90,no such file\n"
                     ",10,10,90,90,no path\n"
                     f"\n{paths[1]},20,20,150,120,absolute path\n")
    results = predict_rois(clf, boxes, heatmap_dir=tmp_path / "heat", batch_size=3)
    assert len(results) == 10
    ok = [r for r in results if r.ok]
    assert [r.roi for r in ok] == [Box(40, 30, 120, 100), Box(100, 80, 100, 90), Box(20, 20, 150, 120)]
    same(ok[0], clf.predict(str(paths[0]), roi=(40, 30, 120, 100)))
    assert results[0].path == str(tmp_path / "in" / paths[0].name) and results[-1].path == str(paths[1])
    errors = [r.error for r in results if not r.ok]
    for error, words in zip(errors, ["boxes.csv line 4: roi '10,10,abc,90': w = 'abc' is not a number",
                                     "boxes.csv line 5: no value for w, h", "line 6: roi '-3,10,90,90': the corner",
                                     "line 7: roi '10,10,0,90': the size 0x90", "entirely outside the scan region 0,0,260,200",
                                     "missing.png: file not found", "line 10: the path is empty"]):
        assert words in error, (words, error)
    heat = sorted(f.name for f in (tmp_path / "heat").iterdir())
    # a name per row with a usable box, in the file's order (the box outside s1 took s1_gradcam.png)
    assert heat == ["s0_2_gradcam.png", "s0_gradcam.png", "s1_2_gradcam.png"]
    write_csv(tmp_path / "r.csv", results)
    flat = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [(r["roi_x"], r["roi_source"]) for r in flat[:2]] == [("40", "given"), ("100", "given")]


def test_a_boxes_file_without_its_columns_is_refused(tmp_path):
    bad = tmp_path / "b.csv"
    bad.write_text("file,x,y,width,height\na.png,1,2,3,4\n")
    with pytest.raises(ValueError, match="no column.s. path; the first line must name the columns path,x,y,w,h"):
        read_rois(bad)
    bad.write_text("path,x,y,width,height\n")
    with pytest.raises(ValueError, match="no rows after the header"):
        read_rois(bad)
    with pytest.raises(ValueError, match="cannot read it"):
        read_rois(tmp_path / "nothing.csv")
    bad.write_text("Path,X,Y,Width,Height\n/abs/a.png,1,2,3,4\n")
    assert read_rois(bad) == [(Path("/abs/a.png"), roi_request("1,2,3,4"))]
