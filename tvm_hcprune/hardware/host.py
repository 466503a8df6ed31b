"""Facts about the machine this runs on: physical cores, cache sizes, clock.

Read from psutil and Linux's sysfs / procfs; every reader has a safe default.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import psutil

__all__ = ["host_cache_sizes", "host_freq_ghz", "host_physical_cores"]


def host_physical_cores() -> int:
    """Number of physical CPU cores of this machine (at least 1)."""
    n = psutil.cpu_count(logical=False)
    return int(n) if n else max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def host_cache_sizes() -> tuple[int, int]:
    """(L1d, L2) sizes in bytes of this machine, from sysfs; (32 KiB, 512 KiB) if unknown."""
    l1, l2 = 32 * 1024, 512 * 1024
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in base.glob("index*"):
            level = (idx / "level").read_text().strip()
            ctype = (idx / "type").read_text().strip()
            size = _parse_size((idx / "size").read_text().strip())
            if level == "1" and ctype in ("Data", "Unified"):
                l1 = size
            elif level == "2":
                l2 = size
    except OSError:
        pass
    return l1, l2


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)", text.upper())
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2)]


@functools.lru_cache(maxsize=1)
def host_freq_ghz() -> float:
    """Maximum clock of this machine in GHz (cpufreq if exposed, else /proc/cpuinfo)."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1e6
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                return float(line.split(":")[1]) / 1000.0
    except (OSError, ValueError, IndexError):
        pass
    return 2.5
