"""`run_benchmark(BenchmarkConfig)`: the whole benchmark, in phases.

1. Read the manifest, find the original Keras model (the baseline) and the images.
2. Load every model in this process: Keras original + each selected variant through
   runtime.Classifier. A variant that fails to load (sha256 mismatch, export error, bad
   file...) gets a failed row; the others go on. If the original cannot run, the
   benchmark stops (BaselineError): there would be nothing to compare against.
3. Accuracy on all images at the frozen threshold (+ bootstrap CIs, flip rate vs the original).
4. Batch-1 latency, then throughput at --batch, each interleaved across models (timing.py);
   the Keras original in this process, every (variant, engine) row in a process of its
   own (benchmarks.backends.EngineInProcess): ONNX Runtime and OpenVINO (when installed)
   rows for every .onnx variant, LiteRT for .tflite.
5. Cold start + peak RSS: fresh probe processes (probe.py), round-robin across models.
6. Ratios against the original, optional input-size sweep, then the outputs, each
   written atomically: pareto.png, [sizes.json, sizes.png], results.md, results.json.

`--also EXPORT` adds the variants of more exports (e.g. of a `bcd slim` run), and by
default their own Keras originals, to every phase: same images, same timing rounds,
ratios against the ONE original of the main export. Their rows are named
"<label>/<variant>" (label: the export folder's name). They must take the same
preprocessed input (same preprocessing spec) and the same labels as the main export.
Every row also gets the model's arithmetic (MACs per image, parameters: the same for
FP32, INT8 and sparse variants of one Keras model) and the file's gzip size.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from benchmarks.accuracy import accuracy_block
from benchmarks.config import BenchmarkConfig
from benchmarks.data import find_original, load_data
from benchmarks.machine import load_average, machine_info
from benchmarks.plots import pareto_plot, sizes_plot
from benchmarks.probe import probe_command, run_probe
from benchmarks.report import results_markdown
from benchmarks.sweep import sweep_sizes
from benchmarks.targets import ORIGINAL_NAME, KerasOriginal, RuntimeVariant, Target, configure_tf_threads, engines_for
from benchmarks.timing import interleaved, ratio, settle, stats_ms
import numpy as np

from runtime import atomic
from runtime.host import utc_now
from runtime.manifest import Manifest, read_manifest
from runtime.preprocessing import PreprocessSpec, prepare_batch
from runtime.session import resolve_threads

log = logging.getLogger(__name__)

RESULTS_SCHEMA_VERSION = 1
RESULTS_JSON, RESULTS_MD, PARETO_PNG, SIZES_JSON, SIZES_PNG = (
    "results.json", "results.md", "pareto.png", "sizes.json", "sizes.png")


class BaselineError(RuntimeError):
    """The original Keras model cannot be loaded or run: no baseline, no benchmark."""


@dataclass
class ExportGroup:
    """One export being benchmarked: the main one, or an --also one."""
    label: str
    export_dir: Path
    manifest: Manifest
    entries: list
    primary: bool
    original: object = None          # data.OriginalRun of its Keras model (None: not found / not wanted)
    original_error: str | None = None

    @property
    def source_run(self) -> str:
        return Path(self.manifest.source_model["path"]).parent.name or self.export_dir.name

    def to_dict(self) -> dict:
        return {"label": self.label, "export_dir": str(self.export_dir), "primary": self.primary,
                "source_model": dict(self.manifest.source_model), "threshold": dict(self.manifest.threshold),
                "model_cost": self.manifest.model_cost,
                "original": str(self.original.model) if self.original is not None else None,
                "original_error": self.original_error,
                "variants": [e.name for e in self.entries]}


def _extra_groups(config: BenchmarkConfig, main: ExportGroup) -> list[ExportGroup]:
    groups: list[ExportGroup] = []
    used = {main.label}
    for folder in config.also:
        export_dir = Path(folder)
        manifest = read_manifest(export_dir)
        differ = sorted(k for k in set(manifest.preprocessing) | set(main.manifest.preprocessing)
                        if manifest.preprocessing.get(k) != main.manifest.preprocessing.get(k))
        if "image_size" in differ:
            raise ValueError(f"--also {folder}: input size {manifest.preprocessing['image_size']} differs from "
                             f"the main export's {main.manifest.preprocessing['image_size']}; every export of one "
                             "benchmark must take the same input (export the runs at one size, or benchmark "
                             "them separately)")
        if differ:
            raise ValueError(f"--also {folder}: preprocessing differs from the main export's ({', '.join(differ)}); "
                             "every export of one benchmark must take the same preprocessed input")
        if manifest.labels != main.manifest.labels:
            raise ValueError(f"--also {folder}: labels {manifest.labels} differ from the main export's "
                             f"{main.manifest.labels}")
        label = export_dir.resolve().name
        if label in used:
            label = Path(manifest.source_model["path"]).parent.name or label
        base, k = label, 2
        while label in used:
            label, k = f"{base}-{k}", k + 1
        used.add(label)
        if config.variants is None:
            entries = list(manifest.variants)
        else:
            entries = [v for v in manifest.variants if v.name in config.variants]
        group = ExportGroup(label, export_dir, manifest, entries, primary=False)
        if config.also_keras:
            try:
                group.original = find_original(manifest, export_dir, None)
            except (FileNotFoundError, ValueError) as err:
                group.original_error = str(err)
                log.warning("--also %s: its Keras original is not measured: %s", folder, err)
        groups.append(group)
    return groups


def _file_gzip_bytes(path: Path | None) -> int | None:
    from runtime.model_files import compressed_size
    if path is None or not Path(path).is_file():
        return None
    return compressed_size(path)


def _keras_cost(model) -> dict:
    from train.cost import model_cost  # the one MAC counter (training, slim, export, benchmarks)
    return model_cost(model)


@dataclass
class BenchmarkResult:
    doc: dict                 # the results.json document
    out_dir: Path

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.doc["variants"] if r["status"] != "ok"]

    @property
    def sweep_errors(self) -> list[dict]:
        sweep = self.doc.get("sweep") or {}
        return [e for e in sweep.get("sizes", []) if e.get("error")]

    @property
    def exit_code(self) -> int:
        """0: every model benchmarked; 1: some rows (or sweep sizes) failed, outputs written."""
        return 1 if self.failed or self.sweep_errors else 0


def _error_text(err: BaseException) -> str:
    return " ".join(f"{err.__class__.__name__}: {err}".split())[:600]


def _new_row(t: Target, export_dir: Path) -> dict:
    entry = getattr(t, "entry", None)
    file = t.file
    if file is not None:
        try:
            file = file.relative_to(t.export_dir if t.export_dir is not None else export_dir)
        except ValueError:
            pass
    return {
        "name": t.name, "role": t.role, "export": t.group,
        "export_dir": str(t.export_dir) if t.export_dir is not None else None,
        "variant": entry.name if entry is not None else None,
        "macs": None, "params": None, "cost_source": None,
        "compressed_bytes": entry.compressed_bytes if entry is not None else None,
        "sparsity": entry.sparsity if entry is not None else None, "format": t.format, "precision": t.precision, "engine": t.engine,
        "backend": getattr(t, "backend", "tensorflow"),
        "file": str(file) if file is not None else None, "file_bytes": t.file_bytes,
        "size_ratio": None, "size_ratio_fp32_weights": None,
        "latency_ms": stats_ms([]), "speedup_p50": None,
        "throughput_ips": None, "throughput_ratio": None, "throughput_batch_ms": stats_ms([]),
        "cold_start_s": None, "cold_start": None, "peak_rss_mb": None,
        "accuracy": None,
        "export_status": entry.status if entry is not None else None,
        "export_reason": entry.reason if entry is not None else None,
        "status": "ok", "error": None, "notes": [],
    }


def _fail(row: dict, stage: str, message: str) -> None:
    if row["status"] == "ok":
        row["status"], row["error"] = "failed", f"{stage}: {message}"
    log.error("%s failed (%s): %s", row["name"], stage, message)


def _select_variants(manifest, names):
    if names is None:
        return list(manifest.variants)
    known = {v.name: v for v in manifest.variants}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--variants: {', '.join(unknown)} not in the export (it has: {', '.join(known)})")
    return [known[n] for n in names]


def _median(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _command(config: BenchmarkConfig) -> str:
    if config.command:
        return config.command
    return "run_benchmark(" + ", ".join(f"{k}={v!r}" for k, v in config.to_dict().items() if k != "command") + ")"


def _fill_costs(targets, rows, group_of, keras_target, base_cost) -> None:
    """MACs and parameters per row: Keras rows count their loaded model; a variant takes
    its manifest's model_cost (recorded at export) or else counts its export's Keras
    original (quantization and sparsity leave the dense arithmetic unchanged)."""
    from train.tf_setup import keras

    counted: dict[str, tuple[dict | None, str]] = {}

    def group_cost(group) -> tuple[dict | None, str]:
        if group.label in counted:
            return counted[group.label]
        mc = group.manifest.model_cost
        if mc is not None:
            found = ({"macs": int(mc["macs"]), "params": int(mc["params"])}, "manifest model_cost")
        elif group.primary:
            found = (base_cost, "the original Keras model")
        else:
            found = (None, "unknown")
            try:
                run = group.original or find_original(group.manifest, group.export_dir, None)
                model = keras.models.load_model(run.model, compile=False)
                found = (_keras_cost(model), "the export's Keras original")
                del model
            except Exception as err:  # noqa: BLE001 - a missing cost is a dash in the table, not a failure
                log.warning("%s: cannot count MACs (no model_cost in its manifest, no Keras original: %s)",
                            group.label, _error_text(err))
        counted[group.label] = found
        return found

    for t in targets:
        row = rows[t.name]
        if isinstance(t, KerasOriginal):
            if t is keras_target:
                cost = base_cost
            elif getattr(t, "model", None) is not None:
                cost = _keras_cost(t.model)
            else:
                continue
            row["macs"], row["params"], row["cost_source"] = cost["macs"], cost["params"], "counted from the model"
        else:
            cost, source = group_cost(group_of[t.name])
            if cost is not None:
                row["macs"], row["params"], row["cost_source"] = cost["macs"], cost["params"], source


def run_benchmark(config: BenchmarkConfig) -> BenchmarkResult:
    started = time.monotonic()
    export_dir = Path(config.export_dir)
    manifest = read_manifest(export_dir)
    entries = _select_variants(manifest, config.variants)
    threads = resolve_threads(config.threads)
    original = find_original(manifest, export_dir, config.original)
    log.info("baseline: %s (found by %s)", original.model, original.found_by)
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    main_group = ExportGroup(export_dir.resolve().name, export_dir, manifest, entries, primary=True, original=original)
    groups = [main_group, *_extra_groups(config, main_group)]
    data = load_data(config.data, original, spec, config.split)
    threshold = manifest.threshold_value
    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(threads)
    tf_threads = configure_tf_threads(threads)

    tf_engine = f", intra-op {tf_threads['intra_op']} / inter-op {tf_threads['inter_op']} thread(s)"
    keras_target = KerasOriginal(original.model, spec, original.root)
    keras_target.engine += tf_engine
    keras_target.group, keras_target.export_dir = main_group.label, None
    targets: list[Target] = [keras_target]
    group_of: dict[str, ExportGroup] = {keras_target.name: main_group}
    for group in groups:
        group_targets: list[Target] = []
        if not group.primary and group.original is not None:
            k = KerasOriginal(group.original.model, spec, group.original.root)
            k.name, k.role = f"{group.label}/{ORIGINAL_NAME}", "extra-original"
            k.engine += tf_engine
            group_targets.append(k)
        for e in group.entries:
            for engine in engines_for(e.format):
                v = RuntimeVariant(group.export_dir, e, threads, engine)
                if not group.primary:
                    v.name = f"{group.label}/{v.name}"
                group_targets.append(v)
        for t in group_targets:
            t.group = group.label
            if isinstance(t, RuntimeVariant):
                t.export_dir = group.export_dir
            group_of[t.name] = group
        targets += group_targets
    rows = {t.name: _new_row(t, export_dir) for t in targets}
    alive = lambda: [t for t in targets if rows[t.name]["status"] == "ok"]  # noqa: E731

    # ---- 2. load
    for t in targets:
        log.info("loading %s (%s)", t.name, t.format)
        try:
            t.load()
            rows[t.name]["engine"] = t.engine
        except Exception as err:  # noqa: BLE001
            if t is keras_target:
                raise BaselineError(f"the original Keras model {original.model} cannot be loaded: {_error_text(err)}") from err
            _fail(rows[t.name], "load", _error_text(err))
    base_cost = _keras_cost(keras_target.model)
    model_info = {"image_size": spec.image_size, "params": int(keras_target.model.count_params()),
                  "fp32_weight_bytes": int(keras_target.model.count_params()) * 4,
                  "gmac_per_image": base_cost["macs"] / 1e9}
    _fill_costs(targets, rows, group_of, keras_target, base_cost)

    # ---- 3. accuracy
    log.info("accuracy: %s on %s", keras_target.name, data.text)
    try:
        reference = keras_target.predict(data.images, config.batch)
        rows[keras_target.name]["accuracy"] = accuracy_block(data.labels, reference, threshold, None,
                                                             config.bootstrap, config.seed)
    except Exception as err:  # noqa: BLE001
        raise BaselineError(f"the original Keras model cannot predict: {_error_text(err)}") from err
    for t in alive()[1:]:
        log.info("accuracy: %s", t.name)
        try:
            probs = t.predict(data.images, config.batch)
            # each export's own operating threshold (a slim run chose its own on its validation split)
            rows[t.name]["accuracy"] = accuracy_block(data.labels, probs, group_of[t.name].manifest.threshold_value,
                                                      reference, config.bootstrap, config.seed,
                                                      reference_threshold=threshold)
        except Exception as err:  # noqa: BLE001
            _fail(rows[t.name], "accuracy", _error_text(err))

    # ---- 4. latency and throughput (same preprocessed input for every engine). Runtime
    # rows are timed in a process of their own each (one per row, kept for both phases),
    # so their in-process sessions are closed first.
    for t in targets:
        if isinstance(t, RuntimeVariant):
            t.close()
    x1 = prepare_batch([data.images[0]], spec)
    xb = prepare_batch([data.images[i % len(data.images)] for i in range(config.batch)], spec)
    phases = (("latency", x1, config.runs, config.warmup, True),
              ("throughput", xb, config.timed_batches, min(config.warmup, 1), False))
    work = tempfile.TemporaryDirectory(prefix="bcd-bench-")
    workers = {t.name: t.in_own_process(Path(work.name) / "latency.npy", config.warmup)
               for t in alive() if isinstance(t, RuntimeVariant)}
    try:
        for what, x, runs, warmup, rewarm in phases:
            current = alive()
            x_file = Path(work.name) / f"{what}.npy"
            np.save(x_file, x)
            for w in workers.values():
                w.x_file, w.warmup = x_file, max(1, warmup)
            timing = interleaved({t.name: workers.get(t.name) or partial(t.infer, x) for t in current},
                                 runs, warmup, config.rounds, what=what, rewarm=rewarm)
            for t in current:
                row = rows[t.name]
                if t.name in timing.errors:
                    if t is keras_target:
                        raise BaselineError(f"the original Keras model failed while timing: {timing.errors[t.name]}")
                    _fail(row, what, timing.errors[t.name])
                    continue
                stats = timing.stats(t.name)
                if what == "latency":
                    row["latency_ms"] = stats
                else:
                    row["throughput_batch_ms"] = stats
                    row["throughput_ips"] = config.batch / (stats["p50"] / 1000.0) if stats["p50"] else None
    finally:
        for w in workers.values():
            w.close()
        work.cleanup()
    for t in targets:
        t.close()   # free sessions (and their spinning threads) before the probes

    # ---- 5. cold start + peak RSS in fresh processes
    probe_image = data.paths[0]
    probes: dict[str, list[dict]] = {t.name: [] for t in alive()}
    for rep in range(config.cold_starts):
        current = [t for t in alive()]
        shift = rep % max(1, len(current))
        for t in current[shift:] + current[:shift]:
            log.info("cold start %d/%d: %s", rep + 1, config.cold_starts, t.name)
            settle()
            cmd = probe_command(probe_image, threads, **t.probe_args())
            result = run_probe(cmd)
            if not result["ok"]:
                if t is keras_target:
                    rows[t.name]["notes"].append(f"cold-start probe failed: {result['error']}")
                else:
                    _fail(rows[t.name], "cold start", str(result["error"]))
                continue
            probes[t.name].append(result)
    for name, results in probes.items():
        if not results:
            continue
        keys = ("cold_start_s", "interpreter_s", "import_s", "load_s", "first_predict_s", "peak_rss_mib")
        summary = {k: _median([r.get(k) for r in results]) for k in keys}
        summary["peak_rss_source"] = results[0].get("peak_rss_source")
        summary["runs"] = [{k: r.get(k) for k in keys + ("ru_maxrss_mib",)} for r in results]
        rows[name]["cold_start"] = summary
        rows[name]["cold_start_s"] = summary["cold_start_s"]
        rows[name]["peak_rss_mb"] = summary["peak_rss_mib"]

    # ---- 6. ratios against the original (same run)
    base = rows[keras_target.name]
    for t in targets:
        row = rows[t.name]
        if row["compressed_bytes"] is None and row["file_bytes"] is not None:
            row["compressed_bytes"] = _file_gzip_bytes(t.file)
    for row in rows.values():
        row["size_ratio"] = ratio(row["file_bytes"], base["file_bytes"])
        row["size_ratio_fp32_weights"] = ratio(row["file_bytes"], model_info["fp32_weight_bytes"])
        if row["status"] != "ok":
            continue
        row["speedup_p50"] = ratio(base["latency_ms"]["p50"], row["latency_ms"]["p50"])
        row["throughput_ratio"] = ratio(row["throughput_ips"], base["throughput_ips"])

    sweep = None
    if config.sweep_sizes:
        sweep = sweep_sizes(config.sweep_sizes, config.runs, config.warmup, config.rounds, threads,
                            int(manifest.export_settings.get("onnx_opset", 17)))

    machine["load_average_end"] = load_average()
    doc = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "tool": dict(manifest.tool, benchmark="benchmarks"),
        "created": utc_now(),
        "export_dir": str(export_dir),
        "manifest": {"created": manifest.created, "source_model": dict(manifest.source_model),
                     "export_settings": manifest.export_settings},
        "original": {"run_dir": str(original.root), "model": str(original.model), "found_by": original.found_by},
        "threshold": dict(manifest.threshold),
        "exports": [g.to_dict() for g in groups],
        "model": model_info,
        "machine": machine,
        "settings": {
            "command": _command(config),
            "date": utc_now(),
            "runs": config.runs, "warmup": config.warmup, "rounds": min(config.rounds, config.runs),
            "batch": config.batch, "throughput_runs": config.timed_batches, "cold_starts": config.cold_starts,
            "threads": threads, "tf_threads": tf_threads, "bootstrap": config.bootstrap, "seed": config.seed,
            "variants_requested": list(config.variants) if config.variants else None,
            "also": list(config.also), "also_keras": config.also_keras,
            "data": data.description, "probe_image": str(probe_image),
            "seconds": None,
        },
        "baseline": keras_target.name,
        "variants": [rows[t.name] for t in targets],
        "pareto_front": [],
        "sweep": sweep,
        "exit_code": None,
    }

    # ---- outputs (each file atomic; results.json last)
    title = (f"{' + '.join(g.label for g in groups)}: latency vs AUC on {data.description['n']} images "
             f"({data.description.get('kind', 'data')}), {threads} thread(s)")
    doc["pareto_front"] = pareto_plot(doc["variants"], out_dir / PARETO_PNG, title)
    if sweep is not None:
        atomic.write_json(out_dir / SIZES_JSON, dict(sweep, machine=machine, command=doc["settings"]["command"]))
        sizes_plot(sweep, out_dir / SIZES_PNG)
    result = BenchmarkResult(doc, out_dir)
    doc["exit_code"] = result.exit_code
    doc["settings"]["seconds"] = round(time.monotonic() - started, 1)
    atomic.write_text(out_dir / RESULTS_MD, results_markdown(doc))
    atomic.write_json(out_dir / RESULTS_JSON, doc)
    log.info("benchmark written to %s (%.0fs)", out_dir, time.monotonic() - started)
    return result
