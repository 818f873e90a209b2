"""Enqueueing through the batching enqueuer against a real Redis: requests of one loop iteration share a
pipeline, each keeps its own answer (entry id or backlog refusal), and a Redis failure reaches every caller."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gorgon.api.enqueuer import BatchingEnqueuer
from gorgon.core.protocol import RequestPayload, WireSampling
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.queue import backlog, ensure_group, read_entries


def payload(request_id: str) -> RequestPayload:
    return RequestPayload(
        request_id, "m", WireSampling(max_tokens=3), deadline=time.time() + 30, stream=False, reply_to="x"
    )


async def test_concurrent_requests_are_enqueued_in_order_each_with_its_own_answer(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    enqueuer = BatchingEnqueuer(redis_async, redis_names, max_backlog=3)
    answers = await asyncio.gather(*(enqueuer.enqueue(payload(f"r{index}")) for index in range(5)))
    assert [answer is not None for answer in answers] == [True, True, True, False, False]
    await ensure_group(redis_async, redis_names, "m")
    entries = await read_entries(redis_async, redis_names, "m", "c1", 10, None, own=False)
    assert [(entry_id, item.request_id) for entry_id, item in entries if item] == [
        (answers[0], "r0"),
        (answers[1], "r1"),
        (answers[2], "r2"),
    ]


async def test_requests_of_one_loop_iteration_share_one_connection(
    redis_url: str, redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    """Twenty commands sent one by one at the same time would take twenty pooled connections; one pipeline
    takes one."""
    client = aioredis.Redis.from_url(redis_url, client_name=f"enqueuer-{redis_names.namespace}")
    enqueuer = BatchingEnqueuer(client, redis_names, max_backlog=0)
    await asyncio.gather(*(enqueuer.enqueue(payload(f"r{index}")) for index in range(20)))
    connections = [
        entry
        for entry in await redis_async.client_list()
        if entry["name"] == f"enqueuer-{redis_names.namespace}"
    ]
    await client.aclose()
    assert await backlog(redis_async, redis_names, "m") == 20
    assert len(connections) == 1


async def test_a_redis_failure_reaches_every_waiting_caller(redis_names: RedisNames) -> None:
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    enqueuer = BatchingEnqueuer(unreachable, redis_names, max_backlog=0)
    results = await asyncio.gather(
        *(enqueuer.enqueue(payload(f"r{index}")) for index in range(3)), return_exceptions=True
    )
    await unreachable.aclose()
    assert all(isinstance(result, (RedisError, OSError)) for result in results)
    with pytest.raises((RedisError, OSError)):
        await enqueuer.enqueue(payload("again"))
