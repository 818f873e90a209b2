"""Fencing: each delivery of a request is an attempt, and only the current attempt may publish (the publish
script checks the attempt key; see `publisher`)."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

from gorgon.core.protocol import Chunk
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.requests import contiguous_run
from gorgon.core.redis.scripts import lua_script

_CLAIM = lua_script("claim.lua")


@dataclass(frozen=True, slots=True)
class Claim:
    """The state of a redelivered request as the claiming worker finds it. `published` is the run of chunks
    with seq 0, 1, 2, ... the progress list holds (after a loss of Redis data it may hold more, past a gap: a
    new attempt resumes after the run, and the API checks what it re-publishes against what it relayed)."""

    attempt: int
    finished: bool
    cancelled: bool
    published: list[Chunk]


async def claim_attempt(redis: AsyncRedis, names: RedisNames, request_id: str, ttl_s: int) -> Claim:
    """Start a new attempt of `request_id`: from now on only this attempt may publish."""
    keys = [
        names.attempt_key(request_id),
        names.progress_key(request_id),
        names.result_key(request_id),
        names.cancel_key(request_id),
    ]
    attempt, finished, cancelled, raws = await _CLAIM.run(redis, keys, [max(1, ttl_s)])
    published = contiguous_run((Chunk.decode(raw) for raw in raws), 0)
    return Claim(int(attempt), bool(finished), bool(cancelled), published)
