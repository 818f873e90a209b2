from __future__ import annotations

import redis.asyncio as aioredis

from gorgon.core.protocol import Chunk
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.requests import (
    cancelled_requests,
    contiguous_run,
    read_progress,
    request_cancel,
    request_is_lost,
)


async def test_cancel_flags(redis_async: aioredis.Redis, redis_names: RedisNames) -> None:
    await request_cancel(redis_async, redis_names, "r2", 30)
    assert await cancelled_requests(redis_async, redis_names, ["r1", "r2"]) == {"r2"}


def chunks(*seqs: int) -> list[Chunk]:
    return [Chunk("r", attempt=1, seq=seq, text=str(seq)) for seq in seqs]


def test_a_contiguous_run_is_found_by_seq_past_repeats_and_stops_at_a_gap() -> None:
    assert contiguous_run(chunks(0, 1, 1, 2, 5, 6), 0) == chunks(0, 1, 2)
    assert contiguous_run(chunks(7, 8, 9), 8) == chunks(8, 9)
    assert contiguous_run(chunks(0, 1, 2, 10, 11, 3, 4), 3) == chunks(3, 4), "a resumed attempt after a fork"
    assert contiguous_run(chunks(4, 5), 2) == []


async def test_progress_is_read_by_seq_whether_or_not_the_list_index_matches_it(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    key = redis_names.progress_key("r")
    await redis_async.rpush(key, *(chunk.encode() for chunk in chunks(0, 1, 2, 3)))
    assert await read_progress(redis_async, redis_names, "r", 2) == chunks(2, 3)
    assert await read_progress(redis_async, redis_names, "r", 4) == []
    await redis_async.delete(key)  # Redis restarted: the list starts over at the next chunk published
    await redis_async.rpush(key, *(chunk.encode() for chunk in chunks(6, 7, 7, 8)))
    assert await read_progress(redis_async, redis_names, "r", 6) == chunks(6, 7, 8)
    assert await read_progress(redis_async, redis_names, "r", 7) == chunks(7, 8)
    assert await read_progress(redis_async, redis_names, "r", 2) == [], "chunks 2 to 5 are gone"


async def test_a_request_is_lost_only_when_its_entry_result_and_hold_marker_are_all_gone(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    stream = redis_names.request_stream("m")
    entry_id = (await redis_async.xadd(stream, {"p": b"{}"})).decode()

    async def lost() -> bool:
        return await request_is_lost(redis_async, redis_names, "m", entry_id, "r")

    assert not await lost(), "queued"
    await redis_async.xdel(stream, entry_id)
    assert await lost()
    await redis_async.set(redis_names.held_key("r"), 1, px=5000)
    assert not await lost(), "a worker holds it"
    await redis_async.delete(redis_names.held_key("r"))
    await redis_async.set(redis_names.result_key("r"), Chunk("r", 1, 0, final=True).encode())
    assert not await lost(), "finished"
