"""The GPU check's serving phase, piece by piece: the platform it starts, how it counts worker restarts (the
supervisor's own log lines, and worker ids that changed), and what it reads from the load test's files."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from gorgon.bench.gpu_check_serve import (
    NAMESPACE,
    OUT_OF_MEMORY,
    live_worker_ids,
    logged_worker_restarts,
    mean_prompt_tokens,
    up_command,
    up_environment,
)
from gorgon.core.logs import JsonFormatter
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.registry import register_worker
from gorgon.local.processes import spawn
from gorgon.local.up import LocalPlatform
from gorgon_loadtest.report import CSV_COLUMNS


def test_the_platform_runs_one_worker_on_a_redis_and_namespace_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    environment = up_environment({"GORGON_ENGINE_DEVICE": "cuda"})
    assert "REDIS_URL" not in environment and environment["GORGON_ENGINE_DEVICE"] == "cuda"
    assert environment["GORGON_REDIS_NAMESPACE"] == NAMESPACE and environment["GORGON_LOG_FORMAT"] == "json"
    command = " ".join(up_command(["--model", "m", "--heads", "h"], ready_timeout_s=600))
    assert " -m gorgon.cli up --port " in command
    assert command.endswith("--workers 1 --max-workers 1 --ready-timeout 600 --model m --heads h")


@pytest.mark.processes
def test_the_supervisors_restarts_are_counted_from_its_json_log() -> None:
    """A real LocalPlatform supervising a worker that exits at once: every restart it logs is counted."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    supervisor_log = logging.getLogger("gorgon.local.up")
    supervisor_log.addHandler(handler)
    level = supervisor_log.level
    supervisor_log.setLevel(logging.INFO)
    platform = LocalPlatform(0, 1, [sys.executable, "-c", "pass"], dict(os.environ))
    platform.worker_processes = [spawn(platform.worker_cmd, platform.env)]
    stopping: list[bool] = []
    supervising = threading.Thread(target=platform.supervise, args=(stopping,))
    supervising.start()
    deadline = time.monotonic() + 30
    try:
        while stream.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stopping.append(True)
        supervising.join()
        platform.stop()
        supervisor_log.removeHandler(handler)
        supervisor_log.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert logged_worker_restarts("\n".join(["loading: 100%|####|", *lines])) == len(lines)


def test_only_the_supervisors_exit_lines_count() -> None:
    lines = [
        '{"level": "WARNING", "logger": "gorgon.worker.main", "message": "request exited with an error"}',
        '{"level": "INFO", "logger": "gorgon.local.up", "message": "started the API (pid 7) and 1 worker(s)"}',
        "worker pid 12 exited with 1; starting a new one",
        '{"broken": ',
    ]
    assert logged_worker_restarts("\n".join(lines)) == 0


def test_torchs_out_of_memory_errors_are_recognised() -> None:
    assert OUT_OF_MEMORY.search("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not OUT_OF_MEMORY.search('{"message": "KV budget: 10240 tokens of memory"}')


def test_prompt_tokens_are_averaged_over_the_requests_that_report_them(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for tokens in (1500, 1502, None):
            writer.writerow(dict.fromkeys(CSV_COLUMNS, "") | {"prompt_tokens": tokens})
    assert mean_prompt_tokens(path) == 1501


async def test_live_workers_are_read_by_id(
    redis_url: str, redis_namespace: str, redis_async: aioredis.Redis, redis_sync: redis.Redis
) -> None:
    names = RedisNames(redis_namespace)
    assert live_worker_ids(redis_url, redis_namespace) == []
    for worker_id in ("gpu-host-812-a1b2c3", "gpu-host-907-d4e5f6"):
        await register_worker(redis_async, names, "vicuna-7b-v1.3", worker_id, {"worker_id": worker_id}, 30)
    await register_worker(redis_async, names, "vicuna-7b-v1.3", "gone", {"worker_id": "gone"}, 0.05)
    await asyncio.sleep(0.1)
    assert live_worker_ids(redis_url, redis_namespace) == ["gpu-host-812-a1b2c3", "gpu-host-907-d4e5f6"]
