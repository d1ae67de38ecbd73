"""A one-line progress counter on stderr, shared by every long job (reading a dataset,
predicting a folder). On a terminal the line updates in place; in a log it prints a line
every `every` items, and always the last one."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, what: str, every: int = 50):
        self.total, self.what, self.every = total, what, max(1, every)
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        if done != self.total and (not self.tty and done % self.every):
            return
        msg = f"{self.what}: {done}/{self.total} ({time.monotonic() - self.start:.0f}s)"
        sys.stderr.write(("\r" + msg) if self.tty else (msg + "\n"))
        if self.tty and done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
