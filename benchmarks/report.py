"""results.md: the benchmark as tables a person reads (results.json holds the same numbers)."""
from __future__ import annotations

from benchmarks.machine import int8_note, machine_line
from benchmarks.sweep import sweep_markdown
from runtime.engines import engine_label
from runtime.host import DISCLAIMER



def _f(value, fmt: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _gmacs(r: dict) -> str:
    return "-" if r.get("macs") is None else f"{r['macs'] / 1e9:.3g}"


def _mparams(r: dict) -> str:
    return "-" if r.get("params") is None else f"{r['params'] / 1e6:.3g}"


SPARSE_NOTE = ("Sparse (magnitude-pruned) variants: unstructured sparsity shrinks the COMPRESSED download ('zip size') "
               "but does NOT make ONNX Runtime faster, and the raw file is as large as the dense one: the CPU kernels "
               "are dense and multiply the zeros. Their MACs are those of the dense model. For speed, remove whole "
               "filters (`bcd slim`).")


def _ci(acc: dict, key: str) -> str:
    value = acc.get(key)
    ci = (acc.get("ci95") or {}).get(key) or {}
    if value is None:
        return "-"
    if ci.get("low") is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci['low']:.3f}-{ci['high']:.3f})"


def sorted_rows(rows: list[dict]) -> list[dict]:
    """Benchmarked rows by p50 latency, then failed rows."""
    ok = [r for r in rows if r["status"] == "ok" and r["latency_ms"]["p50"] is not None]
    rest = [r for r in rows if r not in ok]
    return sorted(ok, key=lambda r: r["latency_ms"]["p50"]) + rest


def _label(r: dict) -> str:
    name = f"**{r['name']}** (baseline)" if r["role"] == "original" else r["name"]
    if r.get("sparsity") is not None:
        name += f" ({r['sparsity']:.0%} zeros)"
    if r.get("export_status") not in (None, "ok"):
        name += f" [export: {r['export_status']}]"
    return name


def _backend(r: dict) -> str:
    return engine_label(r.get("backend"))


def _exports_lines(doc: dict) -> list[str]:
    extra = [e for e in doc.get("exports", []) if not e.get("primary")]
    if not extra:
        return []
    out = [f"- Also measured, against the same baseline and images (rows named `<export>/<variant>`, sensitivity "
           "and specificity at each export's own threshold, flips against the baseline's decisions):"]
    for e in extra:
        keras = (f"its Keras original `{e['original']}` as `{e['label']}/keras-original`" if e.get("original")
                 else f"its Keras original not measured ({e.get('original_error') or 'not requested'})")
        out.append(f"  - `{e['label']}`: export `{e['export_dir']}` of `{e['source_model']['path']}`, threshold "
                   f"{e['threshold']['value']:.4f}; {keras}")
    return out


def results_markdown(doc: dict) -> str:
    s, m = doc["settings"], doc["machine"]
    rows = sorted_rows(doc["variants"])
    base = next((r for r in doc["variants"] if r["role"] == "original"), None)
    data = s["data"]
    threshold = doc["threshold"]
    lines = [
        f"# Benchmark: {doc['export_dir']}",
        "",
        f"> {DISCLAIMER}",
        "",
        f"- Command: `{s['command']}`",
        f"- Date: {s['date']}",
        f"- Machine: {machine_line(m)}; load average at start {m.get('load_average_start')}, "
        f"at end {m.get('load_average_end')}",
        f"- Data: {data['source']}: {data['n']} images ({data['n_malignant']} malignant, {data['n_benign']} benign)"
        + (f". Note: {data['note']}" if data.get("note") else ""),
        f"- Baseline: the original Keras model `{doc['original']['model']}` ({doc['original']['found_by']}); every "
        "ratio is taken against it, from this same run.",
        f"- Timing: batch-1 latency over {s['runs']} timed runs after {s['warmup']} warm-up run(s), interleaved over "
        f"{s['rounds']} round(s); throughput at batch {s['batch']} over {s['throughput_runs']} timed batches; "
        f"{s['threads']} thread(s) for every engine; cold start = median of {s['cold_starts']} fresh process(es).",
        *_exports_lines(doc),
        "",
        f"**INT8 and this CPU.** {int8_note(m['flags'])}",
        "",
        "## Speed and footprint (sorted by median batch-1 latency)",
        "",
        "| model | engine | format | precision | p50 ms | p95 ms | speed-up (p50) | throughput img/s | "
        "throughput ratio | cold start s | peak RSS MiB | file | size ratio | size / FP32 weights | zip size | GMACs | "
        "params (M) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {_label(r)} | {_backend(r)} | {r['format']} | {r['precision']} | FAILED | | | | | | | "
                         f"{_size(r['file_bytes'])} | {_f(r['size_ratio'], '.2f', 'x')} | | "
                         f"{_size(r.get('compressed_bytes'))} | {_gmacs(r)} | {_mparams(r)} |")
            continue
        lat = r["latency_ms"]
        lines.append(
            f"| {_label(r)} | {_backend(r)} | {r['format']} | {r['precision']} | {_f(lat['p50'])} | {_f(lat['p95'])} | "
            f"{_f(r['speedup_p50'], '.2f', 'x')} | {_f(r['throughput_ips'])} | {_f(r['throughput_ratio'], '.2f', 'x')} | "
            f"{_f(r['cold_start_s'], '.2f')} | {_f(r['peak_rss_mb'], '.0f')} | {_size(r['file_bytes'])} | "
            f"{_f(r['size_ratio'], '.2f', 'x')} | {_f(r['size_ratio_fp32_weights'], '.2f', 'x')} | "
            f"{_size(r.get('compressed_bytes'))} | {_gmacs(r)} | {_mparams(r)} |")
    lines += [
        "",
        f"## Accuracy at the operating threshold {threshold['value']:.4f} ({threshold.get('policy', '')}, chosen on "
        f"the {threshold.get('chosen_on', 'validation split')})",
        "",
        f"Bootstrap 95% CIs ({s['bootstrap']} stratified resamples) in brackets. Flips: images whose decision "
        "differs from the original's.",
        "",
        "| model | AUC | sensitivity | specificity | accuracy | flips | max abs diff p |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = r.get("accuracy")
        if not acc:
            lines.append(f"| {_label(r)} | FAILED | | | | | |")
            continue
        lines.append(f"| {_label(r)} | {_ci(acc, 'auc')} | {_ci(acc, 'sensitivity')} | {_ci(acc, 'specificity')} | "
                     f"{_ci(acc, 'accuracy')} | {acc['flips']}/{acc['n']} ({acc['flip_rate']:.1%}) | "
                     f"{acc['max_abs_diff']:.2e} |")
    if doc.get("pareto_front"):
        lines += ["", f"Pareto front (no other model is both faster and more accurate, by median latency and AUC): "
                      f"{', '.join(doc['pareto_front'])}. AUC differences inside overlapping CIs are not evidence "
                      "of a real difference."]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed", ""]
        lines += [f"- {r['name']}: {r['error']}" for r in failed]
    notes = [f"- {r['name']}: {n}" for r in rows for n in r.get("notes", [])]
    lines += [
        "",
        "## How to read this",
        "",
        "- speed-up = baseline p50 / model p50 (above 1: faster than the original); throughput ratio = model "
        "images/s / baseline images/s; size ratio = file size / model.keras size. All from this one run.",
        "- The Keras baseline is timed as a direct call `model(x, training=False)`, not `model.predict` (which adds "
        "per-call overhead of its own). Runtime variants are timed as the Classifier's inference call (ONNX Runtime "
        "session, OpenVINO compiled model or LiteRT interpreter as clinics configure it), on the same preprocessed "
        "input, each (variant, engine) row in a process of its own (engines sharing a process steal "
        "each other's cores); preprocessing is excluded from latency and throughput for every engine and included "
        "in cold start. `<variant>@openvino`: the same .onnx file run by OpenVINO.",
        "- Cold start: a fresh process (`python -m benchmarks.probe`) from process start to the first prediction "
        "of one image file, imports and model loading included; peak RSS is that process's maximum resident memory "
        "(interpreter and libraries included). Files were in the OS cache (just read), so disk speed is not included.",
        "- Accuracy and flip rate come from the same images for every model; variants run through "
        "`runtime.Classifier`, the original through `train.evaluate.predict_probabilities`.",
        "- GMACs: multiply-accumulates per image (Conv2D + Dense), params: parameters, of the Keras model a row "
        "comes from; INT8 and sparse variants do the same arithmetic as their FP32 model. zip size: the file "
        "gzip-compressed (what a download costs).",
    ]
    if any(r.get("sparsity") is not None for r in rows):
        lines.append(f"- {SPARSE_NOTE}")
    if base and base.get("size_ratio_fp32_weights") and base["size_ratio_fp32_weights"] > 1.5:
        lines.append(f"- model.keras ({_size(base['file_bytes'])}) also stores the optimizer state, about "
                     f"{base['size_ratio_fp32_weights']:.1f}x the FP32 weights ({_size(doc['model']['fp32_weight_bytes'])}); "
                     "'size / FP32 weights' compares files with the weights alone.")
    if s.get("tf_threads", {}).get("set") is False:
        lines.append(f"- {s['tf_threads'].get('note')}")
    if notes:
        lines += ["", "Notes:", *notes]
    if doc.get("sweep"):
        lines += ["", *sweep_markdown(doc["sweep"])]
    lines += ["", "Figure: `pareto.png` (latency vs AUC, Pareto front)" + (", `sizes.png`" if doc.get("sweep") else "")
              + ".", "", DISCLAIMER]
    return "\n".join(lines) + "\n"
