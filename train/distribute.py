"""Training on several GPUs or machines with tf.distribute (`bcd train --strategy`).

- none: one device, the default strategy (what `bcd train` always did).
- auto: MirroredStrategy when several GPUs are visible, else none.
- mirrored: MirroredStrategy over this machine's GPUs (one CPU replica without GPUs).
- multiworker: MultiWorkerMirroredStrategy over the machines listed in TF_CONFIG, one
  process per machine; every process runs the same `bcd train` command.

Only the chief (task "chief", else worker 0) writes the run directory and train.log;
the other workers write the same files (saving may run collective ops, so every worker
must save) into a scratch folder that is deleted at the end: the standard
MultiWorkerMirroredStrategy pattern.

Dead workers: TensorFlow's coordination service notices a worker that stops sending
heartbeats (HEARTBEAT_SECONDS) and aborts the collectives (the split check is one too),
which `train` turns into a clear error. Workers that never join leave the others waiting forever inside TensorFlow,
so joining the cluster runs under a watchdog (a separate tiny process) that ends the
process after BCD_WORKER_TIMEOUT seconds (default 600) with a message.

This module reads TF_CONFIG without TensorFlow (the CLI needs to know who the chief is
before it opens train.log); TensorFlow is imported only to build a strategy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from train.config import STRATEGIES

log = logging.getLogger(__name__)

TIMEOUT_ENV = "BCD_WORKER_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
HEARTBEAT_SECONDS = 30    # TensorFlow's default is 10 s; a loaded machine can miss that
SUPPORTED_JOBS = ("chief", "worker")
_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')


class ClusterError(RuntimeError):
    """The cluster cannot train: bad TF_CONFIG, a worker missing or lost, splits that differ."""


@dataclass(frozen=True)
class Task:
    """This process's place in a TF_CONFIG cluster."""
    type: str
    index: int
    cluster: dict          # job name -> list of "host:port"

    @property
    def name(self) -> str:
        return f"{self.type}:{self.index}"

    @property
    def is_chief(self) -> bool:
        chief_job = "chief" if self.cluster.get("chief") else "worker"
        return self.type == chief_job and self.index == 0

    @property
    def names(self) -> list[str]:
        """Every task of the cluster, chief first."""
        return [f"{job}:{i}" for job in SUPPORTED_JOBS for i in range(len(self.cluster.get(job, [])))]


def read_tf_config(environ=None) -> Task:
    """Parse and check TF_CONFIG, with messages that say what to fix."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        raise ClusterError(f"--strategy multiworker needs the TF_CONFIG environment variable, e.g. {_EXAMPLE}")
    try:
        doc = json.loads(text)
        cluster, task = doc["cluster"], doc["task"]
        kind, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise ClusterError(f"TF_CONFIG is not of the form {_EXAMPLE} ({err.__class__.__name__}: {err})") from None
    if not isinstance(cluster, dict):
        raise ClusterError(f"TF_CONFIG: 'cluster' must map job names to host:port lists, e.g. {_EXAMPLE}")
    extra = sorted(set(cluster) - set(SUPPORTED_JOBS))
    if extra:
        raise ClusterError(f"TF_CONFIG: only 'chief' and 'worker' jobs are supported, not {', '.join(extra)}")
    if len(cluster.get("chief", [])) > 1:
        raise ClusterError("TF_CONFIG: at most one chief")
    hosts = cluster.get(kind)
    if not hosts or not 0 <= index < len(hosts):
        raise ClusterError(f"TF_CONFIG: task {kind}:{index} is not in the cluster {json.dumps(cluster)}")
    return Task(kind, index, cluster)


def writes_run_dir(strategy: str, environ=None) -> bool:
    """Whether this process writes the run directory (False only for a non-chief worker)."""
    return strategy != "multiworker" or read_tf_config(environ).is_chief


def worker_timeout(environ=None) -> float:
    text = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise ClusterError(f"{TIMEOUT_ENV} must be a number of seconds, not {text!r}") from None
    if value <= 0:
        raise ClusterError(f"{TIMEOUT_ENV} must be positive")
    return value


@dataclass
class Cluster:
    """The strategy of a run and this process's role in it."""
    requested: str
    kind: str                  # none | mirrored | multiworker
    strategy: object           # tf.distribute.Strategy
    task: Task | None = None
    timeout: float = DEFAULT_TIMEOUT
    _scratch: Path | None = field(default=None, repr=False)

    @property
    def is_chief(self) -> bool:
        return self.task is None or self.task.is_chief

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def workers(self) -> int:
        return len(self.task.names) if self.task else 1

    def scratch_dir(self) -> Path:
        """Where a non-chief worker writes what the chief writes to the run directory."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"bcd-{self.task.name.replace(':', '')}-"))
        return self._scratch

    def summary(self, per_replica_batch: int) -> dict:
        """The run.json "distribution" block (the same keys for every strategy)."""
        return {
            "strategy": self.requested, "used": self.kind, "workers": self.workers, "replicas": self.replicas,
            "task": self.task.name if self.task else None,
            "per_replica_batch_size": per_replica_batch, "global_batch_size": per_replica_batch * self.replicas,
            "learning_rate": "as configured, not scaled with the global batch size",
        }

    def check_same_split(self, digest: str) -> None:
        """Every worker gathers every worker's split hash (an all-gather, so a dead peer
        aborts it like any collective) and compares them: the same verdict, with the same
        message, on every worker."""
        if self.kind != "multiworker":
            return
        from train.tf_setup import tf
        mine = tf.constant([list(bytes.fromhex(digest))], dtype=tf.int32)        # (1, 32)
        per_replica = self.strategy.experimental_distribute_values_from_function(lambda _: mine)
        gathered = self.strategy.gather(per_replica, axis=0).numpy()
        per_worker = len(gathered) // self.workers     # replicas per worker (MultiWorkerMirrored: equal)
        digests = {name: bytes(gathered[i * per_worker].astype("uint8").tolist()).hex()
                   for i, name in enumerate(self.task.names)}
        if len(set(digests.values())) > 1:
            raise ClusterError(
                "the workers computed different data splits (sha256 per worker: "
                + ", ".join(f"{n} {d[:12]}" for n, d in digests.items())
                + "): every machine needs the same files at the same --data paths and the same settings")
        log.info("split sha256 %s: the same on all %d workers", digest[:12], len(digests))

    def wait_for_all(self) -> None:
        """Wait until every worker is done: the chief evaluates after training, and a
        worker that left earlier would look dead to it."""
        if self.kind != "multiworker":
            return
        from tensorflow.python.eager import context   # the coordination service's barrier
        try:
            context.context().wait_at_barrier("bcd/finished", int(self.timeout * 1000))
        except Exception as err:  # noqa: BLE001 - training is over; only the goodbye failed
            log.warning("not every worker confirmed the end of the run: %s", _first_line(err))

    def cleanup(self) -> None:
        """Delete a non-chief worker's scratch folder."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def make_cluster(requested: str, environ=None) -> Cluster:
    """The strategy for --strategy. Call it before TensorFlow runs any operation: a
    MultiWorkerMirroredStrategy must be created first, and it waits for every worker."""
    if requested not in STRATEGIES:
        raise ClusterError(f"--strategy must be one of {', '.join(STRATEGIES)}")
    environ = os.environ if environ is None else environ
    from train.tf_setup import tf
    if requested == "multiworker":
        return _multiworker(read_tf_config(environ), worker_timeout(environ))
    if environ.get("TF_CONFIG"):
        log.warning("TF_CONFIG is set but --strategy is %s: training on this machine only", requested)
    gpus = tf.config.list_physical_devices("GPU")
    if requested == "mirrored" or (requested == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d replica(s)", strategy.num_replicas_in_sync)
        return Cluster(requested, "mirrored", strategy)
    return Cluster(requested, "none", tf.distribute.get_strategy())


def _multiworker(task: Task, timeout: float) -> Cluster:
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    from train.tf_setup import tf

    leader = "chief" if task.cluster.get("chief") else "worker"
    # MultiWorkerMirroredStrategy configures the coordination service itself unless it
    # already is: this sets the heartbeat that detects a dead worker.
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0",
        cluster_register_timeout_in_ms=int(timeout * 1000), heartbeat_timeout_in_ms=HEARTBEAT_SECONDS * 1000,
        shutdown_barrier_timeout_in_ms=HEARTBEAT_SECONDS * 1000,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(task.cluster[job]))
                          for job in SUPPORTED_JOBS if task.cluster.get(job)])
    addresses = [h for job in SUPPORTED_JOBS for h in task.cluster.get(job, [])]   # in task.names' order
    hosts = ", ".join(f"{n} {h}" for n, h in zip(task.names, addresses))
    log.info("joining the cluster as %s (%s); waiting up to %.0f s for every worker", task.name, hosts, timeout)
    message = (f"not every worker joined the cluster within {timeout:.0f} s ({TIMEOUT_ENV}): start the same "
               f"command on every machine of TF_CONFIG ({hosts}), each with its own task, and check that the "
               f"ports are reachable")
    # tf.distribute logs every collective it builds at INFO: hundreds of lines per epoch
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    with watchdog(timeout, message):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    log.info("cluster ready: %d workers, %d replicas; this is %s%s", len(task.names),
             strategy.num_replicas_in_sync, task.name, " (chief)" if task.is_chief else "")
    return Cluster("multiworker", "multiworker", strategy, task, timeout)


# The watchdog is a separate tiny process: the call it guards blocks inside TensorFlow's
# C++ while holding Python's GIL, so no Python thread or signal handler of this process
# would run in time.
_GUARD = ("import os, signal, sys, time\n"
          "time.sleep(float(sys.argv[1]))\n"
          "sys.stderr.write('bcd: error: ' + sys.argv[2] + '\\n')\n"
          "sys.stderr.flush()\n"
          "os.kill(int(sys.argv[3]), signal.SIGKILL)\n")


@contextmanager
def watchdog(seconds: float, message: str):
    """Kill this process with `message` on stderr if the block has not finished after
    `seconds`: the way out of a call that blocks inside TensorFlow with no timeout."""
    guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(seconds), message, str(os.getpid())],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        guard.kill()
        guard.wait()


def lost_worker_error(err: Exception) -> ClusterError | None:
    """A clear error for TensorFlow's failures when a peer is gone, else None."""
    from train.tf_setup import tf
    if not isinstance(err, (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
                            tf.errors.CancelledError)):
        return None
    return ClusterError(f"multi-worker training stopped: a worker died or stopped responding ({_first_line(err)}). "
                        "Restart every worker with --resume to continue from the last saved epoch")


def _first_line(err: Exception) -> str:
    text = str(err)
    for marker in ("The following tasks are unhealthy", "Collective ops is aborted by:"):
        if marker in text:
            text = text[text.index(marker):]
            break
    return " ".join(text.split("\n")[:2]).strip()[:300]


def shard_by_data(dataset):
    """Auto-shard an in-memory tf.data pipeline by element: every worker runs the same
    (identically seeded) pipeline and keeps its share of each global batch. File
    sharding does not apply to from_tensor_slices datasets."""
    from train.tf_setup import tf
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def split_sha256(keys: list[tuple[str, str]], labels, split: dict) -> str:
    """sha256 of the split's file list: (source, path, label) per image, per split."""
    doc = {name: [[keys[i][0], keys[i][1], int(labels[i])] for i in split[name]] for name in sorted(split)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
