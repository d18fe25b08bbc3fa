"""Memory of a running process, from /proc: what the kernel charges it, not what Python thinks it holds."""

from __future__ import annotations

from pathlib import Path

MIB = 1024 * 1024


def status_mib(pid: int, key: str) -> float:
    """A `Vm*` line of /proc/<pid>/status (VmRSS: resident now; VmHWM: the resident peak since start), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            kib = int(line.split()[1])
            return kib * 1024 / MIB
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    return status_mib(pid, "VmRSS")


def peak_rss_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")
