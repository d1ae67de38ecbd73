"""`bcd benchmark` / benchmarks/ end to end on the tiny 32x32 export (ONNX FP32, ONNX
INT8, TFLite FP32 + the Keras original): real sessions, real probe processes, few runs.

Never asserts absolute times (a shared 2-core machine): only the schema, that every model
is present, that ratios are consistent with the raw timings written next to them, the
output files, failure rows, and the size sweep.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bcd.cli import main

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
VARIANTS = ("onnx-fp32", "onnx-int8", "onnx-fp16", "tflite-fp32")   # onnx-fp16@openvino: its OOD output was a KeyError


def with_engines(names) -> set[str]:
    """Row names: every .onnx variant also runs on OpenVINO when it is installed."""
    from runtime.backends import openvino_installed
    ov = openvino_installed()
    return {n for name in names for n in ([name, f"{name}@openvino"] if ov and name.startswith("onnx-") else [name])}


ROWS = with_engines(VARIANTS)
ORIGINAL = "keras-original"
FAST = ("--runs", "3", "--warmup", "1", "--rounds", "2", "--batch", "4", "--bootstrap", "50")
ROW_KEYS = {"name", "role", "format", "precision", "engine", "file", "file_bytes", "size_ratio",
            "size_ratio_fp32_weights", "latency_ms", "speedup_p50", "throughput_ips", "throughput_ratio",
            "throughput_batch_ms", "cold_start_s", "cold_start", "peak_rss_mb", "accuracy", "export_status",
            "export_reason", "status", "error", "notes"}
ACCURACY_KEYS = {"auc", "sensitivity", "specificity", "accuracy", "ci95", "flip_rate", "flips", "max_abs_diff",
                 "n", "n_malignant", "n_benign", "threshold"}


def _rows(doc: dict) -> dict[str, dict]:
    return {r["name"]: r for r in doc["variants"]}


@pytest.fixture(scope="module")
def bench(bench_export, graded_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    code = main(["benchmark", str(bench_export), "--original", str(graded_run), "--out", str(out),
                 "--cold-starts", "1", *FAST])
    return code, out, json.loads((out / "results.json").read_text())


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow   # bench_export (TFLite too) and a benchmark run with probe processes
def test_schema_and_every_model_present(bench, bench_export):
    code, out, doc = bench
    assert code == 0
    for key in ("schema_version", "machine", "settings", "model", "threshold", "variants", "baseline", "original",
                "pareto_front", "exit_code"):
        assert key in doc, key
    machine = doc["machine"]
    for key in ("cpu", "physical_cores", "logical_cores", "flags", "versions", "threads"):
        assert key in machine, key
    for flag in ("avx2", "avx512", "avx512_vnni", "avx_vnni", "vnni", "amx", "int8_dot_product"):
        assert isinstance(machine["flags"][flag], bool), flag
    assert {"onnxruntime", "tensorflow", "python"} <= set(machine["versions"])
    settings = doc["settings"]
    assert settings["runs"] == 3 and settings["warmup"] == 1 and settings["batch"] == 4
    assert settings["command"].startswith("bcd benchmark ") and "--runs 3" in settings["command"]
    assert settings["data"]["kind"] == "validation split" and settings["data"]["n"] > 0
    assert "date" in settings

    rows = _rows(doc)
    assert set(rows) == {ORIGINAL, *ROWS}
    assert doc["baseline"] == ORIGINAL and rows[ORIGINAL]["role"] == "original"
    manifest = json.loads((bench_export / "manifest.json").read_text())
    for entry in manifest["variants"]:
        row = rows[entry["name"]]
        assert (row["format"], row["precision"]) == (entry["format"], entry["precision"])
        assert row["export_status"] == entry["status"]
    for name, row in rows.items():
        assert ROW_KEYS <= set(row), name
        assert row["status"] == "ok" and row["error"] is None, (name, row["error"])
        assert set(row["latency_ms"]) >= {"p50", "p95", "mean", "runs"} and row["latency_ms"]["runs"] == 3
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p95"]
        acc = row["accuracy"]
        assert ACCURACY_KEYS <= set(acc), name
        assert set(acc["ci95"]) == {"auc", "sensitivity", "specificity", "accuracy"}
        assert acc["n"] == settings["data"]["n"] and acc["threshold"] == doc["threshold"]["value"]
        assert row["cold_start_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["cold_start"]["load_s"] >= 0 and row["cold_start"]["first_predict_s"] >= 0
    assert rows[ORIGINAL]["accuracy"]["flip_rate"] == 0
    # FP32 conversions agree with Keras; INT8 loosely
    assert rows["onnx-fp32"]["accuracy"]["max_abs_diff"] < 1e-3
    assert rows["tflite-fp32"]["accuracy"]["max_abs_diff"] < 1e-3
    assert rows["onnx-int8"]["accuracy"]["max_abs_diff"] < 0.1
    for name in ROWS - set(VARIANTS):            # the same files on OpenVINO (bf16 where the CPU has it)
        variant = name.split("@")[0]
        assert rows[name]["backend"] == "openvino" and rows[name]["variant"] == variant
        assert rows[name]["file"] == rows[variant]["file"]
        assert rows[name]["accuracy"]["max_abs_diff"] < 0.1
    assert rows["onnx-int8"]["backend"] == "onnxruntime" and rows["tflite-fp32"]["backend"] == "litert"


@pytest.mark.slow   # the benchmark run
def test_ratios_are_consistent_with_the_raw_timings(bench, bench_export, graded_run):
    _, _, doc = bench
    rows = _rows(doc)
    base = rows[ORIGINAL]
    assert base["file_bytes"] == (graded_run / "model.keras").stat().st_size
    assert doc["model"]["fp32_weight_bytes"] == doc["model"]["params"] * 4
    for name, row in rows.items():
        assert row["speedup_p50"] == pytest.approx(base["latency_ms"]["p50"] / row["latency_ms"]["p50"])
        batch_p50 = row["throughput_batch_ms"]["p50"]
        assert row["throughput_ips"] == pytest.approx(doc["settings"]["batch"] / (batch_p50 / 1000.0))
        assert row["throughput_ratio"] == pytest.approx(row["throughput_ips"] / base["throughput_ips"])
        assert row["size_ratio"] == pytest.approx(row["file_bytes"] / base["file_bytes"])
        assert row["size_ratio_fp32_weights"] == pytest.approx(row["file_bytes"] / doc["model"]["fp32_weight_bytes"])
        if name != ORIGINAL:
            assert row["file_bytes"] == (bench_export / row["file"]).stat().st_size
        acc = row["accuracy"]
        assert acc["flip_rate"] == pytest.approx(acc["flips"] / acc["n"])
    assert base["speedup_p50"] == base["throughput_ratio"] == base["size_ratio"] == 1.0
    # INT8 weights: about a quarter of the FP32 file
    assert rows["onnx-int8"]["file_bytes"] < 0.5 * rows["onnx-fp32"]["file_bytes"]


@pytest.mark.slow   # the benchmark run
def test_markdown_and_plot(bench):
    _, out, doc = bench
    md = (out / "results.md").read_text()
    assert "Research and education only" in md
    assert doc["settings"]["command"] in md
    for name in (ORIGINAL, *ROWS):
        assert name in md
    if doc["machine"]["flags"]["int8_dot_product"]:
        assert "will not carry over" in md
    else:
        assert "barely speeds it up" in md
    # the speed table is sorted by p50 latency
    speed = md.split("## Speed and footprint")[1].split("## Accuracy")[0]
    order = [line.split("|")[1].strip().strip("*").split("*")[0].split(" ")[0]
             for line in speed.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    p50 = {r["name"]: r["latency_ms"]["p50"] for r in doc["variants"]}
    assert sorted(order, key=lambda n: p50[n]) == order and set(order) == set(p50)
    assert (out / "pareto.png").read_bytes()[:8] == PNG
    assert not list(out.glob(".*tmp*")), "temporary files left behind"
    assert doc["pareto_front"] and set(doc["pareto_front"]) <= set(p50)


@pytest.mark.slow   # bench_export, probe processes
def test_broken_and_error_variants_get_failed_rows(bench_export, graded_run, tmp_path, capsys):
    from runtime.manifest import read_manifest, write_manifest

    broken = tmp_path / "export"
    shutil.copytree(bench_export, broken)
    data = bytearray((broken / "onnx-int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "onnx-int8.onnx").write_bytes(bytes(data))            # -> sha256 mismatch
    manifest = read_manifest(broken)
    entry = manifest.variant("tflite-fp32")                          # -> an export "error" row
    entry.status, entry.reason, entry.file, entry.sha256, entry.size_bytes, entry.parity = (
        "error", "converter exploded", None, None, None, None)
    write_manifest(broken, manifest)

    # no --original: the run is found next to the export through the manifest's source_model
    # ("graded/model.keras"), and its sha256 checked
    (tmp_path / graded_run.name).symlink_to(graded_run, target_is_directory=True)

    out = tmp_path / "out"
    code = main(["benchmark", str(broken), "--out", str(out), "--cold-starts", "0",
                 "--runs", "2", "--warmup", "0", "--rounds", "1", "--batch", "2", "--bootstrap", "0"])
    assert code == 1
    doc = json.loads((out / "results.json").read_text())
    assert doc["original"]["found_by"] == "manifest source_model"
    assert Path(doc["original"]["run_dir"]).resolve() == graded_run.resolve()
    rows = _rows(doc)
    assert rows["onnx-int8"]["status"] == "failed" and "sha256" in rows["onnx-int8"]["error"]
    assert rows["tflite-fp32"]["status"] == "failed" and "converter exploded" in rows["tflite-fp32"]["error"]
    assert rows["tflite-fp32"]["export_status"] == "error"
    for name in (ORIGINAL, "onnx-fp32"):
        assert rows[name]["status"] == "ok" and rows[name]["latency_ms"]["runs"] == 2
        assert rows[name]["accuracy"]["ci95"]["auc"] == {"low": None, "high": None}   # --bootstrap 0
        assert rows[name]["cold_start_s"] is None                                   # --cold-starts 0
    assert rows["onnx-int8"]["speedup_p50"] is None and rows["onnx-int8"]["accuracy"] is None
    assert doc["exit_code"] == 1
    md = (out / "results.md").read_text()
    assert "## Failed" in md and "converter exploded" in md
    assert (out / "pareto.png").read_bytes()[:8] == PNG
    assert "onnx-int8: load: " in capsys.readouterr().out


@pytest.mark.slow   # exports and benchmarks several input sizes
def test_sweep_sizes_writes_sizes_json(bench_export, graded_run, tiny_dataset, tmp_path):
    out = tmp_path / "out"
    code = main(["benchmark", str(bench_export), "--original", str(graded_run), "--out", str(out),
                 "--data", str(tiny_dataset),
                 "--variants", "onnx-fp32", "--cold-starts", "0", "--runs", "2", "--warmup", "1", "--rounds", "1",
                 "--batch", "2", "--bootstrap", "0", "--sweep-sizes", "32,48"])
    assert code == 0
    sizes = json.loads((out / "sizes.json").read_text())
    assert [e["size"] for e in sizes["sizes"]] == [32, 48]
    assert "random weights" in sizes["note"]
    for e in sizes["sizes"]:
        assert "error" not in e, e.get("error")
        assert e["keras"]["runs"] == 2 and e["onnx_fp32"]["runs"] == 2
        assert e["speedup_p50"] == pytest.approx(e["keras"]["p50"] / e["onnx_fp32"]["p50"])
    assert sizes["sizes"][1]["gmac"] > sizes["sizes"][0]["gmac"] > 0
    assert (out / "sizes.png").read_bytes()[:8] == PNG
    doc = json.loads((out / "results.json").read_text())
    assert set(_rows(doc)) == {ORIGINAL, *with_engines(["onnx-fp32"])}
    data = doc["settings"]["data"]
    from runtime.dataset import scan_folder
    n_images = len(scan_folder(tiny_dataset).labelled)
    assert data["kind"] == "folder" and data["n"] == n_images == _rows(doc)[ORIGINAL]["accuracy"]["n"]
    assert doc["sweep"]["sizes"] == sizes["sizes"]
    assert "Latency vs input size" in (out / "results.md").read_text()


# --------------------------------------------------------------------------- usage errors

@pytest.mark.slow   # bench_export
def test_wrong_or_missing_original_is_a_usage_error(bench_export, tiny_run, tmp_path, capsys):
    # tiny_run is not the model bench_export was made from (graded_run is): refuse, exit 2
    assert main(["benchmark", str(bench_export), "--original", str(tiny_run), "--out", str(tmp_path / "a")]) == 2
    assert "not the model this export was made from" in capsys.readouterr().err
    # without --original, the run is looked for next to the export; not there -> say what to pass
    assert main(["benchmark", str(bench_export), "--out", str(tmp_path / "b")]) == 2
    assert "--original RUN_DIR" in capsys.readouterr().err
    assert main(["benchmark", str(bench_export), "--variants", "nope", "--out", str(tmp_path / "c")]) == 2
    assert main(["benchmark", str(tmp_path / "missing")]) == 2
    assert main(["benchmark", str(bench_export), "--sweep-sizes", "16"]) == 2
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())


def test_python_dash_m_benchmarks_and_failing_probe(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", str(tmp_path / "missing")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such export directory" in proc.stderr
    assert "Traceback" not in proc.stderr

    from benchmarks.probe import probe_command, run_probe
    result = run_probe(probe_command(tmp_path / "none.png", 1, export_dir=tmp_path, variant="onnx-fp32"))
    assert result["ok"] is False and "manifest" in result["error"]


# --------------------------------------------------------------------------- units

def test_timing_helpers():
    from benchmarks.timing import interleaved, ratio, split_runs, stats_ms

    assert split_runs(30, 4) == [8, 8, 7, 7] and split_runs(2, 5) == [1, 1] and sum(split_runs(31, 5)) == 31
    s = stats_ms([0.001, 0.002, 0.003])
    assert s["p50"] == pytest.approx(2.0) and s["mean"] == pytest.approx(2.0) and s["runs"] == 3
    assert stats_ms([])["p50"] is None
    assert ratio(1.0, 0) is None and ratio(None, 1.0) is None and ratio(3.0, 2.0) == 1.5

    calls = []

    def bad():
        raise RuntimeError("boom")

    result = interleaved({"a": lambda: calls.append("a"), "b": bad}, runs=4, warmup=1, rounds=2)
    assert len(result.samples["a"]) == 4 and "boom" in result.errors["b"] and result.stats("b") is None
    assert calls.count("a") == 1 + 4 + 2      # warm-up, timed, one re-warm per round


def test_pareto_front():
    from benchmarks.plots import pareto_front

    points = [("keras", 100.0, 0.86), ("fp32", 50.0, 0.86), ("int8", 20.0, 0.84), ("slow-bad", 60.0, 0.80),
              ("fast-worse", 10.0, 0.70)]
    assert pareto_front(points) == ["fast-worse", "int8", "fp32"]


def test_cpu_flags_and_int8_note():
    from benchmarks.machine import int8_note
    from runtime.host import cpu_flags

    zen1 = "processor\t: 0\nmodel name\t: AMD EPYC 7551\nflags\t\t: fpu sse avx avx2 fma\n"
    icelake = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_vnni\n"
    alder = "processor\t: 0\nflags\t\t: avx2 avx_vnni\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"
    f = cpu_flags(zen1)
    assert f["avx2"] and not f["avx512"] and not f["vnni"] and not f["int8_dot_product"]
    assert "barely speeds it up" in int8_note(f)
    f = cpu_flags(icelake)
    assert f["avx512"] and f["avx512_vnni"] and f["vnni"] and not f["amx"]
    assert "will not carry over" in int8_note(f)
    assert cpu_flags(alder)["vnni"] and not cpu_flags(alder)["avx512"]
    assert cpu_flags(arm)["dotprod"] and cpu_flags(arm)["int8_dot_product"] and not cpu_flags(arm)["vnni"]


def test_config_validation():
    from benchmarks.config import BenchmarkConfig, parse_sizes

    c = BenchmarkConfig(export_dir="e", runs=30, variants=("a", " b", "a"), sweep_sizes=(96, 96, 128))
    assert c.variants == ("a", "b") and c.sweep_sizes == (96, 128) and c.timed_batches == 6
    assert c.out_dir == Path("e") / "benchmark"
    for bad in ({"runs": 0}, {"warmup": -1}, {"batch": 0}, {"threads": 0}, {"sweep_sizes": (16,)},
                {"variants": ("",)}, {"bootstrap": -1}):
        with pytest.raises(ValueError):
            BenchmarkConfig(export_dir="e", **bad)
    with pytest.raises(ValueError):
        parse_sizes("96,abc")
