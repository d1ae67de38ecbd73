"""Command-line options of the benchmark, shared by `bcd benchmark` and `python -m benchmarks`.

Importing this module is light (stdlib only); TensorFlow, ONNX Runtime and matplotlib
load when the benchmark runs (benchmarks.runner).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from benchmarks.config import BenchmarkConfig, parse_list, parse_sizes
from runtime.host import DISCLAIMER

HELP = "latency, throughput, cold start, memory and accuracy of every exported variant vs the original Keras model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="export directory from `bcd export`")
    p.add_argument("--data", type=Path, help="labelled folder (class sub-folders) or CSV index (path,label columns) to measure accuracy on "
                   "(default: the run's validation split, on which the threshold was chosen: optimistic)")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="without --data: which of the run's saved splits to score (default val; test is the "
                        "held-out one, not used to choose the threshold)")
    p.add_argument("--also", type=Path, action="append", default=[], metavar="EXPORT_DIR",
                   help="another export (e.g. of a `bcd slim` run) to measure in the same run against the SAME "
                        "original; repeatable; its rows are named <export folder>/<variant>")
    p.add_argument("--no-also-keras", dest="also_keras", action="store_false",
                   help="do not time the Keras original of each --also export (default: timed when found)")
    p.add_argument("--original", type=Path, metavar="RUN_DIR",
                   help="run directory of the original Keras model (default: found via the manifest's source_model)")
    p.add_argument("--out", type=Path, help="output folder (default EXPORT_DIR/benchmark)")
    p.add_argument("--runs", type=int, default=30, help="timed batch-1 runs per model (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs per model (default 3)")
    p.add_argument("--threads", type=int, help="threads for every engine (default: physical cores)")
    p.add_argument("--batch", type=int, default=8, help="batch size for throughput (default 8)")
    p.add_argument("--throughput-runs", type=int, help="timed batches per model (default max(3, runs/5))")
    p.add_argument("--rounds", type=int, default=5, help="interleaving rounds the timed runs are split into (default 5)")
    p.add_argument("--cold-starts", type=int, default=3,
                   help="fresh processes per model for cold start and peak memory (default 3; 0 skips)")
    p.add_argument("--variants", help="comma-separated variant names (default: all in the manifest)")
    p.add_argument("--sweep-sizes", help="also time Keras vs ONNX Runtime FP32 at these input sizes, e.g. "
                   "96,128,160,224 (random weights, latency only)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def command_from_args(args: argparse.Namespace, prog: str) -> str:
    """The command with every option spelled out, so results say exactly how to rerun them."""
    parts = [*prog.split(), str(args.export_dir)]
    for extra in args.also:
        parts += ["--also", str(extra)]
    if not args.also_keras:
        parts.append("--no-also-keras")
    split = None if args.data is not None else args.split
    for flag, value in (("--data", args.data), ("--split", split), ("--original", args.original), ("--out", args.out),
                        ("--runs", args.runs), ("--warmup", args.warmup), ("--threads", args.threads),
                        ("--batch", args.batch), ("--throughput-runs", args.throughput_runs),
                        ("--rounds", args.rounds), ("--cold-starts", args.cold_starts),
                        ("--variants", args.variants), ("--sweep-sizes", args.sweep_sizes),
                        ("--bootstrap", args.bootstrap), ("--seed", args.seed)):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def config_from_args(args: argparse.Namespace, prog: str) -> BenchmarkConfig:
    if not args.export_dir.is_dir():
        raise ValueError(f"{args.export_dir}: no such export directory")
    if args.data is not None and not args.data.exists():
        raise ValueError(f"--data {args.data}: no such folder or CSV index")
    for extra in args.also:
        if not extra.is_dir():
            raise ValueError(f"--also {extra}: no such export directory")
    return BenchmarkConfig(
        export_dir=str(args.export_dir), data=str(args.data) if args.data else None, split=args.split,
        original=str(args.original) if args.original else None, out=str(args.out) if args.out else None,
        runs=args.runs, warmup=args.warmup, threads=args.threads, batch=args.batch,
        throughput_runs=args.throughput_runs, rounds=args.rounds, cold_starts=args.cold_starts,
        variants=parse_list(args.variants), sweep_sizes=parse_sizes(args.sweep_sizes),
        bootstrap=args.bootstrap, seed=args.seed, command=command_from_args(args, prog),
        also=tuple(str(a) for a in args.also), also_keras=args.also_keras,
    )


def summary(result) -> str:
    """A short table for the terminal (results.md has the full one)."""
    from benchmarks.report import sorted_rows

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    header = ("model", "status", "p50 ms", "speed-up", "img/s", "cold s", "RSS MiB", "size", "zip MB", "GMACs",
              "AUC", "flips")
    rows = []
    for r in sorted_rows(result.doc["variants"]):
        acc = r.get("accuracy") or {}
        rows.append((r["name"], r["status"], f(r["latency_ms"]["p50"], ".1f"), f(r["speedup_p50"], ".2f"),
                     f(r["throughput_ips"], ".1f"), f(r["cold_start_s"], ".2f"), f(r["peak_rss_mb"], ".0f"),
                     f(r["size_ratio"], ".2f"),
                     f(r["compressed_bytes"] / 1e6 if r.get("compressed_bytes") else None, ".1f"),
                     f(r["macs"] / 1e9 if r.get("macs") else None, ".3f"), f(acc.get("auc"), ".3f"),
                     f"{acc['flips']}/{acc['n']}" if acc else "-"))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]
    for r in result.failed:
        out.append(f"{r['name']}: {r['error']}")
    for e in result.sweep_errors:
        out.append(f"size sweep {e['size']}: {e['error']}")
    out.append(f"\nspeed-up and size are ratios vs the original Keras model (size: file / model.keras). "
               f"Written to {result.out_dir}: results.json, results.md, pareto.png"
               + (", sizes.json, sizes.png" if result.doc.get("sweep") else ""))
    out.append(DISCLAIMER)
    return "\n".join(out)


def execute(config: BenchmarkConfig) -> int:
    """Run the benchmark, print the summary; exit status 0 (all rows ok) or 1 (some failed)."""
    from benchmarks.runner import run_benchmark

    result = run_benchmark(config)
    print(summary(result))
    if result.exit_code:
        print(f"{len(result.failed)} model(s) failed" + (f", {len(result.sweep_errors)} sweep size(s) failed"
              if result.sweep_errors else "") + " (see the rows); the other results were written",
              file=sys.stderr)
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks`: the same as `bcd benchmark`. Exit status: 0 every model
    benchmarked, 1 some variants failed (outputs written), 2 unusable arguments or the
    original model cannot run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=HELP + ". " + DISCLAIMER)
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    try:
        return execute(config_from_args(args, "python -m benchmarks"))
    except ImportError as err:
        if args.debug:
            raise
        print(f"benchmarks: error: needs the 'export' extra ({err.name or err} is not installed): "
              "pip install 'breast-cancer-edge[export]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        if args.debug:
            raise
        print(f"benchmarks: error: {err}", file=sys.stderr)
        return 2
