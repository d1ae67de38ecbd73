"""The demo's scan region and cine loops (issue 20): the box is drawn on the image shown,
a cine's per-frame probabilities are listed, the region can be turned off, and the
disclaimer stays on the card. Served for real once to check the API's region argument."""
from __future__ import annotations

import socket

import cv2
import numpy as np
import pytest

from demo import views
from demo.config import DemoConfig
from demo.service import REGION_COLOUR, DemoService
from tests.conftest import dicom_bytes

BOX = (40, 30, 140, 110)


def scan(seed: int, height: int = 180, width: int = 240) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 90, (height, width), dtype=np.uint8), (3, 3), 0)
    gray[height // 3:height // 2, width // 3:width // 2] += 120
    return gray


def region_sequence(data_types=(1,), boxes=(BOX,)):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    items = []
    for kind, (x, y, w, h) in zip(data_types, boxes):
        item = Dataset()
        item.RegionSpatialFormat, item.RegionDataType = 1, kind
        item.RegionLocationMinX0, item.RegionLocationMinY0 = x, y
        item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x + w - 1, y + h - 1
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
        item.PhysicalDeltaX = item.PhysicalDeltaY = 0.02
        items.append(item)
    return Sequence(items)


@pytest.fixture(scope="module")
def service(tiny_export):
    s = DemoService(DemoConfig(model=tiny_export, variant="onnx-fp32", threads=1))
    yield s
    s.close()


def amber(rgb: np.ndarray) -> np.ndarray:
    b, g, r = REGION_COLOUR
    return np.all(rgb == (r, g, b), axis=2)


def test_the_dicom_region_is_drawn_and_described(service):
    data = dicom_bytes(scan(1), SequenceOfUltrasoundRegions=region_sequence())
    outcome = service.classify_bytes(data, "screen.dcm", "onnx-fp32")
    assert outcome.ok, outcome.error
    assert outcome.region == {"x": 40, "y": 30, "width": 140, "height": 110, "source": "dicom",
                              "mm_per_pixel": [0.2, 0.2]}
    assert outcome.to_json()["region"] == outcome.region and outcome.to_json()["frames"] is None
    shown = outcome.image_rgb
    assert amber(shown).any() and amber(outcome.overlay_rgb).any()
    # the outline runs along the box, scaled to the shown image (240 px wide -> enlarged to >= 320)
    scale = shown.shape[1] / 240
    column = int(round((40 + 70) * scale))
    rows = np.flatnonzero(amber(shown)[:, column])
    assert abs(rows.min() - 30 * scale) <= 2 and abs(rows.max() - (30 + 110) * scale) <= 2
    page = views.result_html(outcome)
    assert "Classified region: x 40, y 30, 140&times;110 px (the DICOM file&#x27;s own tissue region" in page
    assert "0.200 &times; 0.200 mm per pixel" in page and views.esc(views.DISCLAIMER) in page

    off = service.classify_bytes(data, "screen.dcm", "onnx-fp32", region="off")
    assert off.ok and off.region["source"] == "whole" and not amber(off.image_rgb).any()
    assert "(the whole image)" in views.result_html(off)


def test_a_cine_loop_lists_every_frame(service):
    frames = np.stack([scan(10 + k) for k in range(4)])
    outcome = service.classify_bytes(dicom_bytes(frames, NumberOfFrames=4), "loop.dcm", "onnx-fp32")
    assert outcome.ok, outcome.error
    f = outcome.frames
    assert f["count"] == 4 and f["used"] == [1, 2, 3, 4] and f["summary"] == "mean"
    assert outcome.probability == pytest.approx(np.mean(f["probabilities"]))
    page = views.result_html(outcome)
    assert "Cine loop of 4 frames: 4 classified; the probability above is their mean" in page
    for n, p in zip(f["used"], f["probabilities"]):
        assert f"{n}: {p:.3f}" in page
    assert views.esc(views.DISCLAIMER) in page


def test_refusals_and_bad_settings_are_sentences(service):
    doppler = dicom_bytes(scan(20), SequenceOfUltrasoundRegions=region_sequence((1, 2), (BOX, (60, 40, 50, 40))))
    refused = service.classify_bytes(doppler, "doppler.dcm", "onnx-fp32")
    assert not refused.ok and "colour Doppler overlay" in refused.error and refused.probability is None
    assert "Nothing was classified" in views.result_html(refused)
    bad = service.classify_bytes(dicom_bytes(scan(21)), "a.dcm", "onnx-fp32", region="0,0,0,0")
    assert not bad.ok and "must be positive" in bad.error
    outside = service.classify_bytes(cv2.imencode(".png", scan(22))[1].tobytes(), "a.png", "onnx-fp32",
                                     region="200,150,100,100")
    assert not outside.ok and "does not fit the 240x180 image" in outside.error


gradio_client = pytest.importorskip("gradio_client")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_api_takes_the_region_and_old_clients_still_work(tiny_export, tmp_path):
    from demo.app import launch

    blocks, url = launch(DemoConfig(model=tiny_export, variant="onnx-fp32", port=_free_port(), quiet=True),
                         block=False)
    try:
        path = tmp_path / "screen.dcm"
        path.write_bytes(dicom_bytes(scan(30), SequenceOfUltrasoundRegions=region_sequence()))
        client = gradio_client.Client(url, verbose=False, download_files=False, analytics_enabled=False)
        auto = client.predict(gradio_client.handle_file(str(path)), "onnx-fp32", api_name="/classify")[3]
        assert auto["error"] is None and auto["region"]["source"] == "dicom"
        off = client.predict(gradio_client.handle_file(str(path)), "onnx-fp32", "off", api_name="/classify")[3]
        assert off["error"] is None and off["region"]["source"] == "whole"
    finally:
        blocks.close()
