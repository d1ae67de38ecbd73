"""predict_paths with files read ahead in worker threads (runtime.read_ahead): the same
results as the sequential loop, in the same order, with the same errors, progress and
partial reports, and never more than the prefetch bound decoded ahead."""
from __future__ import annotations

import gc
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.shipped import default_model_path
from tests.conftest import missing

from runtime import predict_files
from runtime.classifier import Classifier
from runtime.predict_files import PartialResults, predict_paths
from runtime.read_ahead import Pipeline, read_ahead

REPO = Path(__file__).resolve().parents[2]
SHIPPED = default_model_path() or Path("runtime/models/bus-vgg16-w50-128")
BUSI = REPO.parent / "shared" / "data" / "busi"
PNG = b"\x89PNG\r\n\x1a\n"
PIPELINES = [Pipeline(decode_workers=0), Pipeline(decode_workers=1, prefetch_batches=1),
             Pipeline(decode_workers=2, prefetch_batches=2), Pipeline(decode_workers=3, prefetch_batches=4)]


@pytest.fixture(scope="module")
def clf() -> Classifier:
    if not (SHIPPED / "manifest.json").is_file():
        missing("the shipped model is not in runtime/models/")
    return Classifier.load(SHIPPED, threads=1)


def scans(n: int) -> list[np.ndarray]:
    """n real BUSI scans when the development data is there, else textured noise."""
    files = sorted(p for p in BUSI.glob("*/*.png") if not p.stem.endswith("_mask"))[::40][:n]
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files]
    rng = np.random.default_rng(0)
    while len(images) < n:
        noise = cv2.GaussianBlur(rng.integers(0, 256, (160, 200), dtype=np.uint8), (0, 0), 2)
        images.append(cv2.cvtColor(cv2.equalizeHist(noise), cv2.COLOR_GRAY2BGR))
    return images


@pytest.fixture
def folder(tmp_path) -> Path:
    """14 scans in two sub-folders, and files that cannot be classified among them: a
    truncated PNG, text named .png, an empty file, a FIFO, a folder named like an image."""
    root = tmp_path / "clinic"
    for i, image in enumerate(scans(14)):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"scan_{i:02d}.png"), image)
    (root / "a" / "scan_03b.png").write_bytes((root / "a" / "scan_03.png").read_bytes()[:400])
    (root / "b" / "notes.png").write_text("not an image")
    (root / "b" / "empty.png").write_bytes(b"")
    if hasattr(os, "mkfifo"):                   # not listed from a folder: named below
        os.mkfifo(tmp_path / "pipe.png")
    (root / "b" / "folder.png").mkdir()
    return root


def inputs(folder: Path) -> list[Path]:
    """The folder, a missing file, and the FIFO (a file a folder listing skips)."""
    fifo = folder.parent / "pipe.png"
    return [folder, folder / "missing.png"] + ([fifo] if fifo.exists() else [])


def reports(results) -> list[dict]:
    return [r.to_dict() for r in results]


def test_pipelined_gives_the_sequential_results(clf, folder, tmp_path):
    runs = {}
    for k, pipeline in enumerate(PIPELINES):
        heat = tmp_path / f"heat{k}"
        results = predict_paths(clf, inputs(folder), batch_size=4, heatmap_dir=heat,
                                pipeline=pipeline)
        runs[pipeline] = (reports(results), {p.name: p.read_bytes() for p in sorted(heat.iterdir())})
    sequential, heatmaps = runs[PIPELINES[0]]
    for pipeline, (rows, heat) in runs.items():
        assert rows == sequential, pipeline
        assert heat == heatmaps, pipeline
    paths = [row["path"] for row in sequential]
    assert paths == sorted(paths)
    errors = {Path(row["path"]).name: row["error"] for row in sequential if row["error"]}
    expected_bad = {"scan_03b.png", "notes.png", "empty.png", "missing.png"} | ({"pipe.png"} if hasattr(os, "mkfifo") else set())
    assert set(errors) == expected_bad
    assert "not a readable image" in errors["scan_03b.png"] and "empty file" in errors["empty.png"]
    assert sum(row["error"] is None for row in sequential) == 14
    assert len(heatmaps) == 14


def test_progress_and_partial_reports_are_the_same(clf, folder, tmp_path, monkeypatch):
    seen = {}
    for pipeline in PIPELINES[:3]:
        progress, partial_sizes = [], []
        partial = PartialResults(tmp_path / "r.json", every_seconds=0)
        real_update = partial.update

        def update(predictions, total, real_update=real_update, sizes=partial_sizes):
            sizes.append((len(predictions), total))
            real_update(predictions, total)

        partial.update = update
        predict_paths(clf, inputs(folder), batch_size=4, pipeline=pipeline,
                      progress=lambda done, total, log=progress: log.append((done, total)), partial=partial)
        seen[pipeline] = (progress, partial_sizes, partial.path.read_text())
    files = 14 + 3 + (1 if hasattr(os, "mkfifo") else 0)   # + the FIFO; the folder "folder.png" is not listed
    want_progress = [(min(k, files), files) for k in range(4, files + 4, 4)]
    want_partial = [(done + 1, files + 1) for done, _ in want_progress]  # + the missing file's row
    for progress, sizes, written in seen.values():
        assert progress == want_progress
        assert sizes == want_partial
        # the file holds the last update before the end (the complete one is not written)
        assert '"partial": true' in written and f'"done": {want_partial[-2][0]}' in written


def test_decoded_images_ahead_of_inference_stay_within_the_bound(clf, tmp_path, monkeypatch):
    """Counts the reads that finished (the real per-file step, wrapped) against the images
    classified so far (progress): never more than prefetch_batches batches ahead, and with
    slow inference the readers do fill that bound."""
    rng = np.random.default_rng(1)
    for i in range(40):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    finished = []
    real_read = predict_files._read

    def counted_read(path, classifier):
        result = real_read(path, classifier)
        finished.append(path)
        return result

    monkeypatch.setattr(predict_files, "_read", counted_read)
    batch, prefetch = 4, 2
    ahead = []

    def progress(done, total):
        time.sleep(0.15)           # inference much slower than reading: readers run ahead
        ahead.append((len(finished) - done, total - done))

    predict_paths(clf, [tmp_path], batch_size=batch, progress=progress,
                  pipeline=Pipeline(decode_workers=2, prefetch_batches=prefetch))
    assert len(finished) == 40
    assert all(n <= prefetch * batch for n, _ in ahead), ahead
    assert max(n for n, _ in ahead) == prefetch * batch, ahead
    assert ahead[-1] == (0, 0)


def test_read_ahead_keeps_the_order_of_slow_and_fast_items():
    delays = {i: (i * 7 % 5) / 500 for i in range(30)}

    def read(i):
        time.sleep(delays[i])
        return i * i

    chunks = [list(range(s, min(s + 4, 30))) for s in range(0, 30, 4)]
    got = list(read_ahead(chunks, read, Pipeline(decode_workers=3, prefetch_batches=2)))
    assert got == [[i * i for i in chunk] for chunk in chunks]
    assert not reader_threads()


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bcd-read")]


def test_a_failure_in_the_loop_ends_the_reader_threads(clf, folder):
    def progress(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_paths(clf, [folder], batch_size=2, progress=progress, pipeline=Pipeline(decode_workers=2))
    gc.collect()                   # the loop's iterator goes with the traceback that held it
    deadline = time.monotonic() + 10
    while reader_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not reader_threads()


def test_an_exception_in_the_per_file_step_reaches_the_caller():
    def read(i):
        if i == 5:
            raise RuntimeError("bug in the reader")
        return i

    batches = read_ahead([[0, 1, 2], [3, 4, 5], [6, 7]], read, Pipeline(decode_workers=2))
    assert next(batches) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="bug in the reader"):
        next(batches)
    assert not reader_threads()


@pytest.mark.parametrize("kwargs", [{"decode_workers": -1}, {"prefetch_batches": 0}])
def test_pipeline_settings_are_checked(kwargs):
    with pytest.raises(ValueError):
        Pipeline(**kwargs)


def test_batch_size_is_checked(clf, folder):
    with pytest.raises(ValueError, match="batch_size"):
        predict_paths(clf, [folder], batch_size=0)


def test_default_pipeline_uses_threads():
    assert Pipeline().workers() >= 1
    assert Pipeline(decode_workers=0).workers() == 0
