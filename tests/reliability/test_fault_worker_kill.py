"""Workers SIGKILLed mid-stream: every request completes with exactly the echo engine's text (no token lost,
duplicated or interleaved), none hangs past its deadline, and nothing is left in the queue."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import subprocess
import time

import pytest
import redis
from reliability_harness import (
    FAST_TAKEOVER,
    platform_on,
    problems,
    sized,
    stream_many,
    wait_for,
    wait_for_workers,
)

from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.local.processes import LocalServices

pytestmark = pytest.mark.processes

log = logging.getLogger(__name__)

REQUESTS = sized(ci=24, soak=200)
KILLS = sized(ci=3, soak=12)
MAX_TOKENS = sized(ci=60, soak=200)
STEP_DELAY_S = 0.02
VICTIM_WAIT_S = 20
REQUEST_TIMEOUT_S = sized(ci=60, soak=300)
WORKER_SETTINGS = {**FAST_TAKEOVER, "max_batch_size": "8", "max_deliveries": str(KILLS + 1)}
"""Small batches keep every worker busy; a request may meet every kill, so none is dead-lettered."""


def busiest_worker(services: LocalServices, workers: dict[str, subprocess.Popen[bytes]]) -> str | None:
    """The live worker holding the most pending entries (the kill that costs the most)."""
    client = redis.Redis.from_url(services.redis_url)
    try:
        stream = RedisNames(services.namespace).request_stream("echo")
        pending = client.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=1000)
    finally:
        client.close()
    held: dict[str, int] = {}
    for entry in pending:
        name = entry["consumer"].decode()
        if name in workers and workers[name].poll() is None:
            held[name] = held.get(name, 0) + 1
    return max(held, key=held.__getitem__) if held else None


def next_victim(services: LocalServices, workers: dict[str, subprocess.Popen[bytes]]) -> str | None:
    """The busiest worker, waiting (for replacements to start and take work) up to VICTIM_WAIT_S."""
    deadline = time.monotonic() + VICTIM_WAIT_S
    while (victim := busiest_worker(services, workers)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return victim


def kill_workers_during(services: LocalServices, workers: dict[str, subprocess.Popen[bytes]]) -> list[str]:
    """SIGKILL the busiest worker KILLS times, starting a replacement after each kill."""
    killed: list[str] = []
    rng = random.Random(9)
    for round_ in range(KILLS):
        time.sleep(0.3 + rng.random() * 0.4)
        victim = next_victim(services, workers)
        if victim is None:
            break
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        killed.append(victim)
        name = f"w-replacement-{round_}"
        workers[name] = services.start_worker("echo", STEP_DELAY_S, worker_id=name, **WORKER_SETTINGS)
    return killed


async def run_load_with_kills(
    services: LocalServices, api: str, workers: dict[str, subprocess.Popen[bytes]]
) -> tuple[list, list[str]]:
    load = asyncio.create_task(stream_many(api, REQUESTS, MAX_TOKENS, REQUEST_TIMEOUT_S + 10))
    await asyncio.sleep(0.5)
    killed = await asyncio.to_thread(kill_workers_during, services, workers)
    return await load, killed


def test_sigkilled_workers_lose_no_request_and_garble_no_stream(redis_url: str) -> None:
    with platform_on(redis_url, GORGON_API_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S)) as services:
        workers = {
            name: services.start_worker("echo", STEP_DELAY_S, worker_id=name, **WORKER_SETTINGS)
            for name in ("w-a", "w-b", "w-c")
        }
        api = services.start_api()
        wait_for_workers(services.redis_url, services.namespace, 3)

        outcomes, killed = asyncio.run(run_load_with_kills(services, api, workers))

        log.info(
            "%d streams, %d workers SIGKILLed (%s): %d completed, slowest %.1f s",
            REQUESTS,
            len(killed),
            ", ".join(killed),
            sum(o.completed for o in outcomes),
            max(o.elapsed_s for o in outcomes),
        )
        assert len(killed) >= 2, f"the load ended before {KILLS} kills landed (killed {killed})"
        assert problems(outcomes) == []
        assert all(outcome.completed for outcome in outcomes), [o.error for o in outcomes if not o.completed]
        names = RedisNames(services.namespace)
        client = redis.Redis.from_url(services.redis_url)
        assert wait_for(lambda: client.xlen(names.request_stream("echo")) == 0, 10), "entries left behind"
        assert client.xlen(names.dead_letter_stream("echo")) == 0
        client.close()
