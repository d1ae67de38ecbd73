"""The inference engines behind `--backend`: OpenVINO on real exported files against
ONNX Runtime, the `auto` rule, the parity record (backends.json), the per-process
comparison, and clear errors. Real engines throughout (the tiny 32x32 export)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bcd.cli import build_parser, main
from runtime.backends import (
    BACKENDS,
    BACKENDS_FILE,
    choose_backend,
    cpu_signature,
    engine_checked,
    read_backend_record,
)
from runtime.classifier import Classifier
from runtime.model_files import ModelLoadError
from tests.conftest import needs_module

REPO = Path(__file__).resolve().parents[2]
INTEL_AMX = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: avx512f avx512_vnni amx_int8 amx_bf16\n"
AMD_VNNI = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: avx512f avx512_vnni avx512_bf16\n"

openvino = needs_module("openvino")   # the openvino extra (in the dev extra)


def images(root: Path, n: int) -> list[Path]:
    return sorted(p for p in root.rglob("*.png") if "_mask" not in p.stem)[:n]


def private_copy(export: Path, dst: Path) -> Path:
    shutil.copytree(export, dst)
    return dst


def checked_record(variant: str, sha: str, speed: dict | None = None) -> dict:
    entry = {"sha256": sha, "openvino": {"status": "ok"}, "onnxruntime": {"status": "ok"}}
    if speed is not None:
        entry["speed"] = speed
    return {"variants": {variant: entry}}


# --------------------------------------------------------------------------- the auto rule

def test_cli_offers_the_runtime_backends():
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    backend = next(a for a in predict._actions if a.dest == "backend")
    assert tuple(backend.choices) == BACKENDS == ("auto", "onnxruntime", "openvino", "litert")


def test_auto_rule():
    rec = checked_record("onnx-int8", "ab")
    sig = "x86_64|AMD EPYC|2"
    # not installed, not checked, wrong file: ONNX Runtime
    assert choose_backend("auto", "onnx", "onnx-int8", rec, sha256="ab", cpuinfo=INTEL_AMX, installed=False)[0] == "onnxruntime"
    assert choose_backend("auto", "onnx", "onnx-int8", {}, sha256="ab", cpuinfo=INTEL_AMX, installed=True)[0] == "onnxruntime"
    assert choose_backend("auto", "onnx", "onnx-int8", rec, sha256="cd", cpuinfo=INTEL_AMX, installed=True)[0] == "onnxruntime"
    # checked, no speed record: OpenVINO on AMX only
    assert choose_backend("auto", "onnx", "onnx-int8", rec, signature=sig, sha256="ab", cpuinfo=INTEL_AMX,
                          installed=True)[0] == "openvino"
    assert choose_backend("auto", "onnx", "onnx-int8", rec, signature=sig, sha256="ab", cpuinfo=AMD_VNNI,
                          installed=True)[0] == "onnxruntime"
    # ... and only for int8 weights: AMX's speed-up was never measured on a uint8-weight file
    engine, why = choose_backend("auto", "onnx", "onnx-int8", rec, signature=sig, sha256="ab", cpuinfo=INTEL_AMX,
                                 installed=True, int8_weights="uint8")
    assert engine == "onnxruntime" and "uint8" in why
    assert choose_backend("auto", "onnx", "onnx-int8", rec, signature=sig, sha256="ab", cpuinfo=INTEL_AMX,
                          installed=True, int8_weights="7bit")[0] == "openvino"
    # a speed record for this CPU decides, either way, whatever the weights
    for faster in ("openvino", "onnxruntime"):
        timed = checked_record("onnx-int8", "ab", {sig: {"faster": faster, "created": "today"}})
        for cpu in (INTEL_AMX, AMD_VNNI):
            for weights in (None, "uint8"):
                engine, why = choose_backend("auto", "onnx", "onnx-int8", timed, signature=sig, sha256="ab",
                                             cpuinfo=cpu, installed=True, int8_weights=weights)
                assert engine == faster and "measured" in why
    # a record for another CPU does not count
    other = checked_record("onnx-int8", "ab", {"x86_64|Other|8": {"faster": "openvino"}})
    assert choose_backend("auto", "onnx", "onnx-int8", other, signature=sig, sha256="ab", cpuinfo=AMD_VNNI,
                          installed=True)[0] == "onnxruntime"
    # a failed parity check never serves OpenVINO
    failed = checked_record("onnx-int8", "ab", {sig: {"faster": "openvino"}})
    failed["variants"]["onnx-int8"]["openvino"]["status"] = "failed"
    assert choose_backend("auto", "onnx", "onnx-int8", failed, signature=sig, sha256="ab", cpuinfo=INTEL_AMX,
                          installed=True)[0] == "onnxruntime"
    assert choose_backend("auto", "tflite", "tflite-fp32", rec, installed=True)[0] == "litert"


def test_named_backends_and_their_errors():
    assert choose_backend("openvino", "onnx", installed=True) == ("openvino", "asked for")
    assert choose_backend("onnxruntime", "onnx", installed=False)[0] == "onnxruntime"
    with pytest.raises(ModelLoadError, match=r"pip install 'breast-cancer-edge\[openvino\]'"):
        choose_backend("openvino", "onnx", installed=False)
    with pytest.raises(ModelLoadError, match="cannot run a .tflite variant"):
        choose_backend("openvino", "tflite", "tflite-fp32", installed=True)
    with pytest.raises(ModelLoadError, match="cannot run a .onnx variant"):
        choose_backend("litert", "onnx", "onnx-int8", installed=True)
    with pytest.raises(ModelLoadError, match="unknown backend"):
        choose_backend("tensorrt", "onnx")


def test_cpu_signature_names_this_cpu():
    sig = cpu_signature(AMD_VNNI)
    assert "AMD EPYC" in sig and sig.count("|") == 2


# --------------------------------------------------------------------------- real inference

@pytest.mark.parametrize("variant", ["onnx-fp32", "onnx-int8"])
def test_openvino_matches_onnxruntime_with_gradcam(tiny_export, tiny_dataset, variant):
    files = images(tiny_dataset, 6)
    with Classifier.load(tiny_export, variant=variant, backend="onnxruntime") as ort_clf, \
            Classifier.load(tiny_export, variant=variant, backend="openvino") as ov_clf:
        assert (ort_clf.engine, ov_clf.engine) == ("onnxruntime", "openvino")
        assert ov_clf.info.backend == "openvino" and ov_clf.has_cam
        ref = ort_clf.predict(files, with_cam=True, batch_size=4)     # 4 + 2: two batch sizes
        got = ov_clf.predict(files, with_cam=True, batch_size=4)
    p_ref = np.array([p.probability for p in ref])
    p_got = np.array([p.probability for p in got])
    assert np.all((p_got >= 0) & (p_got <= 1))
    # OpenVINO may compute the float parts in bf16 (CPUs with native bf16): close, not equal
    assert np.max(np.abs(p_got - p_ref)) < 0.05, (p_got, p_ref)
    for a, b in zip(got, ref):
        assert a.cam is not None and a.cam.shape == b.cam.shape
        assert 0.0 <= a.cam.min() and a.cam.max() <= 1.0
        if a.cam.std() > 0 and b.cam.std() > 0:
            r = np.corrcoef(a.cam.ravel(), b.cam.ravel())[0, 1]
            assert r > 0.9, (r, a.path, a.cam.std(), b.cam.std())


def test_check_writes_the_record_and_auto_follows_it(tiny_export, tiny_dataset, tmp_path):
    from export.engine_parity import check

    export = private_copy(tiny_export, tmp_path / "export")
    with Classifier.load(export) as clf:          # nothing recorded: ONNX Runtime
        assert clf.engine == "onnxruntime" and "parity" in clf.info.backend_reason
    doc = check(export, data=tiny_dataset)
    record = read_backend_record(export)
    assert record == json.loads((export / BACKENDS_FILE).read_text()) == doc
    manifest = json.loads((export / "manifest.json").read_text())
    for v in manifest["variants"]:
        entry = record["variants"][v["name"]]
        assert entry["sha256"] == v["sha256"]
        ov = entry["openvino"]
        assert ov["parity"]["n"] == len(images(tiny_dataset, 1000))
        assert ov["status"] == ("ok" if not ov["problems"] else "failed")
        assert ov["precision"] in ("f32", "bf16", "f16")
    variant = "onnx-int8"
    passed = engine_checked(record, variant, "openvino", record["variants"][variant]["sha256"])
    # a speed record for this CPU saying OpenVINO is faster: auto serves OpenVINO when it
    # passed the parity check, and never when it failed it (however fast)
    record["variants"][variant]["speed"] = {cpu_signature(): {"faster": "openvino", "created": "test"}}
    (export / BACKENDS_FILE).write_text(json.dumps(record))
    with Classifier.load(export, variant=variant) as clf:
        if passed:
            assert clf.engine == "openvino" and "measured" in clf.info.backend_reason
            assert clf.predict(images(tiny_dataset, 1)[0], with_cam=True).cam is not None
        else:
            assert clf.engine == "onnxruntime", clf.info.backend_reason
    # the same record for a changed file is ignored
    record["variants"][variant]["sha256"] = "0" * 64
    (export / BACKENDS_FILE).write_text(json.dumps(record))
    with Classifier.load(export, variant=variant) as clf:
        assert clf.engine == "onnxruntime"


# --------------------------------------------------------------------------- command line

def test_predict_backend_flag(tiny_export, tiny_dataset, tmp_path, capsys):
    image = images(tiny_dataset, 1)[0]
    results = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / f"{backend}.json"
        code = main(["predict", str(image), "--model", str(tiny_export), "--backend", backend, "--json", str(out),
                     "--heatmap", str(tmp_path / backend)])
        assert code == 0
        assert f"{backend}," in capsys.readouterr().err
        results[backend] = json.loads(out.read_text())
        assert list((tmp_path / backend).glob("*_gradcam.png"))
    probs = [r[0]["probability"] for r in results.values()]
    assert abs(probs[0] - probs[1]) < 0.05
    # an export without .tflite variants: --backend litert is a clear error, not a traceback
    assert main(["predict", str(image), "--model", str(tiny_export), "--backend", "litert"]) == 2
    assert "no usable .tflite variant" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--model", str(tiny_export), "--backend", "tensorrt"])


def test_openvino_missing_is_a_clear_error(tiny_export, tiny_dataset):
    """In a process where the openvino package cannot be imported (as on an install
    without the extra): --backend openvino says which extra to install; auto still works
    on ONNX Runtime."""
    image = images(tiny_dataset, 1)[0]
    code = textwrap.dedent(f"""
        import sys
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'openvino':
                    raise ModuleNotFoundError("No module named 'openvino'", name=name)
        sys.meta_path.insert(0, Hide())
        from bcd.cli import main
        print('auto', main(['predict', {str(image)!r}, '--model', {str(tiny_export)!r}]))
        print('openvino', main(['predict', {str(image)!r}, '--model', {str(tiny_export)!r}, '--backend', 'openvino']))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert "auto 0" in out.stdout and "openvino 2" in out.stdout, (out.stdout, out.stderr)
    assert "pip install 'breast-cancer-edge[openvino]'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow   # one process per engine
def test_compare_times_each_engine_in_its_own_process(tiny_export, tmp_path):
    """Few runs, one round: only that every contender ran in a process of its own and
    the ratios are the ones its medians give (no timing assertions)."""
    from benchmarks.backends import compare, compare_markdown

    doc = compare([tiny_export], runs=3, warmup=1, rounds=1)
    [model] = doc["models"]
    rows = model["contenders"]
    assert set(rows) == {"bcd-default", "bcd-onnxruntime", "bcd-openvino", "onnxruntime-spinning",
                         "openvino-latency", "openvino-default"}
    for name, r in rows.items():
        assert r["error"] is None and r["runs"] == 3, (name, r["error"])
    assert rows["bcd-onnxruntime"]["engine"] == "onnxruntime" and rows["bcd-openvino"]["engine"] == "openvino"
    best = min(rows[c]["p50_ms"] for c in ("openvino-latency", "openvino-default"))
    assert model["openvino_best_ms"] == best
    assert model["default_vs_openvino_best"] == pytest.approx(rows["bcd-default"]["p50_ms"] / best)
    text = compare_markdown(doc, "cmd")
    assert "bcd default / OpenVINO's best" in text and "not a diagnosis" in text


def test_demo_serves_the_chosen_backend(tiny_export, tiny_dataset):
    from demo.config import DemoConfig
    from demo.service import DemoService

    with pytest.raises(ValueError, match="backend"):
        DemoConfig(model=tiny_export, backend="tensorrt")
    data = images(tiny_dataset, 1)[0].read_bytes()
    outcomes = {}
    for backend in ("onnxruntime", "openvino"):
        service = DemoService(DemoConfig(model=tiny_export, threads=1, backend=backend))
        try:
            outcomes[backend] = service.classify_bytes(data, "scan.png")
        finally:
            service.close()
        assert outcomes[backend].ok and outcomes[backend].engine == backend
        assert outcomes[backend].to_json()["engine"] == backend
        assert outcomes[backend].overlay_rgb is not None                # Grad-CAM on both engines
    assert abs(outcomes["openvino"].probability - outcomes["onnxruntime"].probability) < 0.05
