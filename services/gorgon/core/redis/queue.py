"""The request streams: the API appends requests, the workers consume them through the consumer group
(reading, heartbeating, taking over the dead's entries, finishing, dead-lettering), the operator counts them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ResponseError

from gorgon.core.protocol import PAYLOAD_FIELD, RequestPayload
from gorgon.core.redis.command_connection import CommandConnection
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames, as_text
from gorgon.core.redis.scripts import lua_script

log = logging.getLogger(__name__)

StreamEntry = tuple[str, RequestPayload | None]
"""(entry id, payload or None when the entry is not a valid payload of this protocol version)."""

_ENQUEUE = lua_script("enqueue.lua")


async def backlog(redis: AsyncRedis, names: RedisNames, model: str) -> int:
    """Requests not yet finished for `model`: undelivered + pending.

    Workers XACK and XDEL an entry once its final result is published, so the stream length is exactly the
    backlog (Redis 6.2 has no `lag` in XINFO GROUPS). A missing stream means no backlog.
    """
    return int(await redis.xlen(names.request_stream(model)))


async def undelivered(redis: AsyncRedis, names: RedisNames, model: str) -> int:
    """Requests of `model` no worker has read yet: the backlog minus the entries the group has delivered and
    not finished (its pending list). A missing stream or group means none."""
    stream = names.request_stream(model)
    try:
        pending = await redis.xpending(stream, CONSUMER_GROUP)
    except ResponseError:
        return 0
    return max(0, int(await redis.xlen(stream)) - int(pending["pending"]))


async def enqueue(
    redis: AsyncRedis | CommandConnection, names: RedisNames, payload: RequestPayload, max_backlog: int
) -> str | None:
    """Append a request to its model's stream; None when the backlog is at `max_backlog` (0 = no limit)."""
    entry_id = await _ENQUEUE.run(
        redis, [names.request_stream(payload.model)], [max_backlog, PAYLOAD_FIELD, payload.encode()]
    )
    return as_text(entry_id) if entry_id else None


async def enqueue_many(
    redis: AsyncRedis | CommandConnection,
    names: RedisNames,
    payloads: Sequence[RequestPayload],
    max_backlog: int,
) -> list[str | None]:
    """`enqueue` for several requests in one round trip (in order; each checked against the backlog). A single
    request is sent as one script call: redis-py's pipeline costs about 65 µs more, for nothing to share."""
    if len(payloads) == 1:
        return [await enqueue(redis, names, payloads[0], max_backlog)]
    calls = [
        ([names.request_stream(payload.model)], [max_backlog, PAYLOAD_FIELD, payload.encode()])
        for payload in payloads
    ]
    return [as_text(entry_id) if entry_id else None for entry_id in await _ENQUEUE.run_many(redis, calls)]


async def ensure_group(redis: AsyncRedis, names: RedisNames, model: str) -> None:
    """Create the stream and its consumer group if missing (reading from the start: nothing is skipped)."""
    try:
        await redis.xgroup_create(names.request_stream(model), CONSUMER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def read_entries(
    redis: AsyncRedis,
    names: RedisNames,
    model: str,
    consumer: str,
    count: int,
    block_ms: int | None,
    *,
    own: bool,
) -> list[StreamEntry]:
    """Entries for `consumer`: its own pending ones (`own`, after a restart) or new ones (">")."""
    stream = names.request_stream(model)
    reply = await redis.xreadgroup(
        CONSUMER_GROUP, consumer, {stream: "0" if own else ">"}, count=count, block=None if own else block_ms
    )
    if not reply:
        return []
    # the RESP2 reply [[stream, entries]]: open_redis's clients speak RESP2
    entries = cast(list[list[Any]], reply)[0][1]
    return [_parse_entry(entry_id, fields) for entry_id, fields in entries]


async def autoclaim_stale(
    redis: AsyncRedis, names: RedisNames, model: str, consumer: str, lease_ms: int, count: int
) -> list[StreamEntry]:
    """Take over entries idle for longer than the lease: their consumer stopped heartbeating (it died)."""
    reply = await redis.xautoclaim(
        names.request_stream(model),
        CONSUMER_GROUP,
        consumer,
        min_idle_time=lease_ms,
        start_id="0-0",
        count=count,
    )
    claimed = reply[1] if len(reply) > 1 else []
    return [_parse_entry(entry_id, fields) for entry_id, fields in claimed if fields]


async def heartbeat_entries(
    redis: AsyncRedis, names: RedisNames, model: str, consumer: str, entry_ids: Sequence[str]
) -> None:
    """Reset the idle time of in-flight entries (XCLAIM to ourselves, JUSTID) so nobody takes them over."""
    if entry_ids:
        await redis.xclaim(
            names.request_stream(model), CONSUMER_GROUP, consumer, 0, list(entry_ids), justid=True
        )


async def hand_back(
    redis: AsyncRedis, names: RedisNames, model: str, consumer: str, entry_ids: Sequence[str], idle_ms: int
) -> None:
    """Mark entries as idle for `idle_ms` so another worker's next XAUTOCLAIM takes them over at once."""
    if entry_ids:
        await redis.xclaim(
            names.request_stream(model),
            CONSUMER_GROUP,
            consumer,
            0,
            list(entry_ids),
            idle=idle_ms,
            justid=True,
        )


async def finish_entries(redis: AsyncRedis, names: RedisNames, model: str, entry_ids: Sequence[str]) -> None:
    """XACK and XDEL finished entries (only after their final result is published and stored)."""
    if not entry_ids:
        return
    stream = names.request_stream(model)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xack(stream, CONSUMER_GROUP, *entry_ids)
        pipe.xdel(stream, *entry_ids)
        await pipe.execute()


async def dead_letter(
    redis: AsyncRedis, names: RedisNames, model: str, entry_id: str, raw_payload: bytes, reason: str
) -> None:
    """Move an entry to the dead-letter stream, then acknowledge and delete it from the request stream."""
    await redis.xadd(
        names.dead_letter_stream(model), {PAYLOAD_FIELD: raw_payload, b"reason": reason, b"entry": entry_id}
    )
    await finish_entries(redis, names, model, [entry_id])


def parse_raw_entry(entry_id: bytes, fields: list[bytes]) -> StreamEntry:
    """An entry as a script returns it: fields as a flat [name, value, ...] list."""
    return _parse_entry(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))


def _parse_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEntry:
    """An entry as redis-py returns it: fields as a dict."""
    raw = fields.get(PAYLOAD_FIELD)
    if raw is None:
        return as_text(entry_id), None
    try:
        return as_text(entry_id), RequestPayload.decode(raw)
    except ValueError:
        log.warning("entry %s is not a valid request payload; it will be dead-lettered", as_text(entry_id))
        return as_text(entry_id), None
