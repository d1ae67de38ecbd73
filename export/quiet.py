"""Keep the converters' chatter (tf2onnx's per-node INFO lines, TensorFlow's "Assets
written to", ONNX Runtime's calibration print()s) out of `bcd export`'s progress output;
it stays available at DEBUG level."""
from __future__ import annotations

import contextlib
import io
import logging

log = logging.getLogger(__name__)

NOISY_LOGGERS = ("tf2onnx", "tensorflow", "absl")


@contextlib.contextmanager
def quiet(*logger_names: str, stdout: bool = False):
    """Raise the named loggers to WARNING (when not debugging) and optionally capture
    stdout, replaying it at DEBUG level afterwards."""
    names = logger_names or NOISY_LOGGERS
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    if not log.isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer) if stdout else contextlib.nullcontext():
            yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)
        for line in buffer.getvalue().splitlines():
            if line.strip():
                log.debug("%s", line)
