"""The per-request keys beside the stream: the cancel flag the API sets, the final result and the progress list
the worker stores."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis as AsyncRedis

from gorgon.core.protocol import Chunk
from gorgon.core.redis.names import RedisNames


async def request_cancel(redis: AsyncRedis, names: RedisNames, request_id: str, ttl_s: int) -> None:
    """Ask whichever worker holds `request_id` to drop it."""
    await redis.set(names.cancel_key(request_id), b"1", ex=max(1, ttl_s))


async def cancelled_requests(redis: AsyncRedis, names: RedisNames, request_ids: Sequence[str]) -> set[str]:
    """Which of `request_ids` have a cancel flag set."""
    if not request_ids:
        return set()
    flags = await redis.mget([names.cancel_key(request_id) for request_id in request_ids])
    return {request_id for request_id, flag in zip(request_ids, flags, strict=True) if flag}


async def read_result(redis: AsyncRedis, names: RedisNames, request_id: str) -> Chunk | None:
    """The stored final chunk of a finished request (whole text), if it is still there."""
    raw = await redis.get(names.result_key(request_id))
    return Chunk.decode(raw) if raw else None


async def read_progress(redis: AsyncRedis, names: RedisNames, request_id: str, start: int) -> list[Chunk]:
    """Chunks published for a streaming request from seq `start` on (to fill a gap in what pub/sub delivered)."""
    raws = await redis.lrange(names.progress_key(request_id), start, -1)
    return [Chunk.decode(raw) for raw in raws]
