"""Per-API-key request counters in fixed windows, shared by all API replicas."""

from __future__ import annotations

from redis.asyncio import Redis as AsyncRedis

from gorgon.core.redis.names import RedisNames


async def count_request(redis: AsyncRedis, names: RedisNames, key_id: str, window_s: int, now: float) -> int:
    """Count one request against `key_id` in the current fixed window; returns the count so far."""
    window = int(now // window_s)
    key = names.rate_limit_key(key_id, window)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, window_s * 2)
        count, _ = await pipe.execute()
    return int(count)
