"""Measuring processes started by a benchmark: each one a fresh Python that imports this
checkout's packages (whatever the caller's working directory) and prints its result as
the last JSON line of its stdout."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)


def checkout_env(**extra: str) -> dict[str, str]:
    """os.environ with this checkout first on PYTHONPATH; `extra` only where not set."""
    env = dict(os.environ)
    for key, value in extra.items():
        env.setdefault(key, value)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_json_child(command: list[str], timeout: float, what: str, env: dict[str, str] | None = None) -> dict:
    """Run `command` and return the JSON of its last non-empty stdout line; a process that
    hangs, cannot start or prints no result gives {"ok": False, "error": ...} naming
    `what` (e.g. "the timing process"). Never raises."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=env if env is not None else checkout_env())
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"{what} did not finish within {timeout:.0f}s"}
    except OSError as err:
        return {"ok": False, "error": f"cannot start {what}: {err}"}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = " ".join((proc.stderr or proc.stdout or "").split())[-400:]
        return {"ok": False, "error": f"{what} exited with status {proc.returncode} without a result"
                                      f"{': ' + tail if tail else ''}"}
