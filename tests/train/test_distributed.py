"""Multi-worker training for real: two `bcd train --strategy multiworker` processes on
127.0.0.1, each with its own TF_CONFIG, train a tiny model together (issue 16).

CPU cost is kept small: 32x32 inputs, width 0.25, one epoch, 20 images, one thread per
worker. The processes get generous wall-clock limits because a loaded 2-core machine
imports TensorFlow slowly; the dead-worker tests assert on the seconds that pass after the
failure, not on the start-up.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.distribute import ClusterError, read_tf_config, split_sha256, writes_run_dir

REPO = Path(__file__).resolve().parents[2]

# The README's multi-worker example is this command (with other hosts, ports and paths).
WORKER_ARGS = ["--image-size", "32", "--width", "0.25", "--epochs", "1", "--batch-size", "8",
               "--precision", "bfloat16", "--lesion-weight", "0.5", "--strategy", "multiworker"]
START_LIMIT = 900        # seconds for a whole healthy run on a loaded CI machine
FAILURE_LIMIT = 150      # seconds from a worker's death to the survivor's exit (heartbeat: 30 s)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(hosts: list[str], index: int, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               OMP_NUM_THREADS="1", TF_CONFIG=json.dumps({"cluster": {"worker": hosts},
                                                          "task": {"type": "worker", "index": index}}))
    env.update(extra)
    return env


def _start(data: Path, out: Path, logs: Path, extra_args=(), workers: int = 2, **env) -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "bcd.cli", "train", "--data", str(data), "--out", str(out),
               *WORKER_ARGS, *(extra_args[i] if i < len(extra_args) else [])]
        with open(logs / f"worker{i}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(hosts, i, **env), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def _wait(proc: subprocess.Popen, seconds: float) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"worker still running after {seconds:.0f} s: the run hangs")


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _log(logs: Path, i: int) -> str:
    return (logs / f"worker{i}.log").read_text(errors="replace")


def _wait_for(logs: Path, i: int, text: str, procs, seconds: float = START_LIMIT) -> None:
    deadline = time.monotonic() + seconds
    while text not in _log(logs, i):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            _stop(procs)
            pytest.fail(f"worker {i} never logged {text!r}:\n{_log(logs, i)[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def two_worker_run(tiny_dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multiworker")
    out = root / "run"
    procs = _start(tiny_dataset, out, root)
    try:
        codes = [_wait(p, START_LIMIT) for p in procs]
    finally:
        _stop(procs)
    assert codes == [0, 0], f"{codes}\n--- worker 0\n{_log(root, 0)[-3000:]}\n--- worker 1\n{_log(root, 1)[-3000:]}"
    assert "worker done: the chief wrote the run directory" in _log(root, 1)
    return out


def _schema(value):
    """The shape of a JSON document: its keys, nested, without the values (a value may
    be null in one run and a number in another)."""
    if isinstance(value, dict):
        return {k: _schema(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_schema(value[0])]
    return "list" if isinstance(value, list) else "value"


def _split_files(run: Path) -> dict:
    doc = json.loads((run / "split.json").read_text())
    return {s: [(f["source"], f["path"], f["label"]) for f in files] for s, files in doc["files"].items()}


def _hash_of_split_json(run: Path) -> str:
    keys, labels, split = [], [], {}
    for name, entries in _split_files(run).items():
        split[name] = list(range(len(keys), len(keys) + len(entries)))
        keys += [(source, path) for source, path, _ in entries]
        labels += [label for _, _, label in entries]
    return split_sha256(keys, labels, split)


@pytest.mark.slow   # two training processes
def test_two_workers_write_one_valid_run_directory(two_worker_run):
    run = two_worker_run
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["distribution"] == {
        "strategy": "multiworker", "used": "multiworker", "workers": 2, "replicas": 2, "task": "worker:0",
        "per_replica_batch_size": 8, "global_batch_size": 16,
        "learning_rate": "as configured, not scaled with the global batch size"}
    assert info["model"]["precision"]["used"] == "bfloat16" and info["model"]["lesion_loss"] == "cam"
    assert info["split_sha256"] == _hash_of_split_json(run)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 1 and "lesion_loss" in state["history"]
    # Only the chief wrote: its log is the run's train.log; worker 1 left nothing behind.
    log = (run / "train.log").read_text()
    assert "this is worker:0 (chief)" in log and "the chief evaluates" not in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["at_operating_threshold"]["roc_auc"] <= 1.0


@pytest.mark.slow   # trains
def test_single_process_run_agrees_on_schema_and_split(two_worker_run, tmp_path):
    from bcd.cli import main
    from train.config import TrainConfig
    from train.trainer import train

    saved = json.loads((two_worker_run / "run.json").read_text())["config"]
    single = train(TrainConfig.from_dict(saved, out=str(tmp_path / "single"), strategy="none")).root
    assert _split_files(single) == _split_files(two_worker_run)
    for name in ("run.json", "metrics.json", "history.json", "predictions.json", "split.json"):
        one, two = (json.loads((r / name).read_text()) for r in (single, two_worker_run))
        assert _schema(one) == _schema(two), name
    one, two = (json.loads((r / "run.json").read_text()) for r in (single, two_worker_run))
    assert one["split_sha256"] == two["split_sha256"]
    assert one["distribution"]["workers"] == 1 and one["distribution"]["global_batch_size"] == 8
    files = lambda r: {p.relative_to(r).as_posix() for p in r.rglob("*")} - {"train.log"}  # noqa: E731
    assert files(single) == files(two_worker_run)
    # bcd evaluate takes the two-worker run as it is.
    copy = tmp_path / "copy"
    shutil.copytree(two_worker_run, copy)
    assert main(["evaluate", str(copy), "--bootstrap", "50"]) == 0


@pytest.mark.slow   # trains
def test_one_process_resumes_a_two_worker_run(two_worker_run, tmp_path):
    from train.config import TrainConfig
    from train.trainer import train

    run = tmp_path / "run"
    shutil.copytree(two_worker_run, run)
    saved = json.loads((run / "run.json").read_text())["config"]
    train(TrainConfig.from_dict(saved, out=str(run), epochs=2, strategy="none"), resume=True)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    info = json.loads((run / "run.json").read_text())
    assert state["epochs_done"] == 2 and len(state["history"]["loss"]) == 2
    assert info["distribution"]["workers"] == 1 and info["status"] == "complete"


@pytest.mark.slow   # training processes, waits for the timeout
def test_a_dead_worker_fails_the_run_with_a_clear_message(tiny_dataset, tmp_path):
    procs = _start(tiny_dataset, tmp_path / "run", tmp_path, BCD_WORKER_TIMEOUT="300")
    try:
        _wait_for(tmp_path, 1, "cluster ready", procs)
        os.killpg(procs[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        code = _wait(procs[0], FAILURE_LIMIT)
        took = time.monotonic() - killed
    finally:
        _stop(procs)
    out = _log(tmp_path, 0)
    assert code != 0, out[-3000:]
    assert "bcd: error: multi-worker training stopped: a worker died or stopped responding" in out, out[-3000:]
    print(f"worker 0 exited {took:.0f} s after worker 1 was killed")


@pytest.mark.slow   # a training process, waits for the timeout
def test_a_worker_that_never_joins_ends_the_run(tiny_dataset, tmp_path):
    """Worker 1 is never started: worker 0 must not wait forever inside TensorFlow."""
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    cmd = [sys.executable, "-m", "bcd.cli", "train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"),
           *WORKER_ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(hosts, 0, BCD_WORKER_TIMEOUT="20"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=START_LIMIT)
    except subprocess.TimeoutExpired:
        _stop([proc])
        pytest.fail("worker 0 waited forever for a worker that never started")
    text = out.decode(errors="replace")
    assert proc.returncode != 0
    assert "bcd: error: not every worker joined the cluster within 20 s (BCD_WORKER_TIMEOUT)" in text, text[-3000:]


@pytest.mark.slow   # two training processes
def test_workers_with_different_splits_refuse_to_train(tiny_dataset, tmp_path):
    procs = _start(tiny_dataset, tmp_path / "run", tmp_path, extra_args=([], ["--seed", "7"]))
    try:
        codes = [_wait(p, START_LIMIT) for p in procs]
    finally:
        _stop(procs)
    for i in (0, 1):
        assert codes[i] != 0
        assert "the workers computed different data splits" in _log(tmp_path, i), _log(tmp_path, i)[-3000:]
    assert not (tmp_path / "run" / "model.keras").exists()


def test_readme_example_is_the_test_command():
    text = (REPO / "docs" / "training.md").read_text()
    commands = re.findall(r"^\s*bcd train .*--strategy multiworker.*$", text, re.M)
    assert len(commands) == 2, "README: a two-machine `bcd train --strategy multiworker` example"
    for command in commands:
        args = shlex.split(command)[2:]
        for flag in ("--data", "--out"):      # paths differ between the README and the test
            i = args.index(flag)
            del args[i:i + 2]
        assert args == WORKER_ARGS
    tasks = [read_tf_config({"TF_CONFIG": t}) for t in re.findall(r"TF_CONFIG='(.*?)'", text)]
    assert sorted(t.name for t in tasks) == ["worker:0", "worker:1"]
    assert tasks[0].cluster == tasks[1].cluster and len(tasks[0].cluster["worker"]) == 2


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not of the form"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "task worker:3 is not in the cluster"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
     "only 'chief' and 'worker' jobs"),
])
def test_bad_tf_config_is_a_clear_error(tf_config, message):
    env = {} if tf_config is None else {"TF_CONFIG": tf_config}
    with pytest.raises(ClusterError, match=re.escape(message)):
        read_tf_config(env)


def test_the_chief_is_the_chief_task_else_worker_0():
    cluster = {"worker": ["a:1", "b:1"]}

    def doc(kind, i, c=cluster):
        return {"TF_CONFIG": json.dumps({"cluster": c, "task": {"type": kind, "index": i}})}

    assert writes_run_dir("multiworker", doc("worker", 0)) and not writes_run_dir("multiworker", doc("worker", 1))
    with_chief = {"chief": ["c:1"], **cluster}
    assert writes_run_dir("multiworker", doc("chief", 0, with_chief))
    assert not writes_run_dir("multiworker", doc("worker", 0, with_chief))
    assert writes_run_dir("none", {}) and writes_run_dir("auto", doc("worker", 1))
    assert read_tf_config(doc("worker", 1, with_chief)).names == ["chief:0", "worker:0", "worker:1"]


def test_split_hash_changes_with_any_file_or_label():
    keys = [("a", f"{i}.png") for i in range(6)]
    labels = [0, 1, 0, 1, 0, 1]
    split = {"train": [0, 1, 2, 3], "val": [4], "test": [5]}
    base = split_sha256(keys, labels, split)
    assert base == split_sha256(list(keys), list(labels), dict(split))
    assert base != split_sha256(keys, labels, {"train": [0, 1, 2, 4], "val": [3], "test": [5]})
    assert base != split_sha256(keys, [0, 1, 0, 1, 0, 0], split)
    assert base != split_sha256([("b", p) for _, p in keys], labels, split)
