"""One line saying where a benchmark ran: ratios from a shared machine need their context."""

from __future__ import annotations

import os
import platform
import sys


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor() or "?")
    load = " ".join(_lines("/proc/loadavg")[:1]).split()[:3]
    return (f"machine: {cpu}, {os.cpu_count()} CPUs, load {' '.join(load) or '?'}; "
            f"{platform.system()} {platform.release()}; Python {sys.version.split()[0]}")


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []
