"""The worker's writes: the chunks of each step published through the fencing script, with the step's
acknowledgements, cancel-flag reads, hold-marker refreshes and new-entry read in the same script call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis as AsyncRedis

from gorgon.core.protocol import Chunk
from gorgon.core.redis.command_connection import CommandConnection
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.core.redis.queue import StreamEntry, parse_raw_entry
from gorgon.core.redis.scripts import lua_script

_PUBLISH = lua_script("publish_chunks.lua", "publish.lua")
_STEP = lua_script("publish_chunks.lua", "step.lua")

HOLD_REFRESH_S = 1.0
"""How often a worker's steps refresh the hold markers of the requests it runs (`RedisNames.held_key`)."""
HOLD_TTL_S = 3.0
"""How long a hold marker outlives its last refresh: a few refreshes, so it lapses soon after the worker stops
stepping or drops the request (the API waits `requests.LOST_AFTER_S` more before it calls a request lost)."""


@dataclass(frozen=True, slots=True)
class EntryRef:
    """One entry of a request stream."""

    stream: str
    entry_id: str


@dataclass(frozen=True, slots=True)
class Publication:
    """One chunk to publish. `result` (the whole-text final chunk) is stored when the chunk is final;
    `keep_progress` appends the chunk to the progress list (streaming requests); `finishes` is the stream entry
    the chunk completes, acknowledged and deleted by the same script once the chunk is published."""

    chunk: Chunk
    keep_progress: bool
    result: Chunk | None
    ttl_s: int
    channel: str
    finishes: EntryRef | None = None


@dataclass(frozen=True, slots=True)
class StepWork:
    publications: Sequence[Publication]
    ack_ids: Sequence[str]
    running_ids: Sequence[str]
    read_count: int


@dataclass(frozen=True, slots=True)
class StepReply:
    published: list[bool]
    cancelled: set[str]
    new_entries: list[StreamEntry]


class Publisher:
    """Publishes chunks through the fencing script: all the chunks of one step in one script call. Its commands
    go over a `CommandConnection` of its own, which also serves the worker loop's blocking reads
    (`read_new`): the loop is its only user, one command at a time."""

    def __init__(self, redis: AsyncRedis, names: RedisNames) -> None:
        self._redis = CommandConnection(redis.connection_pool)
        self._names = names
        self._held_refreshed_at = float("-inf")

    async def close(self) -> None:
        await self._redis.close()

    async def read_new(
        self, model: str, consumer: str, count: int, block_ms: int | None
    ) -> list[StreamEntry]:
        """New entries (">") for `consumer`, waiting up to `block_ms` for one (None: not at all)."""
        stream = self._names.request_stream(model)
        command: list[Any] = ["XREADGROUP", "GROUP", CONSUMER_GROUP, consumer, "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        reply = await self._redis.execute(*command, "STREAMS", stream, ">", block_s=(block_ms or 0) / 1000)
        if not reply:
            return []
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return [parse_raw_entry(entry_id, fields) for entry_id, fields in entries]

    async def publish(self, publications: Sequence[Publication]) -> list[bool]:
        """Publish in order; one flag per publication: False when the attempt was fenced out."""
        if not publications:
            return []
        keys, args = self._call(publications)
        return [bool(flag) for flag in await _PUBLISH.run(self._redis, keys, args)]

    async def load(self) -> None:
        """Load the scripts ahead of the first step."""
        await self._redis.script_load(_PUBLISH.source)
        await self._redis.script_load(_STEP.source)

    async def sync_step(self, model: str, consumer: str, work: StepWork) -> StepReply:
        """Everything a worker sends to Redis after one engine step, in one script call, in this order:
        publish the chunks (final ones acknowledge their entries), acknowledge and delete the entries in
        `work.ack_ids` (cancelled requests), read the cancel flags of the running requests, refresh their hold
        markers (every `HOLD_REFRESH_S`), and read up to `work.read_count` new entries (without blocking)."""
        keys, publication_args = self._call(work.publications)
        keys += [self._names.cancel_key(request_id) for request_id in work.running_ids]
        hold_ms = self._hold_ms_due(bool(work.running_ids))
        if hold_ms:
            keys += [self._names.held_key(request_id) for request_id in work.running_ids]
        args = [
            len(work.publications),
            self._names.request_stream(model),
            consumer,
            max(0, work.read_count),
            len(work.ack_ids),
            hold_ms,
            *work.ack_ids,
            *publication_args,
        ]
        published, flags, reply = await _STEP.run(self._redis, keys, args)
        if hold_ms:
            self._held_refreshed_at = time.monotonic()
        cancelled = {rid for rid, flag in zip(work.running_ids, flags, strict=True) if flag}
        entries = [parse_raw_entry(entry_id, fields) for entry_id, fields in reply[0][1]] if reply else []
        return StepReply([bool(flag) for flag in published], cancelled, entries)

    def _hold_ms_due(self, running: bool) -> int:
        """The hold markers' TTL in ms when this step refreshes them, else 0."""
        if not running or time.monotonic() - self._held_refreshed_at < HOLD_REFRESH_S:
            return 0
        return int(HOLD_TTL_S * 1000)

    def _call(self, publications: Sequence[Publication]) -> tuple[list[str], list[Any]]:
        """The publish script's keys and arguments for `publications` (layout: see lua/publish_chunks.lua)."""
        keys: list[str] = []
        args: list[Any] = []
        names = self._names
        for publication in publications:
            chunk, result, finishes = publication.chunk, publication.result, publication.finishes
            request_id = chunk.request_id
            keys += [
                names.attempt_key(request_id),
                names.progress_key(request_id),
                names.result_key(request_id),
            ]
            args += [
                chunk.attempt,
                publication.channel,
                chunk.encode(),
                int(publication.keep_progress),
                int(result is not None),
                result.encode() if result is not None else b"",
                max(1, publication.ttl_s),
                finishes.stream if finishes is not None else b"",
                finishes.entry_id if finishes is not None else b"",
            ]
        return keys, args
