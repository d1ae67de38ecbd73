"""Settings of the demo app (no Gradio import here, so the CLI can check them first)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from runtime.engines import BACKENDS
from runtime.images import DEFAULT_MAX_PIXELS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_FILE_SIZE = "20MB"
DEFAULT_CONCURRENCY = 2          # a clinic PC has about 2 cores
DEFAULT_QUEUE_SIZE = 64          # requests waiting beyond this are refused ("queue full")
DEFAULT_CACHE_SECONDS = 600      # result images older than this are deleted from the private cache
MAX_EXAMPLES = 48

_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'20MB' / '512kb' / '1.5 GB' / 1000 -> bytes (binary units: 1 MB = 1024**2 bytes)."""
    if isinstance(text, bool):
        raise ValueError(f"not a file size: {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ValueError(f"not a file size: {text!r} (expected e.g. 20MB, 512KB or a number of bytes)")
        number, unit = match.groups()
        unit = unit.upper()
        if unit in ("K", "M", "G"):
            unit += "B"
        value = int(float(number) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"file size must be at least 1 byte, got {text!r}")
    return value


ModelPaths = Union[str, Path, Sequence[Union[str, Path]]]


@dataclass
class DemoConfig:
    """Everything `bcd demo` can set. Defaults are the safe ones: loopback only, no
    share link, 20 MB uploads, two requests at a time."""

    # export directory (or manifest.json / .onnx) from `bcd export`, or a list of them: the
    # page then offers every variant of every model (e.g. the reference model and its slim
    # version side by side), each with its own threshold and parity figures
    model: ModelPaths
    host: str = DEFAULT_HOST                # 0.0.0.0 makes the page reachable from the network (no login!)
    port: int = DEFAULT_PORT                # 0: the first free port from 7860 on
    examples: str | Path | None = None      # folder of example images offered on the page
    share: bool = False                     # a public gradio.live link (needs internet); off by default
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE
    threads: int | None = None              # inference threads per model (default: physical cores)
    backend: str = "auto"                   # inference engine: auto | onnxruntime | openvino | litert
    variant: str | None = None              # variant selected first (default: the runtime's default of the
                                            # first model); with several models "MODEL · VARIANT" or a variant
                                            # name of the first model
    concurrency: int = DEFAULT_CONCURRENCY  # requests processed at the same time
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS    # decompression-bomb guard for uploads
    cache_seconds: int = DEFAULT_CACHE_SECONDS
    temp_dir: str | Path | None = None      # Gradio's upload/result cache (default: a private temp dir removed at exit)
    quiet: bool = False
    site: str | Path | None = None          # site profile from `bcd calibrate`: its model file's variant uses the
                                            # site's threshold (and recalibration), and the page names it

    def __post_init__(self) -> None:
        if isinstance(self.model, (str, os.PathLike)):
            self.model = Path(self.model)
        else:
            paths = [Path(p) for p in self.model]
            if not paths:
                raise ValueError("model: at least one export directory is needed")
            self.model = paths[0] if len(paths) == 1 else paths
        if self.examples is not None:
            self.examples = Path(self.examples)
        if self.site is not None:
            self.site = Path(self.site)
        if self.temp_dir is not None:
            self.temp_dir = Path(self.temp_dir)
        for name in ("concurrency", "queue_size", "max_pixels", "cache_seconds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")
        self.max_file_size_bytes  # validates the size

    @property
    def models(self) -> list[Path]:
        """The model paths, in the order given (one or more)."""
        return [self.model] if isinstance(self.model, Path) else list(self.model)

    @property
    def max_file_size_bytes(self) -> int:
        return parse_size(self.max_file_size)

    @property
    def loopback_only(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")
