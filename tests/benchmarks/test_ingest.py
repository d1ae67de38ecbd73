"""`python -m benchmarks.ingest`: the folder it builds, the floor it computes, and one
real run end to end on a tiny folder with the shipped model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime.shipped import default_model_path
from tests.conftest import missing

from benchmarks import ingest
from runtime.images import read_image

REPO = Path(__file__).resolve().parents[2]
SHIPPED = default_model_path() or Path("runtime/models/bus-vgg16-w50-128")


@pytest.mark.parametrize("real", [True, False])
def test_build_folder_makes_scanner_sized_pngs(tmp_path, real):
    data = ingest.DEFAULT_DATA if real else tmp_path / "no-data"
    if real and not ingest.development_images(data):
        missing("development data not present")
    source = ingest.build_folder(tmp_path / "scans", 3, data, seed=1)
    files = sorted((tmp_path / "scans").glob("*.png"))
    assert len(files) == 3
    assert source.startswith("development data" if real else "synthetic")
    images = [read_image(f) for f in files]
    assert all(image.shape == (606, 856, 3) for image in images)
    # a scan inside a black frame: dark margins, textured middle, not all alike
    for image in images:
        assert image[70:590, :110].max() == 0
        assert image[:50, :400].max() > 150                      # the text lines
        assert image[200:400, 300:550].std() > 10
    assert len({image.tobytes() for image in images}) == 3


def fake_round(seconds_per_image: dict[str, float], images: int = 10,
               cpu_share: dict[str, float] | None = None) -> dict[str, list[dict]]:
    runs = {}
    for name, s in seconds_per_image.items():
        result = {"images": images, "seconds": s * images, "cpu_seconds": s * images * (cpu_share or {}).get(name, 1.0),
                  "threads": 2,
                  "engine": "onnxruntime", "variant": "onnx-int8"}
        if name in ("sequential", "pipelined"):
            result.update(decode_workers=0 if name == "sequential" else 2, prefetch_batches=2, failed=0, digest="x")
        runs[name] = [result]
    return runs


def test_floor_is_the_work_spread_over_the_cores_but_never_below_inference():
    # a busy machine: the one-thread phases got half a core, so their CPU time is half their wall time
    runs = fake_round({"read": 0.020, "cls@T": 0.002, "cls@1": 0.006, "sequential": 0.014, "pipelined": 0.008},
                      cpu_share={"read": 0.5, "cls@1": 0.5})
    doc = ingest.summarise({"cores": 2, "batch_size": 8, "runs": runs})
    assert doc["floor_ms_per_image"] == pytest.approx((10 + 3) / 2)
    assert doc["settings"]["pipelined"]["ratio_to_floor_each_round"] == [pytest.approx(6.5 / 8)]
    assert doc["settings"]["pipelined"]["ratio_to_floor"] == pytest.approx(6.5 / 8)
    assert doc["settings"]["sequential"]["files_per_second"] == pytest.approx(1000 / 14)
    assert doc["target_met"] and doc["identical_results"]
    # inference-bound: the floor is the classify step alone
    runs = fake_round({"read": 0.002, "cls@T": 0.009, "cls@1": 0.016, "sequential": 0.011, "pipelined": 0.012})
    doc = ingest.summarise({"cores": 2, "batch_size": 8, "runs": runs})
    assert doc["floor_ms_per_image"] == pytest.approx(9.0)
    assert doc["settings"]["pipelined"]["ratio_to_floor"] == pytest.approx(0.75) and not doc["target_met"]


def test_different_results_are_reported():
    runs = fake_round({"read": 0.01, "cls@T": 0.002, "cls@1": 0.003, "sequential": 0.014, "pipelined": 0.008})
    runs["pipelined"][0]["digest"] = "y"
    assert not ingest.summarise({"cores": 2, "batch_size": 8, "runs": runs})["identical_results"]


def test_share_of_cpu_time_used_by_other_processes():
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    # 1000 ticks on all CPUs, 600 of them busy, 200 of those ours
    assert ingest.others_share((0, 0), (600, 1000), 200 / hz) == pytest.approx(0.4)
    assert ingest.others_share((0, 0), (600, 1000), 100.0) == 0.0          # never below 0
    assert ingest.others_share(None, (600, 1000), 0.0) is None
    first = ingest.cpu_ticks()
    if first is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(300_000))
    second = ingest.cpu_ticks()
    assert second[1] >= first[1] and 0 <= second[0] - first[0] <= second[1] - first[1]


def test_the_note_says_whether_the_machine_was_busy():
    assert "quiet" in ingest.loaded_note({"others_cpu_share_each_round": [0.01, 0.02]})
    busy = ingest.loaded_note({"others_cpu_share_each_round": [0.01, 0.30]})
    assert "busy" in busy and "30 %" in busy
    assert "Could not tell" in ingest.loaded_note({"others_cpu_share_each_round": [None]})


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert ingest.main(["--folder", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_end_to_end_on_a_tiny_folder(tmp_path, capsys):
    if not (SHIPPED / "manifest.json").is_file():
        missing("the shipped model is not in runtime/models/")
    out = tmp_path / "out"
    code = ingest.main(["--n", "12", "--batch-size", "4", "--rounds", "1", "--threads", "1",
                        "--model", str(SHIPPED), "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["images"] == 12 and doc["identical_results"]
    assert set(doc["settings"]) == {"sequential", "pipelined"}
    assert doc["settings"]["sequential"]["decode_workers"] == 0
    assert doc["settings"]["pipelined"]["decode_workers"] >= 1
    c = doc["components_ms_per_image"]
    cpu = doc["components_cpu_ms_per_image"]
    assert c["read_opencv_threads"] > 0 and cpu["read_opencv_threads"] > 0
    assert doc["floor_ms_per_image"] == pytest.approx(max(c["classify_default_threads"],
                                                          (cpu["read"] + cpu["classify_1_thread"]) / doc["cores"]))
    assert all(s["images"] == 12 and s["failed"] == 0 and s["ms_per_image"] > 0 for s in doc["settings"].values())
    text = (out / "results.md").read_text()
    assert "floor" in text and "not a diagnosis" in text and f"{doc['floor_ms_per_image']:.2f}" in text
    assert all(x is None or 0 <= x <= 1 for x in doc["others_cpu_share_each_round"])
    assert "pipelined" in capsys.readouterr().out
