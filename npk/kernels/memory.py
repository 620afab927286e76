"""How much memory a new allocation may take: the smallest of what the system has available, what this
process's address-space limit leaves, and what its cgroup's limit leaves.

    available_memory() = min(MemAvailable, RLIMIT_AS - VmSize, cgroup limit - (usage - inactive file cache))

A batch system (SLURM, a container, `prlimit --as`, `ulimit -v`) sets the last two; MemAvailable alone
would let a Gram pass the preflight and die in the allocator.
"""
from __future__ import annotations

import os
from pathlib import Path

NO_LIMIT = 2**63


def available_memory() -> int:
    """Bytes a new allocation may take now: the smallest of the system's available memory (Linux
    MemAvailable; else psutil; else free pages), this process's RLIMIT_AS headroom (ulimit -v, prlimit --as)
    and its cgroup's memory limit less its usage (v2 memory.max, v1 memory.limit_in_bytes: SLURM, containers)."""
    return memory_limit()[0]


def memory_limit() -> tuple[int, str]:
    """(bytes, what sets them) of `available_memory`."""
    return min((_system_available(), "available"), (rlimit_headroom(), "left under this process's RLIMIT_AS"),
               (cgroup_headroom(), "left under its cgroup's memory limit"))


def _system_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def rlimit_headroom() -> int:
    """The soft RLIMIT_AS less this process's address space now (VmSize); NO_LIMIT when unlimited."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):
        return NO_LIMIT
    if soft == resource.RLIM_INFINITY or soft < 0:
        return NO_LIMIT
    return max(0, soft - _status_kib("VmSize") * 1024)


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
    except OSError:
        return 0


def cgroup_headroom(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int:
    """The memory limit of this process's cgroup (v2, else v1) less its usage without reclaimable page cache
    (inactive files); NO_LIMIT when there is none or it cannot be read."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return NO_LIMIT
    candidates = []   # (hierarchy, the process's folder in it, limit file, usage file, inactive-file key)
    for line in lines:
        _, controllers, where = line.split(":", 2)
        if controllers == "":
            candidates.append((Path(root), where, "memory.max", "memory.current", "inactive_file"))
        elif "memory" in controllers.split(","):
            candidates.append((Path(root) / "memory", where, "memory.limit_in_bytes", "memory.usage_in_bytes",
                               "total_inactive_file"))
    for hierarchy, where, limit_file, usage_file, inactive in candidates:
        for place in (hierarchy / where.lstrip("/"), hierarchy):   # a container sees its own cgroup as the root
            try:
                limit = (place / limit_file).read_text().strip()
                usage = int((place / usage_file).read_text())
                stat = dict(line.split() for line in (place / "memory.stat").read_text().splitlines())
            except (OSError, ValueError):
                continue
            if limit == "max" or int(limit) >= NO_LIMIT // 2**10:
                return NO_LIMIT
            return max(0, int(limit) - usage + int(stat.get(inactive, 0)))
    return NO_LIMIT
