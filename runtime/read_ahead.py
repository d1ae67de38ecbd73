"""Read and decode files in worker threads while the model classifies earlier ones.

Over a folder, `bcd predict` spends most of its time decoding PNGs, not in the model.
Done in the thread that also runs inference, every core but one waits while a file is
decoded. Here a small thread pool runs the per-file step (read + decode + whatever else
is done to one file before inference) a bounded number of batches ahead of the batch
being classified: file I/O and cv2.imdecode release the GIL, so the decoding runs on
the other cores meanwhile.

    for decoded in read_ahead(chunks, read_one, Pipeline()):
        classify(decoded)            # decoded[i] == read_one(chunk[i]), chunks in order

Batches come out in the order given and each holds exactly what `read_one` returned for
its items, so the results are those of the plain loop `[read_one(x) for x in chunk]`.
Memory stays bounded: at most `prefetch_batches` batches are read ahead of the one the
caller holds, never the whole folder.
"""
from __future__ import annotations

import concurrent.futures
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

from runtime.session import physical_cores

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Pipeline:
    """How files are read ahead of inference.

    decode_workers: threads running the per-file step; 0 reads each batch in the calling
        thread just before it is classified (no threads, the old sequential loop); None
        (default) is one per physical core.
    prefetch_batches: batches read ahead of the one being classified; more only holds
        more images in memory (a batch of 8 decoded 856x606 images is ~12 MB).

    The defaults, from `python -m benchmarks.ingest --sweep` (docs/results/ingest/: 2
    physical cores, 200 856x606 PNG screens, the shipped model on OpenVINO, batch 8,
    3 rounds with other processes under 1.1 % of the CPU time): the per-file step (read,
    decode, scan region, checks, preprocessing) took 10.0 ms per image on one thread
    and inference 1.4 ms, so the per-file step is ~88 % of the work and needs every
    core; floor 5.68 ms per image. Sequential 11.3 ms; decode_workers=1 11.0 ms (bound
    by one thread's per-file step); the defaults 6.73 ms (0.84 of the floor); 3 workers,
    prefetch 1 or 4, or 1 inference thread: 6.57-6.85 ms, within the rounds' spread.
    Prefetch 2 rather than 1 leaves a margin for uneven files at no measurable cost.
    """

    decode_workers: int | None = None
    prefetch_batches: int = 2

    def __post_init__(self) -> None:
        if self.decode_workers is not None and self.decode_workers < 0:
            raise ValueError("decode_workers must be 0 (no threads) or more")
        if self.prefetch_batches < 1:
            raise ValueError("prefetch_batches must be at least 1")

    def workers(self) -> int:
        """The number of decode threads this setting gives on this machine."""
        return physical_cores() if self.decode_workers is None else self.decode_workers


def read_ahead(chunks: Sequence[Sequence[Item]], read_one: Callable[[Item], Result],
               pipeline: Pipeline = Pipeline()) -> Iterator[list[Result]]:
    """[read_one(item) for item in chunk] for each chunk, in order, computed by
    `pipeline.workers()` threads up to `pipeline.prefetch_batches` chunks ahead.

    read_one must not raise (turn a bad file into an error value): an exception it
    raises is re-raised here, at the chunk that holds it. When the iterator is
    exhausted, closed or garbage-collected (a loop left early), reads not started are
    cancelled and the threads end once the running ones finish."""
    workers = pipeline.workers()
    if workers == 0:
        for chunk in chunks:
            yield [read_one(item) for item in chunk]
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcd-read")
    pending: deque[list[concurrent.futures.Future]] = deque()
    upcoming = iter(chunks)
    try:
        while True:
            # The caller is done with the previous batch: keep the next chunk and
            # prefetch_batches behind it being read. While the caller holds a batch, at
            # most prefetch_batches more are read or wait decoded.
            while len(pending) <= pipeline.prefetch_batches:
                chunk = next(upcoming, None)
                if chunk is None:
                    break
                pending.append([pool.submit(read_one, item) for item in chunk])
            if not pending:
                return
            yield [future.result() for future in pending.popleft()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
