"""A cache of decoded, resized datasets, so a dataset is decoded once per image size.

Decoding, hashing and resizing 2000 ultrasound images takes minutes on a clinic PC;
`--resume`, `bcd slim`, `bcd export` and evaluation read the same images again. The
cache key covers everything the arrays depend on: the source (path, CSV mapping, label
map), each file's size and modification time, and the preprocessing; a changed file
gives a new key, never stale pixels. Entries are .npz files written atomically, outside
git: $BCD_CACHE_DIR, else $XDG_CACHE_HOME/breast-cancer-edge, else
~/.cache/breast-cancer-edge. BCD_CACHE_DIR=off disables it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import atomic
from runtime.dataset import SourceScan

log = logging.getLogger(__name__)
VERSION = 2     # 2: per-image BI-RADS array; folder sources carry the masks beside their images


def _stat(path: Path | None) -> list:
    if path is None:
        return [None]
    try:
        st = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class DecodeCache:
    folder: Path | None          # None: caching off

    @classmethod
    def default(cls) -> "DecodeCache":
        env = os.environ.get("BCD_CACHE_DIR")
        if env is not None and env.strip().lower() in ("", "off", "0", "none"):
            return cls(None)
        if env:
            return cls(Path(env))
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cls(base / "breast-cancer-edge")

    def key(self, scan: SourceScan, settings: dict) -> str:
        listing = [(_stat(s.path), _stat(s.mask), s.label, s.group, s.birads) for s in scan.labelled]
        doc = {"version": VERSION, "source": scan.source.to_dict(), "settings": settings, "files": listing}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def _file(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"decoded-{key}.npz"

    def get(self, key: str) -> dict | None:
        if self.folder is None or not self._file(key).is_file():
            return None
        try:
            with np.load(self._file(key), allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:   # a damaged entry is decoded again
            log.warning("ignoring a damaged cache entry %s (%s)", self._file(key), err)
            return None

    def put(self, key: str, arrays: dict) -> None:
        if self.folder is None:
            return
        try:
            with atomic.atomic_path(self._file(key)) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
        except OSError as err:    # a full or read-only disk must not stop training
            log.warning("could not write the decode cache in %s (%s)", self.folder, err)
