"""Redis near and then past its memory limit (maxmemory, no eviction, as the chart runs it): new requests get a 503
with Retry-After before Redis refuses writes, the streams in flight still finish exactly (a worker's writes go
through past the limit), no worker restarts, and once memory is freed new requests are served again."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import pytest
import redis
from reliability_harness import platform_on, problems, stream_many, wait_for

from gorgon.core.redis.memory import MEMORY_CHECK_S
from gorgon.core.redis.names import RedisNames
from gorgon.local.processes import LocalServices
from redis_memory_testing import clear_junk, fill_to, push_past_limit, redis_with_memory_limit, refuses_writes

pytestmark = pytest.mark.processes

log = logging.getLogger(__name__)

HEADROOM_BYTES = 8_000_000
LIMIT_FRACTION = 0.8
STREAMS = 4
MAX_TOKENS = 200
STEP_DELAY_S = 0.02


def refused_requests(api: str) -> list[httpx.Response]:
    """One streaming and one whole request sent while Redis is nearly full."""
    body = {"prompt": "abc", "max_tokens": 5, "use_speculative": False}
    return [
        httpx.post(f"{api}/v1/completions", json={**body, "stream": stream}, timeout=10)
        for stream in (True, False)
    ]


def backlog(services: LocalServices, client: redis.Redis) -> int:
    return int(client.xlen(RedisNames(services.namespace).request_stream("echo")))


def test_a_nearly_full_redis_refuses_new_requests_and_lets_the_workers_finish() -> None:
    with (
        redis_with_memory_limit(HEADROOM_BYTES) as url,
        platform_on(url, GORGON_API_REDIS_MEMORY_LIMIT=str(LIMIT_FRACTION)) as services,
    ):
        client = redis.Redis.from_url(url)
        worker = services.start_worker("echo", STEP_DELAY_S, read_block_ms="20")
        api = services.start_api()
        streams: list = []
        load = threading.Thread(
            target=lambda: streams.extend(asyncio.run(stream_many(api, STREAMS, MAX_TOKENS, 60)))
        )
        load.start()
        assert wait_for(lambda: backlog(services, client) == STREAMS, 10), "the streams did not start"

        fill_to(client, LIMIT_FRACTION + 0.05)
        time.sleep(2 * MEMORY_CHECK_S + 0.2)
        refused = refused_requests(api)
        assert not refuses_writes(client), "Redis itself still takes writes"
        push_past_limit(client)
        assert refuses_writes(client)
        still_running = backlog(services, client)
        load.join(60)

        log.info(
            "Redis memory near (%.0f %%) then past its limit under %d streams: %d completed, refused %s",
            100 * LIMIT_FRACTION,
            STREAMS,
            sum(o.completed for o in streams),
            [(r.status_code, r.json()["error"]["code"]) for r in refused],
        )
        assert [(r.status_code, r.json()["error"]["code"]) for r in refused] == [
            (503, "queue_memory_full")
        ] * 2
        assert all(r.headers["retry-after"] == "1" for r in refused)
        assert still_running > 0, "the streams ended before Redis was past its limit"
        assert problems(streams) == [] and all(o.completed for o in streams), [o.error for o in streams]
        assert backlog(services, client) == 0, "finished entries are acknowledged and deleted past the limit"
        assert worker.poll() is None, "the worker exited"

        clear_junk(client)

        def served_again() -> bool:
            reply = httpx.post(f"{api}/v1/completions", json={"prompt": "abc", "max_tokens": 3}, timeout=30)
            return reply.status_code == 200 and reply.json()["choices"][0]["text"] == "def"

        assert wait_for(served_again, 5, interval_s=0.5), (
            "new requests were still refused once memory was freed"
        )
        client.close()
