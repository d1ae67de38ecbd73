"""The engines side by side on the same .onnx file: timing.

    python -m benchmarks.backends compare runtime/models/bus-vgg16-w50-128 runtime/models/bus-vgg16-w50-128-slim30
    python -m benchmarks.backends profile runtime/models/bus-vgg16-w50-128

`compare` answers "is `bcd predict`, as installed, as fast as the best engine?". Every
contender runs in a fresh process of its own (engines' thread pools spin and steal
cores from each other when they share one, see STACK-NOTES), one process per contender
per round, the order rotating between rounds; each process warms up, then times batch-1
inference calls on the same deterministic input. Contenders:

* `bcd-default`: `runtime.classifier.Classifier.load(export)` with default settings,
  exactly what `bcd predict` serves (backend auto: OpenVINO when installed and checked,
  else ONNX Runtime), timed as its inference call (`classifier.backend.run`);
* `bcd-onnxruntime`, `bcd-openvino`: the same with that backend named (ONNX Runtime is
  what a runtime-only install, no extras, serves);
* `onnxruntime-spinning`: an ONNX Runtime session with the runtime's former options
  (spin-waiting threads, ONNX Runtime's default), the "today" a runtime-only install is
  compared with;
* `openvino-latency`, `openvino-default`: OpenVINO's own API on the same file (the
  LATENCY hint; no configuration at all); "OpenVINO's best" is the faster of the two.

It prints the medians and the ratios, and writes backends-compare.json/.md (atomically)
when --out is given. Preprocessing is excluded everywhere alike. `--record` also writes
which of `bcd-onnxruntime` and `bcd-openvino` was faster into each export's
backends.json, under this CPU's signature (runtime.backends.cpu_signature): what
`--backend auto` then follows on this machine.

`profile` runs ONNX Runtime's profiler with the runtime's session options and prints the
time per operator type (where ONNX Runtime spends the time).

The parity check that allows an engine to serve a file (backends.json) is
`python -m export.engine_parity`.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.child import checkout_env, run_json_child
from benchmarks.timing import SelfTimed
from runtime.host import DISCLAIMER, package_version, utc_now

CONTENDERS = ("bcd-default", "bcd-onnxruntime", "bcd-openvino", "onnxruntime-spinning", "openvino-latency",
              "openvino-default")
OPENVINO_OWN = ("openvino-latency", "openvino-default")
ENGINE_CONTENDERS = ("bcd-onnxruntime", "bcd-openvino", "bcd-litert")   # one engine through the runtime
CHILD_TIMEOUT_S = 600


# --------------------------------------------------------------------------- child side

def _input(image_size: int) -> "object":
    import numpy as np
    # deterministic, in the range of mean-subtracted BGR pixels; dense kernels take the same time for any values
    return np.random.default_rng(0).normal(0.0, 60.0, (1, image_size, image_size, 3)).astype(np.float32)


def _contender_call(name: str, export_dir: Path, variant: str | None, threads: int | None,
                    x_file: Path | None = None, force: bool = False, keep_input: bool = False):
    """(call, description) for one contender, loaded in this process; input: the array
    saved in `x_file` (.npy), else a deterministic batch of one. keep_input: `call`
    takes the input array as its argument instead (runtime contenders only)."""
    import numpy as np
    from runtime.classifier import Classifier, choose_variant
    from runtime.manifest import read_manifest
    from runtime.session import resolve_threads

    if name.startswith("bcd-"):
        backend = None if name == "bcd-default" else name[len("bcd-"):]
        clf = Classifier.load(export_dir, variant=variant, threads=threads, backend=backend, force=force)
        if keep_input:
            return (lambda batch: clf.backend.run(batch, False)), {
                "engine": clf.engine, "variant": clf.variant, "threads": clf.threads,
                "precision": getattr(clf.backend, "precision", None)}
        x = np.load(x_file) if x_file is not None else _input(clf.spec.image_size)
        return (lambda: clf.backend.run(x, False)), {
            "engine": clf.engine, "variant": clf.variant, "threads": clf.threads, "why": clf.info.backend_reason,
            "precision": getattr(clf.backend, "precision", None)}
    manifest = read_manifest(export_dir)
    entry = choose_variant(manifest, variant, "onnx")
    file = export_dir / entry.file
    size = int(manifest.preprocessing["image_size"])
    x = _input(size)
    threads = resolve_threads(threads)
    if name == "onnxruntime-spinning":
        from runtime.session import create_session
        session = create_session(file.read_bytes(), export_dir, threads, spinning=True)
        names, feed = [session.get_outputs()[0].name], {session.get_inputs()[0].name: x}
        return (lambda: session.run(names, feed)), {"engine": "onnxruntime", "variant": entry.name,
                                                     "threads": threads, "spinning": True}
    if name in OPENVINO_OWN:
        import openvino as ov
        core = ov.Core()
        config = {} if name == "openvino-default" else {"PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(str(file), "CPU", config)
        request = compiled.create_infer_request()
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        return (lambda: request.infer({0: x})), {
            "engine": "openvino", "variant": entry.name, "config": config,
            "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "precision": hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)}
    raise ValueError(f"unknown contender {name!r} (choose from {', '.join(CONTENDERS)})")


def child_main(args: argparse.Namespace) -> int:
    doc: dict = {"contender": args.contender, "pid": os.getpid()}
    try:
        call, about = _contender_call(args.contender, Path(args.export), args.variant, args.threads,
                                      Path(args.input) if args.input else None, args.force)
        doc.update(about)
        for _ in range(args.warmup):
            call()
        samples = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        doc.update(ok=True, error=None, seconds=samples)
    except Exception as err:  # noqa: BLE001 - reported to the parent as JSON
        doc.update(ok=False, error=" ".join(f"{err.__class__.__name__}: {err}".split())[:600])
    sys.stdout.write("\n" + json.dumps(doc) + "\n")
    sys.stdout.flush()
    return 0 if doc["ok"] else 1


# --------------------------------------------------------------------------- parent side

def child_command(contender: str, export_dir: Path, runs: int, warmup: int, threads: int | None = None,
                  variant: str | None = None, x_file: Path | None = None, force: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.backends", "_time", str(export_dir), "--contender", contender,
           "--runs", str(runs), "--warmup", str(warmup)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if variant is not None:
        cmd += ["--variant", variant]
    if x_file is not None:
        cmd += ["--input", str(x_file)]
    if force:
        cmd.append("--force")
    return cmd


def run_child(command: list[str], timeout: float = CHILD_TIMEOUT_S) -> dict:
    """Run one timing process; its last stdout line is the result. Never raises."""
    return run_json_child(command, timeout, "the timing process")


class EngineInProcess(SelfTimed):
    """One variant on one engine, in a process of its own that lives through the whole
    timing phase (for benchmarks.timing.interleaved). It loads the model through the
    runtime once (as `bcd predict` does, with this engine), then each `timed(n)` asks it
    for `warmup` untimed and n timed `backend.run` calls on the array in `x_file`. Between
    turns it sleeps on its stdin (ONNX Runtime's threads do not spin: the runtime turns
    spin-waiting off), so it takes nothing from the other rows. `close()` ends it."""

    def __init__(self, export_dir: Path, variant: str, engine: str, threads: int, x_file: Path,
                 warmup: int, force: bool = True) -> None:
        self.command = child_command(f"bcd-{engine}", export_dir, 0, 0, threads, variant, None, force)
        self.command[self.command.index("_time")] = "_serve"
        self.x_file, self.warmup = Path(x_file), max(1, warmup)
        self.proc: subprocess.Popen | None = None
        self.replies: "queue.Queue[str]" = queue.Queue()

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=checkout_env())
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        self._reply()                                       # "ready" (or the load error)

    def _read(self, stream) -> None:
        for line in stream:
            if line.strip().startswith("{"):
                self.replies.put(line)
        self.replies.put("")                                # the process ended

    def _reply(self) -> dict:
        try:
            line = self.replies.get(timeout=CHILD_TIMEOUT_S)
        except queue.Empty:
            self.close()
            raise RuntimeError(f"the timing process did not answer within {CHILD_TIMEOUT_S}s") from None
        if not line:
            raise RuntimeError("the timing process ended unexpectedly")
        doc = json.loads(line)
        if not doc.get("ok"):
            raise RuntimeError(doc.get("error") or "the timing process failed")
        return doc

    def timed(self, n: int) -> list[float]:
        if self.proc is None:
            self._start()
        self.proc.stdin.write(json.dumps({"runs": n, "warmup": self.warmup, "input": str(self.x_file)}) + "\n")
        self.proc.stdin.flush()
        return list(self._reply()["seconds"])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()                     # end of input: the server exits
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc = None


def serve_main(args: argparse.Namespace) -> int:
    """`_serve`: load once, then answer one JSON request per stdin line with one JSON line."""
    import numpy as np

    def say(doc: dict) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    try:
        call_on, about = _contender_call(args.contender, Path(args.export), args.variant, args.threads,
                                         None, args.force, keep_input=True)
    except Exception as err:  # noqa: BLE001 - reported to the parent as JSON
        say({"ok": False, "error": " ".join(f"{err.__class__.__name__}: {err}".split())[:600]})
        return 1
    say({"ok": True, "ready": True, **about})
    inputs: dict[str, np.ndarray] = {}
    for line in sys.stdin:
        try:
            req = json.loads(line)
            x = inputs.get(req["input"])
            if x is None:
                x = inputs[req["input"]] = np.load(req["input"])
            for _ in range(int(req.get("warmup", 1))):
                call_on(x)
            samples = []
            for _ in range(int(req["runs"])):
                t0 = time.perf_counter()
                call_on(x)
                samples.append(time.perf_counter() - t0)
            say({"ok": True, "seconds": samples})
        except Exception as err:  # noqa: BLE001
            say({"ok": False, "error": " ".join(f"{err.__class__.__name__}: {err}".split())[:600]})
    return 0


def time_in_processes(jobs: dict[str, list[str]], rounds: int, log=None) -> dict[str, dict]:
    """Run every job's command once per round, the order rotating between rounds.
    {name: {"seconds": [...all rounds], "round_medians_ms": [...], "about": {...}, "error": str|None}}."""
    out = {name: {"seconds": [], "round_medians_ms": [], "about": {}, "error": None} for name in jobs}
    names = list(jobs)
    for r in range(rounds):
        alive = [n for n in names if out[n]["error"] is None]
        if not alive:
            break
        shift = r % len(alive)
        for name in alive[shift:] + alive[:shift]:
            if log:
                log(f"round {r + 1}/{rounds}: {name}")
            doc = run_child(jobs[name])
            if not doc.get("ok"):
                out[name]["error"] = doc.get("error") or "failed"
                continue
            out[name]["seconds"] += doc["seconds"]
            out[name]["round_medians_ms"].append(1000.0 * statistics.median(doc["seconds"]))
            out[name]["about"] = {k: v for k, v in doc.items() if k not in ("seconds", "ok", "error", "pid")}
    return out


def _median_ms(entry: dict) -> float | None:
    return 1000.0 * statistics.median(entry["seconds"]) if entry["seconds"] and not entry["error"] else None


def compare(exports: list[Path], runs: int = 30, warmup: int = 5, rounds: int = 5, threads: int | None = None,
            contenders: tuple[str, ...] = CONTENDERS, log=None) -> dict:
    """The comparison document (see the module docstring)."""
    from benchmarks.machine import load_average, machine_info
    from runtime.backends import openvino_installed
    from runtime.session import resolve_threads

    if not openvino_installed():
        contenders = tuple(c for c in contenders if c not in OPENVINO_OWN and c != "bcd-openvino")
    jobs = {}
    for export in exports:
        for c in contenders:
            jobs[f"{Path(export).name}|{c}"] = child_command(c, Path(export), runs, warmup, threads)
    machine = machine_info(resolve_threads(threads))
    machine["versions"]["openvino"] = package_version("openvino")
    started = time.monotonic()
    timed = time_in_processes(jobs, rounds, log)
    machine["load_average_end"] = load_average()
    models = []
    for export in exports:
        label = Path(export).name
        rows = {}
        for c in contenders:
            e = timed[f"{label}|{c}"]
            rows[c] = {"p50_ms": _median_ms(e), "round_medians_ms": [round(v, 3) for v in e["round_medians_ms"]],
                       "runs": len(e["seconds"]), "error": e["error"], **e["about"]}
        own = [(rows[c]["p50_ms"], c) for c in OPENVINO_OWN if c in rows and rows[c]["p50_ms"] is not None]
        best = min(own) if own else (None, None)
        default, ort_new, ort_old, ov_bcd = (rows.get(c, {}).get("p50_ms") for c in
                                             ("bcd-default", "bcd-onnxruntime", "onnxruntime-spinning",
                                              "bcd-openvino"))
        models.append({
            "export": str(export), "label": label, "contenders": rows,
            "openvino_best": best[1], "openvino_best_ms": best[0],
            "default_vs_openvino_best": _ratio(default, best[0]),
            "runtime_only_vs_spinning": _ratio(ort_new, ort_old),
            "openvino_best_vs_onnxruntime": _ratio(best[0], ort_new),
            "bcd_openvino_vs_onnxruntime": _ratio(ov_bcd, ort_new),
            "variant": rows.get("bcd-onnxruntime", {}).get("variant"),
        })
    return {"created": utc_now(), "machine": machine, "runs_per_process": runs, "warmup": warmup, "rounds": rounds,
            "seconds": round(time.monotonic() - started, 1), "models": models,
            "note": "each contender in a fresh process per round, rounds interleaved; p50 pools every timed run "
                    "of every round; ratio < 1 means the first is faster"}


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def record_speed(doc: dict, command: str) -> list[str]:
    """Write the faster runtime engine per export into its backends.json, under this
    CPU's signature; returns one line per export saying what was recorded."""
    from runtime import atomic
    from runtime.backends import BACKENDS_FILE, cpu_signature, read_backend_record

    said = []
    signature = cpu_signature()
    for model in doc["models"]:
        rows, variant = model["contenders"], model.get("variant")
        ort, ov = (rows.get(c, {}).get("p50_ms") for c in ("bcd-onnxruntime", "bcd-openvino"))
        export_dir = Path(model["export"])
        record = read_backend_record(export_dir)
        if ort is None or ov is None or not variant or variant not in record.get("variants", {}):
            said.append(f"{export_dir}: nothing recorded (needs both bcd-onnxruntime and bcd-openvino timings and "
                        f"a backends.json from `python -m export.engine_parity {export_dir}`)")
            continue
        entry = {"faster": "openvino" if ov < ort else "onnxruntime", "p50_ms": {"onnxruntime": ort, "openvino": ov},
                 "created": doc["created"], "command": command, "rounds": doc["rounds"],
                 "runs_per_process": doc["runs_per_process"], "load_average": doc["machine"].get("load_average_start"),
                 "threads": rows["bcd-onnxruntime"].get("threads")}
        record["variants"][variant].setdefault("speed", {})[signature] = entry
        atomic.write_json(export_dir / BACKENDS_FILE, record)
        said.append(f"{export_dir}: {variant} on {signature}: {entry['faster']} recorded as faster "
                    f"(ONNX Runtime {ort:.2f} ms, OpenVINO {ov:.2f} ms)")
    return said


def compare_markdown(doc: dict, command: str) -> str:
    from benchmarks.machine import machine_line

    m = doc["machine"]
    f = lambda v, fmt=".1f": "-" if v is None else format(v, fmt)  # noqa: E731
    lines = [f"Command: `{command}`", "",
             f"Machine: {machine_line(m)}; OpenVINO {m['versions'].get('openvino')}; load average "
             f"{m.get('load_average_start')} at start, {m.get('load_average_end')} at end.",
             f"Each contender in its own fresh process, {doc['rounds']} interleaved round(s) x "
             f"{doc['runs_per_process']} timed batch-1 calls after {doc['warmup']} warm-up call(s); "
             "p50 over all timed calls (per-round medians in brackets).", "",
             "| model | contender | engine | p50 ms | round medians ms |", "|---|---|---|---|---|"]
    for model in doc["models"]:
        for name, r in model["contenders"].items():
            engine = r.get("engine") or "-"
            if r.get("precision"):
                engine += f" ({r['precision']})"
            cell = f(r["p50_ms"], ".2f") if not r["error"] else f"failed: {r['error'][:120]}"
            lines.append(f"| {model['label']} | {name} | {engine} | {cell} | "
                         f"{', '.join(f'{v:.1f}' for v in r['round_medians_ms'])} |")
    lines += ["", "| model | bcd default / OpenVINO's best | runtime-only (no spinning) / former ORT settings | "
              "OpenVINO's best / runtime-only ORT | bcd on OpenVINO / bcd on ONNX Runtime |", "|---|---|---|---|---|"]
    for model in doc["models"]:
        lines.append(f"| {model['label']} | {f(model['default_vs_openvino_best'], '.2f')} "
                     f"({model['openvino_best'] or '-'}) | {f(model['runtime_only_vs_spinning'], '.2f')} | "
                     f"{f(model['openvino_best_vs_onnxruntime'], '.2f')} | "
                     f"{f(model['bcd_openvino_vs_onnxruntime'], '.2f')} |")
    lines += ["", "Ratios below 1: the first is faster.", "", DISCLAIMER, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- profile

def profile(export_dir: Path, runs: int = 30, threads: int | None = None, variant: str | None = None) -> dict:
    """ONNX Runtime's own profiler on the runtime's session options: time per operator
    type per run (ms) and node counts, after ONNX Runtime's graph optimisations."""
    import collections
    import tempfile

    import onnxruntime as ort

    from runtime.classifier import choose_variant
    from runtime.manifest import read_manifest
    from runtime.session import resolve_threads, session_options

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    entry = choose_variant(manifest, variant, "onnx")
    threads = resolve_threads(threads)
    x = _input(int(manifest.preprocessing["image_size"]))
    with tempfile.TemporaryDirectory(prefix="bcd-profile-") as work:
        options = session_options(threads, export_dir)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "ort")
        session = ort.InferenceSession(str(export_dir / entry.file), options, providers=["CPUExecutionProvider"])
        feed, names = {session.get_inputs()[0].name: x}, [o.name for o in session.get_outputs()]
        for _ in range(3):
            session.run(names, feed)
        for _ in range(runs):
            session.run(names, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict = collections.defaultdict(lambda: [0.0, 0])
    run_us = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op][0] += e["dur"]
            per_op[op][1] += 1
    n = max(1, len(run_us))
    ops = sorted(((op, us / n / 1000.0, count / n) for op, (us, count) in per_op.items()), key=lambda t: -t[1])
    return {"export": str(export_dir), "variant": entry.name, "threads": threads, "runs": len(run_us),
            "run_ms_mean": (sum(run_us) / n / 1000.0) if run_us else None,
            "ops": [{"op": op, "ms_per_run": ms, "nodes": count} for op, ms, count in ops]}


def profile_markdown(doc: dict) -> str:
    lines = [f"{doc['export']} {doc['variant']}: {doc['runs']} profiled runs, {doc['threads']} thread(s), "
             f"mean {doc['run_ms_mean']:.2f} ms per run (outputs malignancy and cam)", "",
             "| operator (after ORT's graph optimisations) | nodes | ms per run | share |", "|---|---|---|---|"]
    total = sum(o["ms_per_run"] for o in doc["ops"]) or 1.0
    for o in doc["ops"]:
        lines.append(f"| {o['op']} | {o['nodes']:.0f} | {o['ms_per_run']:.3f} | {o['ms_per_run'] / total:.1%} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="time bcd's default path against OpenVINO's own best, one process each")
    c.add_argument("exports", nargs="+", type=Path, metavar="EXPORT_DIR")
    c.add_argument("--runs", type=int, default=30, help="timed calls per process (default 30)")
    c.add_argument("--warmup", type=int, default=5, help="untimed calls per process first (default 5)")
    c.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    c.add_argument("--threads", type=int, help="threads (default: the runtime's default; OpenVINO's own "
                   "contenders always choose their own)")
    c.add_argument("--contenders", help=f"comma-separated subset of {','.join(CONTENDERS)}")
    c.add_argument("--out", type=Path, help="also write backends-compare.json and .md to this folder")
    c.add_argument("--record", action="store_true",
                   help="write the faster engine on this CPU into each export's backends.json (what --backend auto "
                        "follows here)")
    f = sub.add_parser("profile", help="ONNX Runtime's profiler: time per operator type")
    f.add_argument("export", type=Path, metavar="EXPORT_DIR")
    f.add_argument("--runs", type=int, default=30)
    f.add_argument("--threads", type=int)
    f.add_argument("--variant")
    t = sub.add_parser("_time", help=argparse.SUPPRESS)
    t.add_argument("export")
    t.add_argument("--contender", required=True, choices=tuple(dict.fromkeys(CONTENDERS + ENGINE_CONTENDERS)))
    t.add_argument("--runs", type=int, required=True)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--threads", type=int)
    t.add_argument("--variant")
    t.add_argument("--input", help=".npy array to feed (default: a deterministic batch of one)")
    t.add_argument("--force", action="store_true", help="load a variant that failed the export's checks")
    v = sub.add_parser("_serve", help=argparse.SUPPRESS, parents=[], add_help=True)
    v.add_argument("export")
    v.add_argument("--contender", required=True, choices=ENGINE_CONTENDERS)
    v.add_argument("--runs", type=int, default=0)           # unused: each request says how many
    v.add_argument("--warmup", type=int, default=0)
    v.add_argument("--threads", type=int)
    v.add_argument("--variant")
    v.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "_time":
        return child_main(args)
    if args.cmd == "_serve":
        return serve_main(args)
    command = "python -m benchmarks.backends " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if args.cmd == "profile":
            print(profile_markdown(profile(args.export, args.runs, args.threads, args.variant)))
            return 0
        contenders = tuple(s.strip() for s in args.contenders.split(",")) if args.contenders else CONTENDERS
        unknown = [s for s in contenders if s not in CONTENDERS]
        if unknown:
            raise ValueError(f"--contenders: unknown {', '.join(unknown)}")
        for e in args.exports:
            if not (e / "manifest.json").is_file():
                raise ValueError(f"{e}: not an export directory (no manifest.json)")
        doc = compare(args.exports, args.runs, args.warmup, args.rounds, args.threads, contenders,
                      log=lambda m: print(m, file=sys.stderr))
        text = compare_markdown(doc, command)
        print(text)
        if args.record:
            for line in record_speed(doc, command):
                print(line)
        if args.out is not None:
            from runtime import atomic
            args.out.mkdir(parents=True, exist_ok=True)
            atomic.write_json(args.out / "backends-compare.json", dict(doc, command=command))
            atomic.write_text(args.out / "backends-compare.md", text)
        return 0
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"benchmarks.backends: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
