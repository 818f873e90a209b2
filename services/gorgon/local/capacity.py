"""How many model workers `gorgon up` runs on this machine, and how many torch threads each of them gets.

A model worker's step is a few large matrix products over its whole batch: on a CPU they use every core they are
given, and the batch already shares one pass over the weights between its requests. A second worker on the same
cores does not add speed, it halves each worker's cores and reads the weights twice; so workers are added only
where each gets cores of its own, and a worker's threads are the cores left to it, never more (torch's default,
every core, makes a worker's threads wait for the API and Redis). The echo engine does no such arithmetic (it
sleeps through a step) and is not capped.

Memory caps too: once the first worker has loaded its model, its resident size says how many more the available
memory holds.

`model_worker_budget` and `memory_fit` are the rules (pure); `usable_cores`, `available_memory` and
`resident_memory` read this machine (Linux: affinity, cgroup v2 CPU quota, /proc; elsewhere, what `os` knows).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

RESERVED_CORES = 1
"""Cores left to the API, Redis and a local load generator: a worker thread placed there waits for them."""
CORES_PER_MODEL_WORKER = 4
"""A further worker only where each gets this many cores: a step keeps gaining from threads up to a few cores,
while every worker costs another pass over the weights per step and another copy of the model."""
MEMORY_HEADROOM = 0.8
"""Share of the available memory further workers may fill (a worker's KV cache grows with its batch)."""
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
MEMINFO = Path("/proc/meminfo")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class WorkerBudget:
    max_workers: int
    """Model workers in all, always-running ones included."""
    threads: int
    """torch intra-op threads of each (GORGON_ENGINE_THREADS)."""


def model_worker_budget(
    cores: int, default_max: int, requested_max: int | None = None, always_running: int = 1
) -> WorkerBudget:
    """Model workers on `cores` cores: `requested_max` when given (the user's word), else the scaling default
    `default_max` capped to one worker per CORES_PER_MODEL_WORKER cores (at least one); the cores the API and
    Redis leave are shared out as threads between the most workers that may run (`always_running` of them
    however many the cap allows)."""
    worker_cores = max(1, cores - RESERVED_CORES)
    fitting = max(1, worker_cores // CORES_PER_MODEL_WORKER)
    max_workers = requested_max or min(default_max, fitting)
    return WorkerBudget(max_workers, max(1, worker_cores // max(1, max_workers, always_running)))


def memory_fit(available_bytes: int, worker_bytes: int, running: int) -> int:
    """Model workers in all that memory holds: the `running` ones plus as many more of `worker_bytes` each as
    MEMORY_HEADROOM of `available_bytes` (what is free besides them) holds."""
    return running + int(available_bytes * MEMORY_HEADROOM) // max(1, worker_bytes)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, lowered to a cgroup v2 CPU quota (a container's
    `--cpus`) when one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(CGROUP_CPU_MAX.read_text() if CGROUP_CPU_MAX.exists() else "max")
    return max(1, min(cores, quota)) if quota else cores


def cgroup_cpu_quota(cpu_max: str) -> int | None:
    """Whole cores of a cgroup v2 `cpu.max` ("<quota> <period>", rounded up), or None for "max" (no quota)."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not quota.isdigit() or not period.isdigit():
        return None
    return math.ceil(int(quota) / int(period))


def available_memory() -> int | None:
    """Bytes the kernel can give new processes without swapping (MemAvailable); None where unknown."""
    if not MEMINFO.exists():
        return None
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def resident_memory(pid: int) -> int | None:
    """Resident bytes of process `pid`; None where unknown (the process is gone, or no /proc)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None
