"""Timing many models fairly on a shared, noisy machine.

* Interleaving: the timed runs of every model are split into rounds; each round visits
  every model once (the order rotates from round to round) and runs its share of timed
  runs there. A slow period of the machine (another job, thermal throttling) then hits
  all models alike instead of whichever happened to be measured at that moment, and
  ratios between models taken from the same run stay meaningful.
* Settling: ONNX Runtime's worker threads keep spinning on the CPU for a while after a
  run (its default `allow_spinning`), and TensorFlow's pools may still be busy; on a
  2-core machine that would be charged to the next model. Before each model's turn we
  wait until this process is idle (`settle`), then do one untimed run to bring its
  caches and thread pool back before timing.
* Statistics: median (p50), 95th percentile, mean, min, max in milliseconds.

* Separate processes: a target may instead time itself somewhere else (`SelfTimed`:
  `benchmarks.backends` starts a fresh process that loads the model, warms up and
  returns its timed runs). Engines then never share a process (their thread pools would
  steal the cores from each other), and the rounds still interleave them with the
  in-process targets.

Nothing here knows about models: a target is a name and a zero-argument callable, or a
`SelfTimed`.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

SETTLE_WINDOW_S = 0.02        # idle check window
SETTLE_IDLE_SHARE = 0.1       # idle: under 10% of one core used by this process in the window
SETTLE_MAX_S = 2.0            # give up waiting after this long


def settle(max_wait: float = SETTLE_MAX_S) -> float:
    """Wait until this process uses (almost) no CPU, e.g. until ONNX Runtime's spinning
    worker threads have gone to sleep. Returns the seconds waited."""
    start = time.perf_counter()
    while True:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        time.sleep(SETTLE_WINDOW_S)
        busy = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
        waited = time.perf_counter() - start
        if busy < SETTLE_IDLE_SHARE or waited >= max_wait:
            return waited


def stats_ms(seconds: list[float]) -> dict:
    """{p50, p95, mean, min, max, runs} in milliseconds (numpy's linear percentiles)."""
    if not seconds:
        return {"p50": None, "p95": None, "mean": None, "min": None, "max": None, "runs": 0}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "runs": int(ms.size),
    }


def split_runs(runs: int, rounds: int) -> list[int]:
    """Timed runs per round, as even as possible: split_runs(30, 4) == [8, 8, 7, 7]."""
    rounds = max(1, min(rounds, runs))
    base, extra = divmod(runs, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


class TimingResult:
    """Per target: the timed durations (seconds) or the error that stopped it."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.errors: dict[str, str] = {}

    def stats(self, name: str) -> dict | None:
        return stats_ms(self.samples[name]) if name in self.samples and name not in self.errors else None


class SelfTimed:
    """A target that times itself: `timed(n)` returns n durations in seconds (warm-up
    included in its own way), or raises."""

    def timed(self, n: int) -> list[float]:
        raise NotImplementedError


def _error_text(err: BaseException) -> str:
    return " ".join(f"{err.__class__.__name__}: {err}".split())[:400]


def interleaved(targets: dict[str, Callable[[], object] | SelfTimed], runs: int, warmup: int, rounds: int,
                what: str = "latency", rewarm: bool = True) -> TimingResult:
    """Time every target `runs` times, interleaved over `rounds` rounds (see the module
    docstring). `rewarm`: one untimed call at the start of each turn (worth it for short
    calls; long batched calls skip it). A target that raises is dropped (its error
    recorded); the others go on."""
    result = TimingResult()
    names = list(targets)
    for name in names:
        result.samples[name] = []
    # warm-up: every target, one after the other
    for name in names:
        if isinstance(targets[name], SelfTimed):
            continue                                  # warms up in its own process, every turn
        if warmup:
            log.info("%s: warming up %s (%d run(s))", what, name, warmup)
        try:
            settle()
            for _ in range(warmup):
                targets[name]()
        except Exception as err:  # noqa: BLE001 - recorded, the others go on
            result.errors[name] = _error_text(err)
            log.error("%s: %s failed during warm-up: %s", what, name, result.errors[name])
    plan = split_runs(runs, rounds)
    for r, share in enumerate(plan):
        alive = [n for n in names if n not in result.errors]
        if not alive:
            break
        shift = r % len(alive)
        order = alive[shift:] + alive[:shift]
        log.info("%s: round %d/%d (%d timed run(s) each): %s", what, r + 1, len(plan), share, ", ".join(order))
        for name in order:
            fn = targets[name]
            try:
                settle()
                if isinstance(fn, SelfTimed):
                    result.samples[name] += fn.timed(share)
                    continue
                if rewarm:
                    fn()                              # untimed: caches and thread pool back after the switch
                for _ in range(share):
                    t0 = time.perf_counter()
                    fn()
                    result.samples[name].append(time.perf_counter() - t0)
            except Exception as err:  # noqa: BLE001
                result.errors[name] = _error_text(err)
                log.error("%s: %s failed in round %d: %s", what, name, r + 1, result.errors[name])
    return result


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    return value if math.isfinite(value) else None
