"""pareto.png (latency vs AUC per model) and sizes.png (latency vs input size), drawn
with matplotlib's Agg backend and written atomically."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from runtime import atomic  # noqa: E402
from runtime.host import DISCLAIMER



def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the Pareto front of (name, latency, auc): no other point has lower or
    equal latency AND higher or equal AUC with one of them strictly better. Ordered by
    latency."""
    front = []
    best_auc = float("-inf")
    for name, latency, auc in sorted(points, key=lambda p: (p[1], -p[2])):
        if auc > best_auc:
            front.append(name)
            best_auc = auc
    return front


def _save(fig, target) -> None:
    with atomic.atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _marker(r: dict) -> str:
    if r["role"] in ("original", "extra-original"):
        return "*"
    if r.get("sparsity") is not None:
        return "X"
    if r["format"] == "tflite":
        return "^"
    if r.get("backend") == "openvino":
        return "P"              # plus: the same .onnx file on OpenVINO
    return {"fp32": "o", "int8": "s", "fp16": "D", "dynamic-int8": "v"}.get(r["precision"], "o")


def _place_labels(ax, fig, points: list[tuple[float, float, str]], fontsize: float) -> list[float]:
    """Vertical offsets (points) for labels drawn to the right of each point, chosen greedily
    so that no two labels' boxes overlap (in display space): points at the same or nearby
    coordinates get their labels stacked instead of drawn over each other."""
    scale = 72.0 / fig.dpi
    height, char = fontsize * 1.3, fontsize * 0.58
    placed: list[tuple[float, float, float, float]] = []
    offsets = []
    for x, y, text in points:
        px, py = (v * scale for v in ax.transData.transform((x, y)))
        x0, x1 = px + 7, px + 7 + char * len(text)
        for k in range(40):
            dy = 6 + (k + 1) // 2 * height * (1 if k % 2 else -1) if k else 6
            y0, y1 = py + dy, py + dy + height
            if all(x1 <= a0 or x0 >= a1 or y1 <= b0 or y0 >= b1 for a0, a1, b0, b1 in placed):
                break
        placed.append((x0, x1, y0, y1))
        offsets.append(dy)
    return offsets


def pareto_plot(rows: list[dict], target, title: str) -> list[str]:
    """One labelled point per benchmarked model: x = batch-1 p50 latency (log scale),
    y = AUC with its bootstrap 95% CI as an error bar; the original is highlighted and the
    Pareto front (lower latency, higher AUC) drawn. Colour: the export a row belongs to
    (several with `--also`); marker: star Keras, circle FP32, square INT8, X sparse,
    triangle TFLite. Labels of points at the same place are stacked, not overdrawn.
    Returns the front's names."""
    usable = [r for r in rows if r["status"] == "ok" and r["latency_ms"]["p50"] is not None
              and r["accuracy"] and r["accuracy"].get("auc") is not None]
    fig, ax = plt.subplots(figsize=(9, 6))
    front: list[str] = []
    if usable:
        groups = list(dict.fromkeys(r.get("export") for r in usable))
        colour = {g: _COLOURS[i % len(_COLOURS)] for i, g in enumerate(groups)}
        labels = []
        for r in usable:
            acc = r["accuracy"]
            x, y = r["latency_ms"]["p50"], acc["auc"]
            ci = acc.get("ci95", {}).get("auc") or {}
            yerr = None
            if ci.get("low") is not None and ci.get("high") is not None:
                yerr = [[max(0.0, y - ci["low"])], [max(0.0, ci["high"] - y)]]
            original = r["role"] == "original"
            c = "tab:red" if original else colour[r.get("export")]
            ax.errorbar([x], [y], yerr=yerr, fmt=_marker(r), markersize=14 if original else 8,
                        color=c, ecolor="0.6", capsize=3, zorder=3, alpha=0.9)
            failed = r.get("export_status") not in (None, "ok")
            labels.append((x, y, r["name"] + (" (baseline)" if original else " (failed export checks)" if failed
                                               else ""), "tab:red" if original else c))
        ax.set_xscale("log")
        ax.autoscale_view()
        offsets = _place_labels(ax, fig, [(x, y, t) for x, y, t, _ in labels], 7.5)
        for (x, y, text, c), dy in zip(labels, offsets):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, dy), fontsize=7.5, color=c)
        # Variants that failed the export's parity checks are drawn but never offered
        # as a choice on the front.
        points = [(r["name"], r["latency_ms"]["p50"], r["accuracy"]["auc"]) for r in usable
                  if r.get("export_status") in (None, "ok")]
        front = pareto_front(points)
        by_name = {p[0]: p for p in points}
        fx = [by_name[n][1] for n in front]
        fy = [by_name[n][2] for n in front]
        ax.step(fx, fy, where="post", color="tab:green", linewidth=1.5, alpha=0.8, zorder=2)
        ax.scatter(fx, fy, s=260, facecolors="none", edgecolors="tab:green", linewidths=1.5, zorder=4,
                   label="Pareto front (nothing both faster and more accurate)")
        if len(groups) > 1:
            for g in groups:
                ax.scatter([], [], marker="o", color=colour[g], label=f"export {g}")
        for marker, text in (("*", "Keras"), ("o", "FP32 (ONNX Runtime)"), ("s", "INT8 (ONNX Runtime)"),
                             ("P", "ONNX on OpenVINO"), ("X", "sparse"), ("^", "TFLite")):
            if any(_marker(r) == marker for r in usable):
                ax.scatter([], [], marker=marker, color="0.4", label=text)
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.legend(loc="lower right", fontsize=7.5)
    else:
        ax.text(0.5, 0.5, "no model has both a latency and an AUC\n(e.g. the data hold one class only)",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("batch-1 latency, median (ms, log scale)")
    ax.set_ylabel("ROC AUC (error bars: bootstrap 95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.text(0.01, 0.005, DISCLAIMER, fontsize=7, color="0.4")
    _save(fig, target)
    return front


def sizes_plot(doc: dict, target) -> None:
    """Latency (p50, with p95 as the upper whisker) against input size, Keras vs ONNX Runtime FP32."""
    sizes = [e["size"] for e in doc["sizes"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, color in (("keras", "Keras model(x, training=False)", "tab:red"),
                              ("onnx_fp32", "ONNX Runtime FP32", "tab:blue")):
        pts = [(e["size"], e[key]["p50"], e[key]["p95"]) for e in doc["sizes"]
               if e.get(key) and e[key].get("p50") is not None]
        if not pts:
            continue
        xs, p50, p95 = zip(*pts)
        ax.errorbar(xs, p50, yerr=[[0] * len(pts), [b - a for a, b in zip(p50, p95)]], marker="o",
                    color=color, capsize=3, label=label)
    ax.set_xticks(sizes)
    ax.set_xlabel("input size (pixels, square)")
    ax.set_ylabel("batch-1 latency, median (ms; whisker: p95)")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_title("VGG16 latency vs input size (random weights, latency only)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.005, DISCLAIMER, fontsize=7, color="0.4")
    _save(fig, target)
