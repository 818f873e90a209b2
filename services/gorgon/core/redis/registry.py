"""The worker registry: each live worker's registration (its model info) expires unless its heartbeat renews
it, and an index set lists the registrations so finding them never scans the keyspace."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis as AsyncRedis

from gorgon.core.redis.names import RedisNames, as_text
from gorgon.core.redis.scripts import lua_script

_PRUNE_INDEX = lua_script("prune_index.lua")
_REGISTER = lua_script("register.lua")


async def register_worker(
    redis: AsyncRedis, names: RedisNames, model: str, worker_id: str, info: dict[str, Any], ttl_s: float
) -> None:
    """Announce (or keep announcing) a live worker and its model info; it vanishes `ttl_s` after the last call."""
    key = names.worker_key(model, worker_id)
    await _REGISTER.run(redis, [key, names.worker_index()], [orjson.dumps(info), int(ttl_s * 1000)])


async def unregister_worker(redis: AsyncRedis, names: RedisNames, model: str, worker_id: str) -> None:
    key = names.worker_key(model, worker_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(key)
        pipe.srem(names.worker_index(), key)
        await pipe.execute()


async def live_workers(
    redis: AsyncRedis, names: RedisNames, model: str | None = None
) -> list[dict[str, Any]]:
    """Registration records of the live workers (of `model`, or all): two round trips whatever the size of the
    keyspace. An empty index falls back to a SCAN (workers of a release that did not keep the index yet)."""
    keys = sorted(as_text(key) for key in await redis.smembers(names.worker_index()))
    if not keys:
        keys = [as_text(key) async for key in redis.scan_iter(match=names.worker_pattern(model), count=500)]
    prefix = names.worker_prefix(model)
    keys = [key for key in keys if key.startswith(prefix)]
    if not keys:
        return []
    values = await redis.mget(keys)
    expired = [key for key, value in zip(keys, values, strict=True) if value is None]
    if expired:
        await _PRUNE_INDEX.run(redis, [names.worker_index(), *expired], [])
    return [orjson.loads(value) for value in values if value]
