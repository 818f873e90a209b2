from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis

from gorgon.core.protocol import RequestPayload
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.core.redis.queue import (
    autoclaim_stale,
    backlog,
    enqueue,
    enqueue_many,
    ensure_group,
    heartbeat_entries,
    read_entries,
    undelivered,
)


async def test_backlog_counts_undelivered_and_pending_until_deleted(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    stream = redis_names.request_stream("m")
    assert await backlog(redis_async, redis_names, "m") == 0
    await redis_async.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    ids = [await redis_async.xadd(stream, {"n": str(i)}) for i in range(3)]
    await redis_async.xreadgroup(CONSUMER_GROUP, "c1", {stream: ">"}, count=1)
    assert await backlog(redis_async, redis_names, "m") == 3
    await redis_async.xack(stream, CONSUMER_GROUP, ids[0])
    await redis_async.xdel(stream, ids[0])
    assert await backlog(redis_async, redis_names, "m") == 2


async def test_undelivered_counts_what_no_consumer_has_read(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    stream = redis_names.request_stream("m")
    assert await undelivered(redis_async, redis_names, "m") == 0, "no stream, no group: none"
    await redis_async.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    ids = [await redis_async.xadd(stream, {"n": str(i)}) for i in range(3)]
    assert await undelivered(redis_async, redis_names, "m") == 3
    await redis_async.xreadgroup(CONSUMER_GROUP, "c1", {stream: ">"}, count=2)
    assert await undelivered(redis_async, redis_names, "m") == 1
    await redis_async.xack(stream, CONSUMER_GROUP, ids[0])
    await redis_async.xdel(stream, ids[0])
    assert await undelivered(redis_async, redis_names, "m") == 1


async def test_enqueue_refuses_past_the_backlog_limit(
    redis_async: aioredis.Redis, redis_names: RedisNames, make_payload: Callable[[str], RequestPayload]
) -> None:
    assert await enqueue(redis_async, redis_names, make_payload("r1"), max_backlog=2)
    assert await enqueue(redis_async, redis_names, make_payload("r2"), max_backlog=2)
    assert await enqueue(redis_async, redis_names, make_payload("r3"), max_backlog=2) is None
    assert await enqueue(redis_async, redis_names, make_payload("r3"), max_backlog=0), "0 means no limit"


async def test_enqueue_many_checks_each_request_against_the_backlog_in_order(
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
    make_payload: Callable[[str], RequestPayload],
) -> None:
    payloads = [make_payload("r1"), make_payload("r2"), make_payload("r3")]
    entry_ids = await enqueue_many(redis_async, redis_names, payloads, max_backlog=2)
    assert [entry_id is not None for entry_id in entry_ids] == [True, True, False]
    await ensure_group(redis_async, redis_names, "m")
    entries = await read_entries(redis_async, redis_names, "m", "c1", 10, None, own=False)
    assert [(entry_id, payload.request_id) for entry_id, payload in entries if payload] == [
        (entry_ids[0], "r1"),
        (entry_ids[1], "r2"),
    ]


async def test_stale_entries_are_taken_over_and_heartbeats_prevent_it(
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
    make_payload: Callable[[str], RequestPayload],
) -> None:
    await ensure_group(redis_async, redis_names, "m")
    for request_id in ("kept", "lost"):
        await enqueue(redis_async, redis_names, make_payload(request_id), 0)
    entries = await read_entries(redis_async, redis_names, "m", "alive", 2, None, own=False)
    assert [payload.request_id for _, payload in entries if payload] == ["kept", "lost"]
    await asyncio.sleep(0.15)
    await heartbeat_entries(redis_async, redis_names, "m", "alive", [entries[0][0]])
    taken = await autoclaim_stale(redis_async, redis_names, "m", "rescuer", lease_ms=100, count=10)
    assert [payload.request_id for _, payload in taken if payload] == ["lost"]
    own = await read_entries(redis_async, redis_names, "m", "rescuer", 10, None, own=True)
    assert [entry_id for entry_id, _ in own] == [entries[1][0]]
