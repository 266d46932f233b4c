"""How many CPU threads the models use: ``--threads N``, by default the physical cores this process may use.

PyTorch's default is every logical CPU; on machines with SMT (two hardware threads per core) the second
thread of a core shares its vector units and only adds contention to matrix multiplications. Fewer threads
than logical CPUs also leave room for the web server's threads, so the UI and API keep answering while a
job runs (the generation thread releases the GIL inside every PyTorch operation).

Called from ``launch.py``'s start-up (``webui.server.create_service``), never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask; ``taskset``/cgroup cpusets narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores(cpuinfo: str | None = None) -> int | None:
    """Distinct (physical id, core id) pairs in ``/proc/cpuinfo``; None when it does not say (Arm, macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    cores: set[tuple[str, str]] = set()
    package = core = None
    for line in [*cpuinfo.splitlines(), ""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():  # a blank line ends one logical CPU's block
            if core is not None:
                cores.add((package or "0", core))
            package = core = None
    return len(cores) or None


def default_threads(cpuinfo: str | None = None) -> int:
    """Physical cores, but never more than the logical CPUs this process may use."""
    usable = usable_cpus()
    physical = physical_cores(cpuinfo)
    return max(1, min(usable, physical) if physical else usable)


def set_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads to ``threads`` (None: :func:`default_threads`); returns the number."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    count = threads or default_threads()
    torch.set_num_threads(count)
    return count
