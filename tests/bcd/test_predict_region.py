"""`bcd predict --region/--frames` and the region and cine frames in its JSON, CSV and
table (runtime.predict_files), with the tiny exported model (issue 20)."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from bcd.cli import DISCLAIMER, main
from runtime.classifier import Classifier
from runtime.predict_files import (FRAME_FIELDS, REGION_FIELDS, REPORT_FIELDS, ROI_FIELDS, format_table, predict_paths,
                                   write_csv, write_json)
from tests.conftest import dicom_bytes


def scan(seed: int, height: int = 160, width: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 90, (height, width), dtype=np.uint8), (3, 3), 0)
    gray[height // 3:height // 2, width // 3:width // 2] += 120
    return gray


def region_sequence(x, y, w, h):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType = 1, 1
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x, y
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x + w - 1, y + h - 1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX, item.PhysicalDeltaY = 0.01, 0.01
    return Sequence([item])


@pytest.fixture
def inputs(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), scan(1))
    (root / "b.dcm").write_bytes(dicom_bytes(scan(2), SequenceOfUltrasoundRegions=region_sequence(20, 10, 150, 140)))
    (root / "c.dcm").write_bytes(dicom_bytes(np.stack([scan(3 + k) for k in range(4)]), NumberOfFrames=4))
    return root


@pytest.fixture(scope="module")
def clf(tiny_export) -> Classifier:
    return Classifier.load(tiny_export, variant="onnx-fp32", frames="all")


def test_reports_carry_the_region_and_the_frames(clf, inputs, tmp_path):
    results = predict_paths(clf, [inputs])
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in results}
    assert all(r.ok for r in results), [r.error for r in results]
    write_json(tmp_path / "r.json", results)
    write_csv(tmp_path / "r.csv", results)
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert rows["b.dcm"]["region"] == {"x": 20, "y": 10, "width": 150, "height": 140, "source": "dicom",
                                       "mm_per_pixel": [0.1, 0.1]}
    assert rows["a.png"]["region"]["source"] in ("found", "whole") and rows["a.png"]["frames"] is None
    frames = rows["c.dcm"]["frames"]
    assert frames["count"] == 4 and frames["used"] == [1, 2, 3, 4] and frames["summary"] == "mean"
    assert rows["c.dcm"]["probability"] == pytest.approx(np.mean(frames["probabilities"]))

    with open(tmp_path / "r.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == REPORT_FIELDS + REGION_FIELDS + FRAME_FIELDS + ROI_FIELDS
        table = {r["path"].rsplit("/", 1)[-1]: r for r in reader}
    b, c = table["b.dcm"], table["c.dcm"]
    assert (b["region_x"], b["region_y"], b["region_width"], b["region_height"], b["region_source"]) == \
        ("20", "10", "150", "140", "dicom")
    assert float(b["mm_per_pixel_x"]) == pytest.approx(0.1) and b["frames_in_file"] == ""
    assert c["frames_in_file"] == "4" and c["frames_used"] == "1;2;3;4" and c["frame_summary"] == "mean"
    assert [float(v) for v in c["frame_probabilities"].split(";")] == pytest.approx(frames["probabilities"])
    assert float(c["max_frame_probability"]) == pytest.approx(max(frames["probabilities"]))
    assert "mean of 4 frames (highest" in format_table([by_name["c.dcm"]])


def test_cli_region_box_and_frames(tiny_export, inputs, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["predict", str(inputs / "a.png"), str(inputs / "c.dcm"), "--model", str(tiny_export),
                 "--variant", "onnx-fp32", "--region", "10,20,150,120", "--frames", "2", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert DISCLAIMER in captured.out and "frame 2 of 4" in captured.out
    assert "scan region: 10,20,150,120, cine frames: 2" in captured.err
    rows = json.loads(out.read_text())
    for row in rows:
        assert row["region"] == {"x": 10, "y": 20, "width": 150, "height": 120, "source": "given",
                                 "mm_per_pixel": None}
    assert rows[1]["frames"]["used"] == [2]


def test_cli_region_off_and_frame_numbers(tiny_export, inputs, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["predict", str(inputs), "--model", str(tiny_export), "--variant", "onnx-fp32",
                 "--region", "off", "--frames", "3", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err                   # the stills a.png and b.dcm are classified as they are
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out.read_text())}
    assert rows["a.png"]["error"] is None and rows["a.png"]["frames"] is None
    assert rows["c.dcm"]["region"]["source"] == "whole" and rows["c.dcm"]["frames"]["used"] == [3]
    code = main(["predict", str(inputs / "c.dcm"), "--model", str(tiny_export), "--frames", "5", "--json", str(out)])
    assert code == 1
    assert json.loads(out.read_text())[0]["error"].endswith("frame 5 asked for, but the file has 4 frames (1 to 4)")
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--region", "0,0,0,10"], "must be positive"), (["--region", "left"], "auto, off or a box"),
    (["--frames", "0"], "counts from 1"), (["--frames", "last"], "middle, all or a frame number"),
])
def test_cli_bad_region_or_frames_is_a_usage_error(tiny_export, inputs, flags, message, capsys):
    code = main(["predict", str(inputs / "a.png"), "--model", str(tiny_export), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "bcd: error:" in err and message in err and "Traceback" not in err


def test_cli_box_outside_an_image_is_an_error_row(tiny_export, inputs, capsys):
    code = main(["predict", str(inputs / "a.png"), "--model", str(tiny_export), "--region", "100,100,150,150"])
    out = capsys.readouterr().out
    assert code == 1 and "ERROR: the region box 100,100,150,150 (x,y,width,height) does not fit the 200x160" in out
