"""Cold start and memory footprint, measured in a fresh process.

`python -m benchmarks.probe` loads ONE model, classifies ONE image file, and prints a
JSON object on stdout with its own timestamps and its peak resident memory:

    python -m benchmarks.probe --export EXPORT_DIR --variant onnx-int8 --image scan.png --threads 2
    python -m benchmarks.probe --keras RUN_DIR --image scan.png --threads 2

Runtime variants go through `runtime.classifier.Classifier` (what a clinic PC imports:
onnxruntime, OpenCV, numpy; LiteRT for .tflite), the Keras original through tf-keras
only (no scikit-learn or matplotlib, which the training code would pull in). The first
prediction includes reading and preprocessing the image, as it would at a clinic.

Timestamps are wall-clock (`time.time()`), so the parent can subtract the moment it
started the process: cold start = process start -> first prediction, interpreter start-up
included. Peak RSS (MiB) is taken after the prediction, for the whole process:
interpreter, libraries, model and buffers; on Linux from VmHWM, because
`resource.getrusage(RUSAGE_SELF).ru_maxrss` is inherited from the parent across
fork/exec (see `_peak_rss`), elsewhere from ru_maxrss.

`run_probe` (parent side) starts the probe and parses its output. This module imports
only the standard library at the top, so the probe measures the imports it makes.
"""
from __future__ import annotations

import time

T_START = time.time()        # as early as possible: the probe's own start, before any heavy import

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

PROBE_TIMEOUT_S = 600


def _peak_rss() -> dict:
    """Peak resident memory of this process, in MiB (runtime.host.peak_rss_mib: VmHWM on
    Linux). `ru_maxrss` is reported beside it for reference only: on Linux it is inherited
    across fork/exec, so a probe started by a big parent (the benchmark holds TensorFlow
    and every model) would report at least the parent's RSS there."""
    from runtime.host import peak_rss_mib
    vm_hwm = Path("/proc/self/status").is_file()
    out: dict = {"peak_rss_mib": peak_rss_mib(), "peak_rss_source": "VmHWM" if vm_hwm else "ru_maxrss",
                 "ru_maxrss_mib": None}
    try:
        import resource
        scale = 1.0 if sys.platform == "darwin" else 1024.0
        out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / (1024.0 * 1024.0)
    except ImportError:          # Windows
        pass
    return out


def _set_tf_threads(tf, threads: int) -> None:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _run_keras(run_dir: Path, image: Path, threads: int) -> dict:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from train.tf_setup import keras, tf
    from runtime.images import read_image
    from runtime.preprocessing import PreprocessSpec, prepare

    _set_tf_threads(tf, threads)
    t_imported = time.time()
    info = json.loads((run_dir / "run.json").read_text())
    spec = PreprocessSpec.from_dict(info["preprocessing"])
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    t_loaded = time.time()
    x = prepare(read_image(image), spec)[None]
    prob = float(model(x, training=False).numpy().reshape(-1)[0])
    t_predicted = time.time()
    return {"t_imported": t_imported, "t_loaded": t_loaded, "t_predicted": t_predicted, "probability": prob}


def _run_variant(export_dir: Path, variant: str, image: Path, threads: int, backend: str | None = None) -> dict:
    from runtime.classifier import Classifier

    t_imported = time.time()
    clf = Classifier.load(export_dir, variant=variant, threads=threads, force=True, backend=backend)
    t_loaded = time.time()
    pred = clf.predict(str(image))
    t_predicted = time.time()
    if pred.error:
        raise RuntimeError(pred.error)
    return {"t_imported": t_imported, "t_loaded": t_loaded, "t_predicted": t_predicted,
            "probability": pred.probability}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe",
                                     description="load one model, classify one image, print timings as JSON")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--export", type=Path, help="export directory (with --variant)")
    which.add_argument("--keras", type=Path, help="training run directory (model.keras + run.json)")
    parser.add_argument("--variant", help="variant name in the export's manifest")
    parser.add_argument("--backend", help="engine for --export (default: the runtime's auto choice)")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    doc: dict = {"t_start": T_START, "pid": os.getpid()}
    try:
        if args.export is not None:
            if not args.variant:
                raise ValueError("--export needs --variant")
            doc.update(_run_variant(args.export, args.variant, args.image, args.threads, args.backend))
        else:
            doc.update(_run_keras(args.keras, args.image, args.threads))
        doc["ok"], doc["error"] = True, None
    except Exception as err:  # noqa: BLE001 - reported to the parent as JSON
        doc["ok"], doc["error"] = False, " ".join(f"{err.__class__.__name__}: {err}".split())[:600]
    doc.update(_peak_rss())
    # the parent reads the LAST line of stdout: libraries may print before it
    sys.stdout.write("\n" + json.dumps(doc) + "\n")
    sys.stdout.flush()
    return 0 if doc["ok"] else 1


# --------------------------------------------------------------------------- parent side

def probe_command(image: Path, threads: int, export_dir: Path | None = None, variant: str | None = None,
                  keras_run: Path | None = None, backend: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.probe", "--image", str(image), "--threads", str(threads)]
    if keras_run is not None:
        return cmd + ["--keras", str(keras_run)]
    return cmd + ["--export", str(export_dir), "--variant", str(variant)] + (["--backend", backend] if backend else [])


def run_probe(command: list[str], timeout: float = PROBE_TIMEOUT_S) -> dict:
    """Start one probe; returns {ok, error, cold_start_s, interpreter_s, import_s, load_s,
    first_predict_s, peak_rss_mib, probability}. Never raises for a failing probe."""
    from benchmarks.child import checkout_env, run_json_child   # parent side only: not in the probe's own timing

    env = checkout_env(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    t_spawn = time.time()
    doc = run_json_child(command, timeout, "the probe process", env)
    out = {"ok": bool(doc.get("ok")), "error": doc.get("error"), "peak_rss_mib": doc.get("peak_rss_mib"),
           "peak_rss_source": doc.get("peak_rss_source"), "ru_maxrss_mib": doc.get("ru_maxrss_mib"),
           "probability": doc.get("probability")}
    if out["ok"]:
        out.update(
            cold_start_s=doc["t_predicted"] - t_spawn,
            interpreter_s=doc["t_start"] - t_spawn,
            import_s=doc["t_imported"] - doc["t_start"],
            load_s=doc["t_loaded"] - doc["t_imported"],
            first_predict_s=doc["t_predicted"] - doc["t_loaded"],
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
