"""`bcd pick RESULTS_JSON [--budget 0.01]`: the fastest variant whose AUC is at most
`budget` below the original's, from one `bcd benchmark` results.json.

Candidates are the runtime variant rows (ONNX / TFLite, of the main export and of every
`--also` export) that were benchmarked without error and passed their export checks;
"fastest" is the median batch-1 latency. Every number comes from the same results file,
so the speed-up, AUC drop and size ratio are against the original of that same run.
The budget is meant for the VALIDATION split: picking on the test split uses up the
held-out data. Stdlib only.
"""
from __future__ import annotations

from runtime import atomic
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BUDGET = 0.01


@dataclass
class Pick:
    row: dict                 # the chosen results.json row
    baseline: dict            # the original's row
    auc_drop: float           # baseline AUC - chosen AUC
    speedup: float | None     # baseline p50 / chosen p50
    size_ratio: float | None  # chosen file / model.keras
    budget: float
    data: dict                # settings.data of the results
    warnings: list[str]
    considered: int           # candidate rows that had a latency and an AUC


def load_results(path: str | Path) -> dict:
    """A results.json document, or ValueError/FileNotFoundError saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    doc = atomic.read_json(path, missing="{path}: no such file (give the results.json of `bcd benchmark`)",
                           invalid="{path} is not a results.json of `bcd benchmark` (not JSON: {reason})")
    if (not isinstance(doc, dict) or not isinstance(doc.get("variants"), list) or "baseline" not in doc
            or "settings" not in doc):
        raise ValueError(f"{path} is not a results.json of `bcd benchmark` (no 'variants'/'baseline'/'settings')")
    return doc


def _auc(row: dict) -> float | None:
    return (row.get("accuracy") or {}).get("auc")


def _p50(row: dict) -> float | None:
    return (row.get("latency_ms") or {}).get("p50")


def pick(doc: dict, budget: float = DEFAULT_BUDGET) -> Pick:
    if not 0 <= budget <= 1:
        raise ValueError(f"budget must lie in 0..1 (an AUC difference), got {budget}")
    rows = doc["variants"]
    baseline = next((r for r in rows if r.get("role") == "original" or r.get("name") == doc["baseline"]), None)
    if baseline is None or _auc(baseline) is None or _p50(baseline) is None:
        raise ValueError("the results have no original row with both an AUC and a latency to compare against")
    data = (doc.get("settings") or {}).get("data") or {}
    warnings = []
    kind = data.get("kind")
    if kind == "test split":
        warnings.append("these results were measured on the TEST split: the budget is meant for the validation "
                        "split (choosing on the test split spends the held-out data); rerun `bcd benchmark` with "
                        "--split val to pick, and report the test split afterwards")
    elif kind not in (None, "validation split"):
        warnings.append(f"these results were measured on {data.get('source', kind)}, not the validation split the "
                        "budget is meant for")
    base_auc, base_p50 = _auc(baseline), _p50(baseline)
    candidates = [r for r in rows if r.get("role") == "variant" and r.get("status") == "ok"
                  and r.get("export_status") in (None, "ok") and _auc(r) is not None and _p50(r) is not None]
    if not candidates:
        raise ValueError("no usable variant in the results (every variant failed or has no AUC/latency)")
    within = [r for r in candidates if base_auc - _auc(r) <= budget + 1e-12]
    if not within:
        best = max(candidates, key=_auc)
        raise ValueError(f"no variant is within {budget:g} AUC of the original ({base_auc:.4f}): the closest, "
                         f"{best['name']}, loses {base_auc - _auc(best):.4f}; raise --budget or keep the original")
    chosen = min(within, key=lambda r: (_p50(r), -_auc(r)))
    speedup = base_p50 / _p50(chosen) if _p50(chosen) else None
    size_ratio = chosen.get("size_ratio")
    if size_ratio is None and chosen.get("file_bytes") and baseline.get("file_bytes"):
        size_ratio = chosen["file_bytes"] / baseline["file_bytes"]
    return Pick(chosen, baseline, base_auc - _auc(chosen), speedup, size_ratio, budget, data, warnings,
                len(candidates))


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def pick_text(p: Pick) -> str:
    r, b = p.row, p.baseline
    ci = ((r.get("accuracy") or {}).get("ci95") or {}).get("auc") or {}
    ci_text = f" (95% CI {ci['low']:.3f}-{ci['high']:.3f})" if ci.get("low") is not None else ""
    lines = [
        f"pick: {r['name']}" + (f" (export {r['export_dir']}, variant {r['variant']}"
                                 + (f", engine {r['backend']}: --backend {r['backend']}"
                                    if r.get("backend") == "openvino" else "") + ")"
                                 if r.get("export_dir") and r.get("variant") else ""),
        f"  speed-up        {p.speedup:.2f}x  (batch-1 p50 {_p50(r):.1f} ms vs {_p50(b):.1f} ms for {b['name']})"
        if p.speedup is not None else "  speed-up        -",
        f"  AUC             {_auc(r):.4f}{ci_text} vs {_auc(b):.4f}: drop {p.auc_drop:+.4f} "
        f"(budget {p.budget:g})",
        f"  size            {_mb(r.get('file_bytes'))} = {p.size_ratio:.3f}x model.keras"
        if p.size_ratio is not None else f"  size            {_mb(r.get('file_bytes'))}",
    ]
    if r.get("compressed_bytes"):
        lines.append(f"  zip size        {_mb(r['compressed_bytes'])}")
    if r.get("macs"):
        base_macs = b.get("macs")
        lines.append(f"  GMACs/image     {r['macs'] / 1e9:.3g}" + (f" ({base_macs / r['macs']:.1f}x fewer than the "
                                                                   "original)" if base_macs else ""))
    lines.append(f"  chosen among {p.considered} usable variant(s) on {p.data.get('source', 'the benchmark data')}")
    return "\n".join(lines)
