"""What `bcd benchmark` measures and how: one dataclass the library entry point takes
(the command line only fills it in). Stdlib only."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

MIN_IMAGE_SIZE = 32          # VGG16 needs at least 32x32


@dataclass(frozen=True)
class BenchmarkConfig:
    export_dir: str                        # export directory from `bcd export` (has manifest.json)
    data: str | None = None                # labelled folder; None: one of the run's splits
    split: str = "val"                     # which of the run's splits when data is None: val | test
    original: str | None = None            # run directory of the Keras original; None: found via the manifest
    out: str | None = None                 # output folder; None: <export_dir>/benchmark
    runs: int = 30                         # timed batch-1 runs per model
    warmup: int = 3                        # untimed runs per model before timing (each phase)
    threads: int | None = None             # intra-op threads for every engine; None: physical cores
    batch: int = 8                         # batch size of the throughput measurement
    throughput_runs: int | None = None     # timed batches per model; None: max(3, ceil(runs / 5))
    rounds: int = 5                        # interleaving rounds (runs are split over them)
    cold_starts: int = 3                   # fresh processes per model for cold start / peak RSS (0: skip)
    variants: tuple[str, ...] | None = None  # variant names to include; None: all in the manifest
    sweep_sizes: tuple[int, ...] = ()      # input sizes for the latency-only size sweep
    bootstrap: int = 1000                  # bootstrap resamples for the 95% CIs (0: no CIs)
    seed: int = 0                          # bootstrap seed
    command: str | None = None             # the exact command line, recorded in the outputs
    also: tuple[str, ...] = ()             # more export directories measured against the same original
    also_keras: bool = True                # also time each extra export's own Keras original (if found)

    def __post_init__(self) -> None:
        def positive(name: str, value, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        positive("runs", self.runs)
        positive("warmup", self.warmup, 0)
        positive("batch", self.batch)
        positive("rounds", self.rounds)
        positive("cold_starts", self.cold_starts, 0)
        positive("bootstrap", self.bootstrap, 0)
        if self.split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {self.split!r}")
        if self.threads is not None:
            positive("threads", self.threads)
        if self.throughput_runs is not None:
            positive("throughput_runs", self.throughput_runs)
        if self.variants is not None:
            names = tuple(dict.fromkeys(v.strip() for v in self.variants if v.strip()))
            if not names:
                raise ValueError("variants: give at least one variant name (or leave it out for all)")
            object.__setattr__(self, "variants", names)
        also = tuple(dict.fromkeys(str(a) for a in self.also))
        if str(self.export_dir) in also:
            raise ValueError(f"--also {self.export_dir}: that is the main export already")
        object.__setattr__(self, "also", also)
        sizes = tuple(dict.fromkeys(self.sweep_sizes))
        for s in sizes:
            positive("sweep size", s, MIN_IMAGE_SIZE)
        object.__setattr__(self, "sweep_sizes", sizes)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.export_dir) / "benchmark"

    @property
    def timed_batches(self) -> int:
        return self.throughput_runs if self.throughput_runs is not None else max(3, math.ceil(self.runs / 5))

    @property
    def effective_rounds(self) -> int:
        return min(self.rounds, self.runs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["variants"] = list(self.variants) if self.variants is not None else None
        d["sweep_sizes"] = list(self.sweep_sizes)
        d["also"] = list(self.also)
        d["throughput_runs"] = self.timed_batches
        return d


def parse_list(text: str | None) -> tuple[str, ...] | None:
    """'a, b,c' -> ('a', 'b', 'c'); None or '' -> None."""
    if not text:
        return None
    items = tuple(p.strip() for p in text.split(",") if p.strip())
    return items or None


def parse_sizes(text: str | None) -> tuple[int, ...]:
    """'96,128,160' -> (96, 128, 160)."""
    items = parse_list(text) or ()
    try:
        return tuple(int(s) for s in items)
    except ValueError:
        raise ValueError(f"--sweep-sizes: expected comma-separated integers, got {text!r}") from None
