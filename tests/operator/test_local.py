"""The local actuator: real worker processes (`gorgon worker --engine echo`), real Redis."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import pytest
import redis.asyncio as aioredis

from gorgon.core.protocol import RequestPayload, WireSampling
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.queue import backlog, enqueue
from gorgon.core.redis.registry import live_workers
from gorgon.core.redis.requests import read_result
from gorgon_operator.local import LocalWorkers, run_local_autoscaler
from gorgon_operator.policy import ScalingPolicy

pytestmark = pytest.mark.processes

MODEL = "echo"
MAX_TOKENS = 40

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    workers = LocalWorkers([sys.executable, "-c", IGNORES_SIGTERM], kill_after_s=1.0)
    await workers.scale_to(1)
    (process,) = workers.active
    await asyncio.sleep(0.5)  # let it install its handler
    await workers.scale_to(0)
    assert workers.active == [] and len(workers.stopping) == 1
    await asyncio.sleep(0.3)
    workers.reap()
    assert process.returncode is None  # still draining (ignoring us)
    await asyncio.sleep(1.0)
    workers.reap()
    await asyncio.wait_for(process.wait(), 5)
    assert process.returncode == -9


async def test_stop_all_terminates_gracefully() -> None:
    workers = LocalWorkers([sys.executable, "-c", "import time; time.sleep(60)"])
    await workers.scale_to(2)
    processes = list(workers.active)
    await workers.stop_all()
    assert [process.returncode for process in processes] == [-15, -15]


def request(index: int) -> RequestPayload:
    return RequestPayload(
        request_id=f"r{index}-{uuid.uuid4().hex[:8]}",
        model=MODEL,
        sampling=WireSampling(max_tokens=MAX_TOKENS),
        deadline=time.time() + 300,
        stream=False,
        reply_to="gorgon-test:replies:nobody-listens",  # results are read from their result keys
        prompt=f"request number {index}",
    )


async def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_backlog_spawns_workers_drain_scales_back_and_no_request_is_lost(
    redis_url: str, redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "GORGON_REDIS_NAMESPACE": redis_names.namespace}
    command = [
        sys.executable, "-m", "gorgon.cli", "worker", "--engine", "echo", "--http-port", "0",
        "--max-batch-size", "2", "--echo-step-delay", "0.05",
    ]  # fmt: skip
    policy = ScalingPolicy(
        target_backlog_per_replica=2,
        max_replicas=3,
        scale_to_zero_after_s=2.0,
        scale_down_window_s=1.5,
    )
    stop = asyncio.Event()
    scaler = asyncio.create_task(
        run_local_autoscaler(
            command,
            redis_url,
            MODEL,
            names=redis_names,
            policy=policy,
            poll_interval_s=0.25,
            env=env,
            stop=stop,
        )
    )
    registered: list[int] = []

    async def watch() -> None:
        while True:
            registered.append(len(await live_workers(redis_async, redis_names, MODEL)))
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.sleep(1.0)
        assert max(registered) == 0  # idle: no worker runs

        sent = [request(index) for index in range(12)]
        for payload in sent:
            assert await enqueue(redis_async, redis_names, payload, max_backlog=0)

        async def all_finished(payloads: list[RequestPayload]) -> bool:
            results = [await read_result(redis_async, redis_names, p.request_id) for p in payloads]
            return all(result is not None for result in results)

        await wait_for(lambda: all_finished(sent), 120, "the first wave")
        assert max(registered) >= 2  # the backlog spawned workers

        # A second wave trickles in while the pool scales down: workers stop (SIGTERM, drain) meanwhile.
        for index in range(12, 18):
            payload = request(index)
            sent.append(payload)
            assert await enqueue(redis_async, redis_names, payload, max_backlog=0)
            await asyncio.sleep(0.4)
        await wait_for(lambda: all_finished(sent), 120, "the second wave")

        for payload in sent:
            result = await read_result(redis_async, redis_names, payload.request_id)
            assert result is not None and result.final and result.error is None
            assert result.completion_tokens == MAX_TOKENS

        async def scaled_to_zero() -> bool:
            workers = await live_workers(redis_async, redis_names, MODEL)
            return not workers and await backlog(redis_async, redis_names, MODEL) == 0

        await wait_for(scaled_to_zero, 60, "scale to zero")
    finally:
        watcher.cancel()
        stop.set()
        await asyncio.wait_for(scaler, 60)
