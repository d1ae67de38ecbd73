"""Atomic file writes: a reader sees either the old file or the complete new one.

Every result file of the project (JSON, Markdown, PNG, model files) goes through here, so
an interrupted run never leaves a half-written file that looks complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` only on success.

    The temporary name keeps the target's suffix because some writers (matplotlib,
    Keras) choose the file format from it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file owner-only; results should get the usual permissions.
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, missing: str, invalid: str, error: type[Exception] = ValueError,
              missing_error: type[Exception] = FileNotFoundError) -> Any:
    """The JSON document at `path`, or one clear error: `missing_error(missing)` when there
    is no such file, `error(invalid)` when it is not JSON. The messages may use {path};
    `invalid` also {reason}, the parser's."""
    path = Path(path)
    if not path.is_file():
        raise missing_error(missing.format(path=path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(invalid.format(path=path, reason=err)) from None
