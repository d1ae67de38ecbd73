"""A readable table of an export's variants (printed by `bcd export`)."""
from __future__ import annotations

from runtime.manifest import Manifest


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary_table(manifest: Manifest, seconds: dict[str, float] | None = None) -> str:
    seconds = seconds or {}
    base = manifest.baseline
    header = ("variant", "status", "size", "max|dp|", "flips", "AUC", "dAUC", "CAM r", "OOD thr", "time")
    rows = []
    for v in manifest.variants:
        p = v.parity
        flips = f"{round(p.flip_rate * p.n)}/{p.n}" if p else "-"
        rows.append((
            v.name, v.status, _size(v.size_bytes),
            _num(p.max_abs_diff if p else None, ".2e"), flips,
            _num(p.auc if p else None, ".4f"), _num(p.auc_drop if p else None, "+.4f"),
            _num(p.cam_correlation if p else None, ".3f"),
            _num(v.ood["threshold"] if v.ood else None, ".4g"),
            f"{seconds[v.name]:.0f}s" if v.name in seconds else "-",
        ))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    tol = manifest.export_settings.get("tolerance", {})
    out = [
        f"Parity vs the Keras model on {base.get('data')}: baseline AUC {_num(base.get('auc'), '.4f')}, "
        f"operating threshold {manifest.threshold_value:.4f}; tolerance: AUC drop <= "
        f"{tol.get('max_auc_drop', '?')}, flip rate <= {tol.get('max_flip_rate', '?')}",
        "",
        line(header),
        line(tuple("-" * w for w in widths)),
        *(line(r) for r in rows),
    ]
    problems = [v for v in manifest.variants if v.status != "ok"]
    if problems:
        out.append("")
        out.extend(f"{v.name}: {v.status}: {v.reason}" for v in problems)
    if manifest.qat_summary:
        for fmt, row in manifest.qat_summary.get("comparison", {}).items():
            out.append(f"QAT vs post-training INT8 ({fmt}): {row['verdict']}")
    if manifest.ood:
        out.append(f"OOD thr: out-of-distribution flag threshold per variant ({manifest.ood.get('rule', '')})")
    ok = sum(v.status == "ok" for v in manifest.variants)
    out += ["", f"{ok} of {len(manifest.variants)} variants ok."]
    return "\n".join(out)
