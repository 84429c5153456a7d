"""What every benchmark prints beside its numbers: the CPU, its cores and the load it ran under.

A number without its machine and load misleads (the same run differs 10x on a busy 2-core
machine), so each script in this folder prints `describe_machine()` first.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """e.g. "AMD EPYC 7B13, 2 cores, load average 0.31 0.52 0.60, Python 3.11.7"."""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, load average {load}, "
        f"Python {platform.python_version()}"
    )
