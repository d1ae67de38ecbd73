"""Folder throughput of `bcd predict`: files in, answers out, per second, against its floor.

    python -m benchmarks.ingest [--folder DIR | --n 200 --data ../shared/data] [--model DIR]
                                [--rounds 3] [--sweep] [--out runs/ingest]

Over a folder, `runtime.predict_files.predict_paths` does two kinds of work per image:
the per-file step (read the file, decode it, find the scan region, the colour and input
checks, crop, resize: runtime.classifier.Classifier.place) and the classify step (the
model: Classifier.infer). Each is measured alone, in its own fresh process:

  read     the per-file step, one image after another on one thread (OpenCV's own
           worker threads off too, cv2.setNumThreads(1)): the least core time it needs;
  read+cv  the same with OpenCV's threads as predict_paths runs it (for comparison:
           OpenCV's parallel loops may add CPU time, spinning, without saving wall time);
  cls@T    the classify step at the predict batch size with the default T inference
           threads, on images already placed;
  cls@1    the same with one inference thread: the least core time it needs.

each as wall time and CPU time (time.process_time) per image. The floor is the time per
image if the work, counted as the CPU time of read and cls@1 (the core time each needs;
on a quiet machine about their wall time), were spread perfectly over the machine's C
physical cores, but never less than the classify step alone at its fastest (wall time
of cls@T: batches are classified one at a time):

    floor = max(cls@T wall, (read CPU + cls@1 CPU) / C)

CPU time, not wall time, counts the work because it does not grow when other processes
take the cores: on a busy machine a one-thread phase waits for a core more than the
multi-threaded pipeline does, and its wall time would make the floor look too slow.

`predict_paths` is then run end to end over the folder, each setting in a fresh process
(after a warm-up on two batches): sequential (decode_workers=0, the loop before read-
ahead) and pipelined (the default runtime.read_ahead.Pipeline), with --sweep also other
decode-worker / inference-thread / prefetch settings. Reported: ms per image, files per
second, and floor / pipelined time (= pipelined files/s over the floor's; target >= 0.8).
The settings are interleaved over --rounds rounds and each figure is the median over the
rounds. The pipelined and sequential results (labels, probabilities, errors) must be
identical, else the exit status is 1.

By default the folder is made fresh in a temporary directory: --n scanner-sized
(856x606) screen captures built from the development images (BUSI and BUS-BRA under
--data, each scan resized into a black frame with text lines and a depth ruler, as a
scanner exports it), or synthetic speckle scans when --data is absent. --folder measures
an existing folder instead (every image file in it, recursively).

Results: results.json and results.md in --out (default runs/ingest), written
atomically; progress on stderr; a short table on stdout. Timings depend on the machine
and on whatever else runs on it: around every measurement the share of the CPU time that
other processes used is taken from /proc/stat, and the outputs say when it was not quiet.
Research and education only: the predictions timed here are not a diagnosis.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from runtime.host import DISCLAIMER, cpu_model
from runtime.shipped import MODELS_DIR, SHIPPED_MODEL

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_MODEL = MODELS_DIR / SHIPPED_MODEL
SCREEN_SIZE = (856, 606)          # width, height of the scanner screen captures made
TARGET_RATIO = 0.8
WARMUP_BATCHES = 2
CHILD_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Setting:
    """One way to run predict_paths: decode threads (0: sequential), inference threads,
    batches read ahead. None: the runtime's default."""

    name: str
    decode_workers: int | None = None
    threads: int | None = None
    prefetch_batches: int | None = None


@dataclass(frozen=True)
class IngestConfig:
    folder: str | None = None       # measure this folder; None: build one
    n: int = 200                    # images to build
    data: str = str(DEFAULT_DATA)   # development data to build them from (BUSI / BUS-BRA)
    model: str = str(DEFAULT_MODEL)
    variant: str | None = None
    batch_size: int | None = None   # None: the runtime's predict batch size
    threads: int | None = None      # inference threads; None: the runtime's default
    rounds: int = 3
    sweep: bool = False
    out: str = "runs/ingest"
    seed: int = 0
    extra_settings: tuple[Setting, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------- the folder


def build_folder(target: Path, n: int, data: Path, seed: int = 0) -> str:
    """Write `n` 856x606 scanner screen captures (PNG) into `target`; returns where the
    scans came from ("development data (...)" or "synthetic")."""
    import cv2
    import numpy as np

    sources = development_images(data)
    rng = np.random.default_rng(seed)
    target.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if sources:
            scan = cv2.imread(str(sources[(i * len(sources)) // n]), cv2.IMREAD_COLOR)
            if scan is None:
                scan = synthetic_scan(rng)
        else:
            scan = synthetic_scan(rng)
        if not cv2.imwrite(str(target / f"scan_{i:04d}.png"), scanner_screen(scan, i)):
            raise OSError(f"cannot write {target / f'scan_{i:04d}.png'}")
    if not sources:
        return f"synthetic speckle scans (no BUSI or BUS-BRA images under {data})"
    return f"development data ({n} of {len(sources)} BUSI / BUS-BRA scans under {data})"


def development_images(data: Path) -> list[Path]:
    """BUSI class-folder images and BUS-BRA Images/, masks left out, sorted."""
    found = [p for p in sorted((data / "busi").glob("*/*.png")) if not p.stem.endswith("_mask")]
    found += sorted((data / "busbra" / "Images").glob("*.png"))
    return found


def synthetic_scan(rng) -> "np.ndarray":
    """A 420x520 gray speckle image with a dark elliptic 'lesion', as BGR."""
    import cv2
    import numpy as np

    speckle = rng.gamma(2.0, 40.0, size=(420, 520)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), 1.5)
    depth = np.linspace(1.0, 0.4, speckle.shape[0], dtype=np.float32)[:, None]
    image = np.clip(speckle * depth, 0, 255).astype(np.uint8)
    centre = (int(rng.integers(150, 370)), int(rng.integers(120, 300)))
    cv2.ellipse(image, centre, (int(rng.integers(25, 70)), int(rng.integers(15, 45))), 0, 0, 360, 20, -1)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def scanner_screen(scan, index: int):
    """The scan resized into a black 856x606 screen with two text lines and a depth ruler."""
    import cv2
    import numpy as np

    width, height = SCREEN_SIZE
    top, bottom, left, right = 60, 30, 120, 90
    box_w, box_h = width - left - right, height - top - bottom
    scale = min(box_w / scan.shape[1], box_h / scan.shape[0])
    size = (max(1, round(scan.shape[1] * scale)), max(1, round(scan.shape[0] * scale)))
    scan = cv2.resize(scan, size, interpolation=cv2.INTER_LINEAR)
    screen = np.zeros((height, width, 3), np.uint8)
    x, y = left + (box_w - size[0]) // 2, top + (box_h - size[1]) // 2
    screen[y:y + size[1], x:x + size[0]] = scan
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(screen, f"BREAST L12-5  12.0MHz  GN 54  DR 66  #{index:04d}", (12, 22), font, 0.55, (230, 230, 230), 1)
    cv2.putText(screen, "2026-11-30 09:41  MI 1.1  TIs 0.4  FR 31Hz", (12, 46), font, 0.5, (200, 200, 200), 1)
    ruler_x = x + size[0] + 12
    for k, tick_y in enumerate(range(y, y + size[1], max(1, size[1] // 10))):
        cv2.line(screen, (ruler_x, tick_y), (ruler_x + (10 if k % 5 == 0 else 5), tick_y), (255, 255, 255), 1)
        if k % 5 == 0:
            cv2.putText(screen, str(k), (ruler_x + 14, tick_y + 5), font, 0.4, (255, 255, 255), 1)
    return screen


# ---------------------------------------------------------------------- measuring processes


def run_child(task: dict, env: dict[str, str]) -> dict:
    """Run one measurement in a fresh Python (`--child`, the task as JSON on stdin) and
    return its JSON result, with `others_cpu_share`: the share of the machine's CPU time
    that other processes used meanwhile; {"ok": False, "error": ...} if it fails."""
    command = [sys.executable, "-m", "benchmarks.ingest", "--child"]
    ticks, own = cpu_ticks(), children_cpu_seconds()
    try:
        proc = subprocess.run(command, input=json.dumps(task), capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT, env=env, cwd=str(REPO))
    except (subprocess.TimeoutExpired, OSError) as err:
        return {"ok": False, "error": f"measuring process ({task['task']}): {err}"}
    others = others_share(ticks, cpu_ticks(), children_cpu_seconds() - own)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        return {**json.loads(lines[-1]), "others_cpu_share": others}
    except (IndexError, json.JSONDecodeError):
        tail = " ".join(proc.stderr.split())[-400:]
        return {"ok": False, "error": f"measuring process ({task['task']}) exited with status "
                                      f"{proc.returncode} without a result: {tail}"}


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot (Linux /proc/stat; None elsewhere).
    Busy counts user, nice, system, irq, softirq and steal time; total adds idle and iowait."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (the measuring processes)."""
    times = os.times()
    return times.children_user + times.children_system


def others_share(before: tuple[int, int] | None, after: tuple[int, int] | None, own_seconds: float) -> float | None:
    """Share (0..1) of all CPU time between two cpu_ticks() that was not ours."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    own_ticks = own_seconds * os.sysconf("SC_CLK_TCK")
    return min(1.0, max(0.0, (after[0] - before[0] - own_ticks) / (after[1] - before[1])))


def checkout_env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH, so children time this code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def child_main() -> int:
    task = json.loads(sys.stdin.read())
    try:
        result = CHILD_TASKS[task["task"]](task)
        result["ok"] = True
        result["load_average"] = load_average()
    except Exception as err:  # noqa: BLE001 - reported to the parent as a failed measurement
        result = {"ok": False, "error": f"{err.__class__.__name__}: {err}"}
    print(json.dumps(result))
    return 0


def _files(folder: str) -> list[Path]:
    from runtime.predict_files import expand_inputs
    return expand_inputs([folder])[0]


def per_file_step(path: Path, clf):
    """What predict_paths does to one file before inference, in its read-ahead threads:
    read, decode, find the scan region, the colour and input checks, crop, preprocess
    (runtime.classifier.Classifier.place). A runtime.classifier.Placed."""
    from runtime.predict_files import _read_and_place
    return _read_and_place(path, clf)[1]


def _opencv_threads(task: dict) -> None:
    if task.get("opencv_threads") is not None:
        import cv2
        cv2.setNumThreads(int(task["opencv_threads"]))


def _load(task: dict):
    from runtime.classifier import Classifier
    return Classifier.load(task["model"], variant=task.get("variant"), threads=task.get("threads"))


def task_read(task: dict) -> dict:
    _opencv_threads(task)
    clf = _load(task)
    files = _files(task["folder"])
    for path in files[:WARMUP_BATCHES]:
        per_file_step(path, clf)
    cpu, started = time.process_time(), time.perf_counter()
    for path in files:
        per_file_step(path, clf)
    return {"images": len(files), "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def task_classify(task: dict) -> dict:
    """The inference step alone (runtime.classifier.Classifier.infer) on files placed before."""
    _opencv_threads(task)
    clf = _load(task)
    placed = [item for item in (per_file_step(p, clf) for p in _files(task["folder"])) if item.arrays is not None]
    size = task["batch_size"]
    batches = [placed[start:start + size] for start in range(0, len(placed), size)]
    for batch in batches[:WARMUP_BATCHES]:
        clf.infer(batch)
    cpu, started = time.process_time(), time.perf_counter()
    for batch in batches:
        clf.infer(batch)
    return {"images": len(placed), "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "threads": clf.threads,
            "engine": clf.engine, "variant": clf.variant}


def task_predict(task: dict) -> dict:
    from runtime.predict_files import predict_paths
    from runtime.read_ahead import Pipeline

    clf = _load(task)
    defaults = Pipeline()
    pipeline = Pipeline(decode_workers=task.get("decode_workers"),
                        prefetch_batches=task.get("prefetch_batches") or defaults.prefetch_batches)
    files = _files(task["folder"])
    predict_paths(clf, files[:WARMUP_BATCHES * task["batch_size"]], batch_size=task["batch_size"], pipeline=pipeline)
    cpu, started = time.process_time(), time.perf_counter()
    results = predict_paths(clf, [task["folder"]], batch_size=task["batch_size"], pipeline=pipeline)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rows = [r.to_dict() for r in results]
    return {"images": len(results), "seconds": seconds, "cpu_seconds": cpu, "threads": clf.threads,
            "decode_workers": pipeline.workers(), "prefetch_batches": pipeline.prefetch_batches,
            "failed": sum(r["error"] is not None for r in rows),
            "digest": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()}


CHILD_TASKS = {"read": task_read, "classify": task_classify, "predict": task_predict}


# ---------------------------------------------------------------------- the run


def settings_for(config: IngestConfig, cores: int) -> list[Setting]:
    """Sequential and pipelined (the defaults), and with --sweep a few other settings."""
    base = [Setting("sequential", decode_workers=0, threads=config.threads),
            Setting("pipelined", threads=config.threads)]
    if not config.sweep:
        return base + list(config.extra_settings)
    sweep = [Setting(f"workers={w} threads={t} prefetch={p}", w, t, p)
             for w, t, p in ((1, cores, 2), (cores, cores, 1), (cores, cores, 4), (cores, 1, 2),
                             (cores + 1, cores, 2), (cores + 1, 1, 2))]
    return base + sweep + list(config.extra_settings)


def measure(config: IngestConfig, folder: Path, say=lambda msg: None) -> dict[str, Any]:
    """Every figure over `config.rounds` interleaved rounds of fresh processes."""
    from runtime.classifier import DEFAULT_BATCH_SIZE
    from runtime.session import physical_cores

    cores = physical_cores()
    batch = config.batch_size or DEFAULT_BATCH_SIZE
    common = {"folder": str(folder), "model": config.model, "variant": config.variant, "batch_size": batch}
    phases = [("read", {"task": "read", "opencv_threads": 1}),
              ("read+cv", {"task": "read"}),
              ("cls@T", {"task": "classify", "threads": config.threads}),
              ("cls@1", {"task": "classify", "threads": 1, "opencv_threads": 1})]
    phases += [(s.name, {"task": "predict", "threads": s.threads, "decode_workers": s.decode_workers,
                         "prefetch_batches": s.prefetch_batches}) for s in settings_for(config, cores)]
    env = checkout_env()
    runs: dict[str, list[dict]] = {name: [] for name, _ in phases}
    for k in range(config.rounds):
        for name, task in phases:
            say(f"round {k + 1}/{config.rounds}: {name}")
            result = run_child({**common, **task}, env)
            if not result.get("ok"):
                raise RuntimeError(f"{name}: {result.get('error')}")
            runs[name].append(result)
    return {"cores": cores, "batch_size": batch, "runs": runs}


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    """ms per image (median over rounds) of every phase, the floor and the ratios."""
    cores, runs = measured["cores"], measured["runs"]
    ms = {name: per_image(rounds, "seconds") for name, rounds in runs.items()}
    cpu_ms = {name: per_image(rounds, "cpu_seconds") for name, rounds in runs.items()}
    floor = floor_ms(cpu_ms["read"], ms["cls@T"], cpu_ms["cls@1"], cores)
    rounds_floor = [floor_ms(one(runs["read"][k], "cpu_seconds"), one(runs["cls@T"][k], "seconds"),
                             one(runs["cls@1"][k], "cpu_seconds"), cores) for k in range(len(runs["read"]))]
    settings = {}
    for name, rounds in runs.items():
        if rounds[0].get("digest") is None:
            continue
        first = rounds[0]
        settings[name] = {
            "ms_per_image": ms[name], "files_per_second": 1000 / ms[name], "ratio_to_floor": floor / ms[name],
            "cpu_ms_per_image": cpu_ms[name],
            "decode_workers": first["decode_workers"], "threads": first["threads"],
            "prefetch_batches": first["prefetch_batches"], "images": first["images"], "failed": first["failed"],
            "ms_per_image_each_round": [one(r, "seconds") for r in rounds],
            "ratio_to_floor_each_round": [f / one(r, "seconds") for f, r in zip(rounds_floor, rounds)],
        }
    digests = {r["digest"] for name in settings for r in runs[name]}
    classify = runs["cls@T"][0]
    return {
        "cores": cores, "batch_size": measured["batch_size"], "engine": classify["engine"],
        "variant": classify["variant"], "inference_threads": classify["threads"],
        "images": runs["read"][0]["images"],
        "components_ms_per_image": {"read": ms["read"], "read_opencv_threads": ms.get("read+cv"),
                                    "classify_default_threads": ms["cls@T"], "classify_1_thread": ms["cls@1"]},
        "components_cpu_ms_per_image": {"read": cpu_ms["read"], "read_opencv_threads": cpu_ms.get("read+cv"),
                                        "classify_default_threads": cpu_ms["cls@T"],
                                        "classify_1_thread": cpu_ms["cls@1"]},
        "floor_ms_per_image": floor, "floor_files_per_second": 1000 / floor,
        "floor_definition": "max(cls@T wall, (read CPU + cls@1 CPU) / cores)",
        "floor_ms_each_round": rounds_floor,
        "load_average_each_round": [r.get("load_average") for r in runs["read"]],
        "others_cpu_share_each_round": [max_share(runs[name][k] for name in runs) for k in range(len(runs["read"]))],
        "settings": settings,
        "identical_results": len(digests) == 1,
        "target_ratio": TARGET_RATIO,
        "target_met": settings["pipelined"]["ratio_to_floor"] >= TARGET_RATIO,
    }


def floor_ms(read_cpu: float, classify_default_wall: float, classify_1_cpu: float, cores: int) -> float:
    """The least time per image: all the work, at its one-thread core time, spread
    perfectly over the cores, but never below the classify step alone (one batch at a time)."""
    return max(classify_default_wall, (read_cpu + classify_1_cpu) / cores)


def one(result: dict, key: str) -> float:
    """1000 * result[key] / images: ms per image of one measurement."""
    return 1000 * result[key] / max(1, result["images"])


def per_image(rounds: list[dict], key: str) -> float:
    """Median over the rounds of the ms per image."""
    return statistics.median(one(r, key) for r in rounds)


def host() -> dict[str, Any]:
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_ingest(config: IngestConfig, say=lambda msg: None) -> dict[str, Any]:
    """Build (or take) the folder, measure, and write results.json + results.md to
    config.out; returns the results document."""
    from runtime import atomic

    if config.rounds < 1 or config.n < 1:
        raise ValueError("--rounds and --n must be at least 1")
    if not Path(config.model).exists():
        raise ValueError(f"model not found: {config.model}")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bcd-ingest-") as tmp:
        if config.folder is not None:
            folder, source = Path(config.folder), f"given folder {config.folder}"
            if not folder.is_dir():
                raise ValueError(f"--folder is not a folder: {folder}")
        else:
            folder = Path(tmp) / "scans"
            say(f"building {config.n} scanner screen captures {SCREEN_SIZE[0]}x{SCREEN_SIZE[1]} in {folder}")
            source = build_folder(folder, config.n, Path(config.data), config.seed)
        doc = summarise(measure(config, folder, say))
    doc.update({"folder": source, "model": config.model, "rounds": config.rounds, "host": host(),
                "load_average_before": load_before, "load_average_after": load_average(),
                "config": {k: v for k, v in asdict(config).items() if k != "extra_settings"}})
    doc["note"] = loaded_note(doc)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "results.json", doc)
    atomic.write_text(out / "results.md", markdown(doc))
    return doc


def max_share(results) -> float | None:
    shares = [r.get("others_cpu_share") for r in results]
    return None if None in shares else max(shares)


QUIET_SHARE = 0.05


def loaded_note(doc: dict[str, Any]) -> str:
    """Whether other processes used the CPUs while we measured (from /proc/stat)."""
    shares = doc["others_cpu_share_each_round"]
    if None in shares:
        return ("Could not tell whether other processes used the CPUs meanwhile (no /proc/stat); "
                f"1-minute load average before the run: {(doc.get('load_average_before') or ['?'])[0]}.")
    worst = max(shares)
    if worst >= QUIET_SHARE:
        return (f"Measured on a busy machine: other processes used up to {100 * worst:.0f} % of the CPU time "
                "during a measurement (per round: " + ", ".join(f"{100 * x:.0f} %" for x in shares) + "), so the "
                "figures are noisy and the ratios less reliable than on a quiet machine; the per-round ratios "
                "of the quietest rounds are the better estimate.")
    return (f"The machine was quiet: other processes used at most {100 * worst:.1f} % of the CPU time "
            "during any measurement.")


# ---------------------------------------------------------------------- reporting


def markdown(doc: dict[str, Any]) -> str:
    c, cpu = doc["components_ms_per_image"], doc["components_cpu_ms_per_image"]
    lines = [
        "# Folder throughput of `bcd predict` (`python -m benchmarks.ingest`)", "",
        f"> {DISCLAIMER}", "",
        f"Folder: {doc['images']} images, {doc['folder']}. Model: `{doc['model']}` variant {doc['variant']} on "
        f"{doc['engine']}, batch {doc['batch_size']}. Host: {doc['host']['cpu']}, {doc['cores']} physical cores. "
        f"Median of {doc['rounds']} rounds, every figure from a fresh process.", "",
        f"**{doc['note']}**", "",
        "| component (alone) | ms / image | CPU ms / image |", "|---|---:|---:|",
        f"| read: read + decode + scan region + checks + preprocessing (Classifier.place), one thread, "
        f"OpenCV threads off | {c['read']:.2f} | {cpu['read']:.2f} |",
    ]
    if c.get("read_opencv_threads") is not None:
        lines.append(f"| read+cv: the same with OpenCV's own threads, as predict_paths runs it | "
                     f"{c['read_opencv_threads']:.2f} | {cpu['read_opencv_threads']:.2f} |")
    lines += [
        f"| cls@T: inference step (Classifier.infer), {doc['inference_threads']} inference threads | "
        f"{c['classify_default_threads']:.2f} | {cpu['classify_default_threads']:.2f} |",
        f"| cls@1: the same with 1 inference thread | {c['classify_1_thread']:.2f} | {cpu['classify_1_thread']:.2f} |",
        f"| **floor** = max(cls@T wall, (read CPU + cls@1 CPU) / {doc['cores']} cores) | **{doc['floor_ms_per_image']:.2f}** "
        f"({doc['floor_files_per_second']:.1f} files/s) | |", "",
        "| predict_paths end to end | decode threads | inference threads | prefetch | ms / image | files / s "
        "| floor / this | CPU ms / image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in doc["settings"].items():
        lines.append(f"| {name} | {s['decode_workers']} | {s['threads']} | {s['prefetch_batches']} | "
                     f"{s['ms_per_image']:.2f} | {s['files_per_second']:.1f} | {s['ratio_to_floor']:.2f} | "
                     f"{s['cpu_ms_per_image']:.2f} |")
    pipelined = doc["settings"]["pipelined"]
    lines += [
        "",
        f"Pipelined reaches {pipelined['ratio_to_floor']:.2f} of the floor (target >= {doc['target_ratio']}: "
        f"{'met' if doc['target_met'] else 'NOT met'}); "
        f"{doc['settings']['sequential']['ms_per_image'] / pipelined['ms_per_image']:.2f}x the sequential throughput. "
        f"Results of every setting identical: {'yes' if doc['identical_results'] else 'NO'}.", "",
        "Per round (floor and pipelined from the same round): floor / pipelined "
        + ", ".join(f"{x:.2f}" for x in pipelined["ratio_to_floor_each_round"])
        + "; CPU time used by other processes " + ", ".join("?" if x is None else f"{100 * x:.0f} %"
                                                            for x in doc["others_cpu_share_each_round"])
        + ".", "",
        "The floor counts the work as the CPU time of read and cls@1 measured alone on one thread (OpenCV's "
        "threads off: its parallel loops can burn CPU time spinning without saving any wall time, compare read "
        "and read+cv; on a quiet machine about their wall time; CPU time because it does not grow while other "
        "processes hold the cores) and assumes it "
        "spreads perfectly over the cores with no cost for sharing them (memory bandwidth, turbo clocks, the GIL), "
        "so it is a bound that is never quite reached. "
        "A sequential run of predict_paths decodes each batch in the thread that then classifies it; a "
        "pipelined one decodes in worker threads up to `prefetch` batches ahead (runtime.read_ahead).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> IngestConfig:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", help="measure this folder of images instead of building one")
    p.add_argument("--n", type=int, default=IngestConfig.n, help="images to build (default %(default)s)")
    p.add_argument("--data", default=IngestConfig.data, help="development data root with busi/ and busbra/ "
                   "(default %(default)s; synthetic scans when absent)")
    p.add_argument("--model", default=IngestConfig.model, help="export directory (default: the shipped model)")
    p.add_argument("--variant", help="variant to run (default: the runtime's choice)")
    p.add_argument("--batch-size", type=int, help="predict batch size (default: the runtime's, 8)")
    p.add_argument("--threads", type=int, help="inference threads (default: the runtime's, physical cores)")
    p.add_argument("--rounds", type=int, default=IngestConfig.rounds, help="interleaved rounds (default %(default)s)")
    p.add_argument("--sweep", action="store_true", help="also time other decode-thread / inference-thread / "
                   "prefetch settings")
    p.add_argument("--out", default=IngestConfig.out, help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=IngestConfig.seed, help="seed of synthetic scans")
    a = p.parse_args(argv)
    return IngestConfig(folder=a.folder, n=a.n, data=a.data, model=a.model, variant=a.variant,
                        batch_size=a.batch_size, threads=a.threads, rounds=a.rounds, sweep=a.sweep,
                        out=a.out, seed=a.seed)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--child"]:
        return child_main()
    config = parse_args(argv)

    def say(msg: str) -> None:
        print(f"[ingest] {msg}", file=sys.stderr, flush=True)

    try:
        doc = run_ingest(config, say)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_table(doc))
    print(f"written: {Path(config.out) / 'results.json'}, {Path(config.out) / 'results.md'}", file=sys.stderr)
    return 0 if doc["identical_results"] else 1


def summary_table(doc: dict[str, Any]) -> str:
    c, cpu = doc["components_ms_per_image"], doc["components_cpu_ms_per_image"]
    lines = [f"read {c['read']:.2f} ms (CPU {cpu['read']:.2f}), cls@{doc['inference_threads']} "
             f"{c['classify_default_threads']:.2f} ms, cls@1 {c['classify_1_thread']:.2f} ms (CPU "
             f"{cpu['classify_1_thread']:.2f}) per image; floor {doc['floor_ms_per_image']:.2f} ms "
             f"({doc['floor_files_per_second']:.1f} files/s) on {doc['cores']} cores",
             f"{'setting':<36} {'ms/img':>7} {'files/s':>8} {'floor/this':>10}"]
    for name, s in doc["settings"].items():
        lines.append(f"{name:<36} {s['ms_per_image']:>7.2f} {s['files_per_second']:>8.1f} {s['ratio_to_floor']:>10.2f}")
    lines.append(doc["note"])
    if not doc["identical_results"]:
        lines.append("ERROR: the settings gave different results")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
