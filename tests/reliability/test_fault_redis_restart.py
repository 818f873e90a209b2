"""Redis restarted under load: /ready answers 503 while it is down, the API and the workers recover without a
restart of their own, and the requests in flight at the outage complete or fail cleanly (none hangs)."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from reliability_harness import (
    FAST_TAKEOVER,
    RestartableRedis,
    platform_on,
    problems,
    stream_many,
    wait_for,
    wait_for_workers,
)

pytestmark = pytest.mark.processes

log = logging.getLogger(__name__)

REQUESTS = 10
MAX_TOKENS = 150
STEP_DELAY_S = 0.02
REQUEST_TIMEOUT_S = 20
OUTAGE_S = 1.5


def ready_status(api: str) -> int:
    try:
        return httpx.get(f"{api}/ready", timeout=5).status_code
    except httpx.HTTPError:
        return -1


def restart_redis_under_load(server: RestartableRedis, api: str) -> list[int]:
    """Stop Redis, record /ready during the outage, start it again on the same port."""
    time.sleep(0.8)
    server.stop()
    statuses = []
    outage_ends = time.monotonic() + OUTAGE_S
    while time.monotonic() < outage_ends:
        statuses.append(ready_status(api))
        time.sleep(0.2)
    server.start()
    return statuses


async def load_with_outage(server: RestartableRedis, api: str) -> tuple[list, list[int]]:
    load = asyncio.create_task(stream_many(api, REQUESTS, MAX_TOKENS, REQUEST_TIMEOUT_S + 10))
    statuses = await asyncio.to_thread(restart_redis_under_load, server, api)
    return await load, statuses


def test_redis_restart_under_load_is_survived_without_restarting_anything(
    own_redis: RestartableRedis,
) -> None:
    with platform_on(own_redis.url, GORGON_API_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S)) as services:
        workers = [services.start_worker("echo", STEP_DELAY_S, **FAST_TAKEOVER) for _ in range(2)]
        api = services.start_api()
        wait_for_workers(own_redis.url, services.namespace, 2)

        in_flight, statuses = asyncio.run(load_with_outage(own_redis, api))

        log.info(
            "Redis down %.1f s under %d streams: /ready %s; %d completed, failed with: %s",
            OUTAGE_S,
            REQUESTS,
            sorted(set(statuses)),
            sum(o.completed for o in in_flight),
            sorted({o.error for o in in_flight if not o.completed}),
        )
        assert statuses and all(status == 503 for status in statuses), statuses
        assert problems(in_flight) == []
        cut = [o.error for o in in_flight if o.error and o.error.startswith("transport")]
        assert cut == [], (
            "the API stayed up: a failed stream must end with an error event, not a cut connection"
        )
        assert all(worker.poll() is None for worker in workers), "a worker exited instead of reconnecting"
        assert wait_for(lambda: ready_status(api) == 200, 30), "the API did not become ready again"
        after = asyncio.run(stream_many(api, 4, 20, 30))
        assert problems(after) == []
        assert all(outcome.completed for outcome in after)
