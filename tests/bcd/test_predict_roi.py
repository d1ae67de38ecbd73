"""`bcd predict --roi/--rois` (issue 21) with the shipped model: the box used is in every
output row, bad boxes are clear usage errors or error rows, and one box is for one image."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bcd.cli import DISCLAIMER, build_parser, main, predict_config
from runtime.classifier import Classifier
from runtime.manifest import read_manifest
from runtime.predict_files import PredictConfig
from tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "runtime" / "models" / "bus-vgg16-w50-128"


@pytest.fixture(scope="module")
def model() -> str:
    if not (SHIPPED / "manifest.json").is_file():
        missing("the shipped model is not in runtime/models/")
    return str(SHIPPED)


@pytest.fixture
def scans(tmp_path) -> list[Path]:
    """Three 260x200 speckle scans with a bright blob."""
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for k in range(3):
        rng = np.random.default_rng(k)
        gray = cv2.GaussianBlur(rng.integers(0, 90, (200, 260), dtype=np.uint8), (3, 3), 0)
        gray[50:100, 50:130] += 110
        paths.append(folder / f"scan{k}.png")
        cv2.imwrite(str(paths[-1]), gray)
    return paths


def run(capsys, *argv):
    code = main(["predict", *map(str, argv)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_one_box_on_one_image(model, scans, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, table, err = run(capsys, scans[0], "--model", model, "--roi", "40,30,120,100", "--json", out)
    assert code == 0, err
    assert "roi 40,30,120,100 (given)" in table and DISCLAIMER in table
    assert "lesion box: 40,30,120,100" in err
    [row] = json.loads(out.read_text())
    assert row["roi"] == {"x": 40, "y": 30, "width": 120, "height": 100, "source": "given"}
    with Classifier.load(model) as clf:
        assert row["probability"] == pytest.approx(clf.predict(str(scans[0]), roi=(40, 30, 120, 100)).probability)


def test_a_box_past_the_edge_is_clipped_and_one_outside_is_an_error_row(model, scans, tmp_path, capsys):
    out = tmp_path / "r.csv"
    code, _, _ = run(capsys, scans[0], "--model", model, "--roi", "180,100,500,500", "--csv", out)
    [row] = list(csv.DictReader(out.open()))
    assert code == 0 and (row["roi_x"], row["roi_y"], row["roi_width"], row["roi_height"]) == ("180", "100", "80", "100")
    code, table, err = run(capsys, scans[0], "--model", model, "--roi", "300,300,50,50")
    assert code == 1 and "ERROR: roi '300,300,50,50' (x,y,w,h) lies entirely outside the scan region" in table
    assert "1 of 1 input(s) could not be classified" in err


@pytest.mark.parametrize("flags, message", [
    (["--roi", "1,2,3"], "--roi: expected auto or x,y,w,h as integers, got '1,2,3': 3 value(s), not 4"),
    (["--roi", "a,2,3,4"], "--roi: expected auto or x,y,w,h as integers, got 'a,2,3,4': x = 'a' is not a number"),
    (["--roi", "0,0,0,40"], "the size 0x40 must be positive"),
    (["--roi=-4,0,40,40"], "the corner -4,0 is negative"),
    (["--roi", "1,2,30,40", "--rois", "b.csv"], "give either --roi or --rois, not both"),
])
def test_bad_box_options_are_usage_errors(model, scans, flags, message, capsys):
    code, _, err = run(capsys, scans[0], "--model", model, *flags)
    assert code == 2 and err.startswith("bcd: error: ") and message in err


def test_a_box_with_several_inputs_is_refused_and_auto_takes_any(model, scans, tmp_path, capsys):
    code, _, err = run(capsys, scans[0], scans[1], "--model", model, "--roi", "10,10,100,100")
    assert code == 2 and "--roi 10,10,100,100 is a box for one image, but 2 inputs were given: use --rois" in err
    code, _, err = run(capsys, scans[0].parent, "--model", model, "--roi", "10,10,100,100")
    assert code == 2 and "is for one image, but the inputs name 3 image files" in err      # a folder
    out = tmp_path / "auto.json"
    code, table, err = run(capsys, scans[0].parent, "--model", model, "--roi", "auto", "--json", out)
    assert code == 0, err
    rows = json.loads(out.read_text())
    # the export's lesion localiser proposes when it ships one, its Grad-CAM otherwise
    proposer = "localiser" if read_manifest(SHIPPED / "manifest.json").localiser is not None else "gradcam"
    assert [r["roi"]["source"] for r in rows] == [f"proposed:{proposer}"] * 3
    for row in rows:
        box, region = row["roi"], row["region"]
        assert region["x"] <= box["x"] and box["x"] + box["width"] <= region["x"] + region["width"]
        assert region["y"] <= box["y"] and box["y"] + box["height"] <= region["y"] + region["height"]
    assert table.count(f"(proposed:{proposer})") == 3


def test_a_boxes_file_with_a_bad_row(model, scans, tmp_path, capsys):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x,y,w,h\n"
                     f"in/{scans[0].name},40,30,120,100\n"
                     f"in/{scans[0].name},120,90,100,90\n"
                     f"in/{scans[1].name},40,30,x,100\n"
                     f"in/{scans[2].name},40,30\n"
                     f"{scans[2]},0,0,260,200\n")
    out = tmp_path / "r.csv"
    code, table, err = run(capsys, "--rois", boxes, "--model", model, "--csv", out)
    assert code == 1 and "2 of 5 input(s) could not be classified" in err
    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["scan0.png", "scan0.png", "scan1.png", "scan2.png",
                                                            "scan2.png"]
    assert [(r["roi_x"], r["roi_width"], r["roi_source"]) for r in rows] == [
        ("40", "120", "given"), ("120", "100", "given"), ("", "", ""), ("", "", ""), ("0", "260", "given")]
    assert "boxes.csv line 4: roi '40,30,x,100': w = 'x' is not a number" in rows[2]["error"]
    assert "boxes.csv line 5: no value for w, h" in rows[3]["error"]
    assert rows[0]["probability"] != rows[1]["probability"]             # two lesions, two calls
    assert "roi 120,90,100,90 (given)" in table


def test_boxes_file_and_inputs_go_one_or_the_other(model, scans, tmp_path, capsys):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"path,x,y,w,h\n{scans[0]},1,2,100,100\n")
    code, _, err = run(capsys, scans[0], "--rois", boxes, "--model", model)
    assert code == 2 and "--rois names the images itself: give no INPUT with it" in err
    code, _, err = run(capsys, "--model", model)
    assert code == 2 and "give the images to classify (files, folders or globs), or --rois FILE.csv" in err
    boxes.write_text(f"file,x,y,w,h\n{scans[0]},1,2,100,100\n")
    code, _, err = run(capsys, "--rois", boxes, "--model", model)
    assert code == 2 and "no column(s) path; the first line must name the columns path,x,y,w,h" in err


def test_the_box_options_default_in_the_library():
    parse = build_parser().parse_args
    assert predict_config(parse(["predict", "x.png"])) == PredictConfig()
    assert PredictConfig().roi is None and PredictConfig().rois is None
    assert predict_config(parse(["predict", "x.png", "--roi", "auto"])).roi == "auto"
    assert str(predict_config(parse(["predict", "--rois", "b.csv"])).rois) == "b.csv"
    with pytest.raises(ValueError, match="roi: expected auto or x,y,w,h"):
        PredictConfig(roi="1,2")
    with pytest.raises(ValueError, match="either one box .roi. or a boxes file .rois."):
        PredictConfig(roi="auto", rois="b.csv")
