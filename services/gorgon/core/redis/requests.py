"""The per-request keys beside the stream: the cancel flag the API sets, the final result, the progress list and
the hold marker the worker keeps.

The progress list holds a streaming request's chunks in the order they were published. Normally the chunk at
index i has seq i, but not after Redis lost data: a restart without persistence starts the list over at the
next chunk a surviving worker publishes, a stale snapshot cuts its tail, and a round trip that failed after its
script ran publishes its chunks a second time. Readers therefore find chunks by their seq (`contiguous_run`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.asyncio import Redis as AsyncRedis

from gorgon.core.protocol import Chunk
from gorgon.core.redis.names import RedisNames

LOST_AFTER_S = 5.0
"""A request whose stream entry, result and hold marker are all missing for this long was lost by Redis. Longer
than a worker takes to mark what it holds again after Redis lost its data (`publisher.HOLD_REFRESH_S`, one
engine step, and a reconnection after a restart)."""


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


def contiguous_run(chunks: Iterable[Chunk], start: int) -> list[Chunk]:
    """The chunks with seq `start`, `start` + 1, ... in that order, taken in list order, up to the first seq
    missing (a chunk whose seq is not the next one wanted is skipped: a repeat, or one past a gap)."""
    run: list[Chunk] = []
    wanted = start
    for chunk in chunks:
        if chunk.seq == wanted:
            run.append(chunk)
            wanted += 1
    return run


async def read_progress(redis: AsyncRedis, names: RedisNames, request_id: str, start: int) -> list[Chunk]:
    """Chunks published for a streaming request from seq `start` on (to fill a gap in what pub/sub delivered).

    One LRANGE from index `start` - 1 when the list is intact (its chunk there has seq `start` - 1); the whole
    list, searched by seq, when it is not."""
    key = names.progress_key(request_id)
    anchor = max(0, start - 1)
    chunks = [Chunk.decode(raw) for raw in await redis.lrange(key, anchor, -1)]
    if start > 0 and not (chunks and chunks[0].seq == anchor):
        chunks = [Chunk.decode(raw) for raw in await redis.lrange(key, 0, -1)]
    return contiguous_run(chunks, start)


async def request_is_lost(
    redis: AsyncRedis, names: RedisNames, model: str, entry_id: str, request_id: str
) -> bool:
    """True when nothing in Redis accounts for the request any more: its stream entry is gone (a worker deletes
    it only together with storing the final result), no result is stored and no worker marks it as held.

    Read in this order, so a worker finishing the request in between shows as its stored result."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xrange(names.request_stream(model), entry_id, entry_id, count=1)
        pipe.exists(names.result_key(request_id))
        pipe.exists(names.held_key(request_id))
        entry, result, held = await pipe.execute()
    return not entry and not result and not held
