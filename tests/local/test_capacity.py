from __future__ import annotations

import os

import pytest

from gorgon.local.capacity import (
    CORES_PER_MODEL_WORKER,
    RESERVED_CORES,
    WorkerBudget,
    cgroup_cpu_quota,
    memory_fit,
    model_worker_budget,
    resident_memory,
    usable_cores,
)

POLICY_MAX = 4  # the scaling policy's default max_replicas with one always-running worker


@pytest.mark.parametrize(
    ("cores", "budget"),
    [
        (1, WorkerBudget(max_workers=1, threads=1)),
        (2, WorkerBudget(max_workers=1, threads=1)),  # one worker, one thread: the API and Redis keep a core
        (4, WorkerBudget(max_workers=1, threads=3)),
        (5, WorkerBudget(max_workers=1, threads=4)),
        (9, WorkerBudget(max_workers=2, threads=4)),
        (16, WorkerBudget(max_workers=3, threads=5)),
        (64, WorkerBudget(max_workers=POLICY_MAX, threads=15)),  # the scaling policy's own cap
    ],
)
def test_model_workers_get_cores_of_their_own(cores: int, budget: WorkerBudget) -> None:
    assert model_worker_budget(cores, POLICY_MAX) == budget
    assert budget.max_workers * budget.threads <= max(1, cores - RESERVED_CORES)


def test_no_worker_count_splits_the_cores_below_the_per_worker_share() -> None:
    for cores in range(1, 65):
        budget = model_worker_budget(cores, default_max=100)
        if budget.max_workers > 1:
            assert budget.threads >= CORES_PER_MODEL_WORKER


def test_the_users_max_workers_overrides_the_cap_and_the_threads_follow() -> None:
    assert model_worker_budget(2, POLICY_MAX, requested_max=2) == WorkerBudget(max_workers=2, threads=1)
    assert model_worker_budget(9, POLICY_MAX, requested_max=4) == WorkerBudget(max_workers=4, threads=2)


def test_always_running_workers_beyond_the_cap_share_the_threads() -> None:
    budget = model_worker_budget(9, POLICY_MAX, always_running=4)
    assert budget == WorkerBudget(max_workers=2, threads=2)


def test_memory_holds_the_running_workers_and_what_the_headroom_leaves() -> None:
    gib = 2**30
    assert memory_fit(available_bytes=10 * gib, worker_bytes=2 * gib, running=1) == 1 + 4  # 80 % of 10 GiB
    assert memory_fit(available_bytes=1 * gib, worker_bytes=2 * gib, running=1) == 1
    assert memory_fit(available_bytes=0, worker_bytes=0, running=2) == 2


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("", None)],
)
def test_a_cgroup_quota_counts_as_whole_cores(cpu_max: str, cores: int | None) -> None:
    assert cgroup_cpu_quota(cpu_max) == cores


def test_this_machine_is_read() -> None:
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
    resident = resident_memory(os.getpid())
    assert resident is None or resident > 10 * 2**20
