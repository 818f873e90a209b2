from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.registry import live_workers, register_worker, unregister_worker


async def test_worker_registrations_vanish_after_their_ttl(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    info = {"model": "m", "context_length": 100, "worker_id": "w1"}
    await register_worker(redis_async, redis_names, "m", "w1", info, ttl_s=0.2)
    assert await live_workers(redis_async, redis_names) == [info]
    await asyncio.sleep(0.3)
    assert await live_workers(redis_async, redis_names) == []


async def test_live_workers_are_found_through_the_index_which_forgets_expired_ones(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    infos = {worker: {"model": model, "worker_id": worker} for worker, model in (("w1", "m"), ("w2", "n"))}
    await register_worker(redis_async, redis_names, "m", "w1", infos["w1"], ttl_s=0.2)
    await register_worker(redis_async, redis_names, "n", "w2", infos["w2"], ttl_s=30)
    await register_worker(redis_async, redis_names, "n", "w3", {"model": "n", "worker_id": "w3"}, ttl_s=30)
    await unregister_worker(redis_async, redis_names, "n", "w3")
    assert await live_workers(redis_async, redis_names, "m") == [infos["w1"]]
    assert await live_workers(redis_async, redis_names, "n") == [infos["w2"]]
    await asyncio.sleep(0.3)
    assert await live_workers(redis_async, redis_names) == [infos["w2"]]
    index = await redis_async.smembers(redis_names.worker_index())
    assert index == {redis_names.worker_key("n", "w2").encode()}
