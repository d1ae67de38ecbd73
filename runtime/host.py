"""Facts about this machine and this installation, read in one place: the CPU
(/proc/cpuinfo), peak memory (VmHWM), package versions, the time, and the one
disclaimer every output that a person reads carries.

Standard library only: the light runtime, the trainer and the benchmarks all use it.
"""
from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

DISCLAIMER = "Research and education only: not a diagnosis."
PACKAGE = "breast-cancer-edge"

# flag name in /proc/cpuinfo -> the name outputs use
_X86_FLAGS = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
              "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni", "avx512_bf16": "avx512_bf16",
              "amx_int8": "amx_int8", "amx_bf16": "amx_bf16"}
_ARM_FLAGS = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve"}


# --------------------------------------------------------------------------- versions

def package_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_version() -> str:
    """This project's installed version ('0+unknown' for a source checkout run uninstalled)."""
    return package_version(PACKAGE) or "0+unknown"


def tool_record() -> dict[str, str]:
    """What run.json, manifests and site profiles record as the tool that wrote them."""
    return {"name": PACKAGE, "version": tool_version()}


def utc_now() -> str:
    """The time now, UTC, to the second, ISO 8601 (what every record's `created` holds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- the CPU

def read_cpuinfo() -> str:
    """/proc/cpuinfo, or '' where there is none (Windows, macOS)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (or of `cpuinfo`) as lower-case keys."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_flag_set(cpuinfo: str | None = None) -> set[str]:
    """The CPU's flags as /proc/cpuinfo names them (x86 `flags`, ARM `features`)."""
    fields = cpu_fields(cpuinfo)
    return set((fields.get("flags") or fields.get("features") or "").split())


def cpu_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """The instruction-set extensions that matter here, each True/False."""
    present = cpu_flag_set(cpuinfo)
    flags = {name: flag in present for flag, name in {**_X86_FLAGS, **_ARM_FLAGS}.items()}
    flags["avx512"] = flags.get("avx512f", False)
    flags["vnni"] = flags.get("avx512_vnni", False) or flags.get("avx_vnni", False)
    flags["amx"] = flags.get("amx_int8", False)
    # any 8-bit integer dot-product instruction (what makes INT8 fast)
    flags["int8_dot_product"] = flags["vnni"] or flags["amx"] or flags.get("dotprod", False)
    return flags


def cpu_model(cpuinfo: str | None = None) -> str:
    """e.g. 'Intel(R) Xeon(R) Processor (cpu family 6, model 167, stepping 1)'."""
    fields = cpu_fields(cpuinfo)
    name = fields.get("model name") or fields.get("hardware") or platform.processor() or platform.machine()
    details = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return f"{name} ({', '.join(details)})" if details else name


# --------------------------------------------------------------------------- memory

def peak_rss_mib(pid: int | str = "self") -> float | None:
    """Peak resident memory of a process in MiB: VmHWM from /proc/PID/status on Linux,
    the high-water mark of that process's own address space. Elsewhere, for this
    process only, ru_maxrss (on Linux it is inherited across fork/exec, so a probe
    started by a big parent would report the parent's: VmHWM first). None: unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0          # "VmHWM:  123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    if pid != "self":
        return None
    try:
        import resource                                       # not on Windows
    except ImportError:
        return None
    scale = 1.0 if sys.platform == "darwin" else 1024.0       # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / (1024.0 * 1024.0)


def reset_peak_rss() -> None:
    """Start this process's peak-memory count afresh (Linux: "5" to clear_refs resets
    VmHWM), so a process that did other work first measures only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
