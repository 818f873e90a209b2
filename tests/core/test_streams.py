from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gorgon.core.protocol import Chunk, RequestPayload, WireSampling, decode_chunks
from gorgon.core.streams import (
    CONSUMER_GROUP,
    CommandConnection,
    EntryRef,
    LuaScript,
    PromptWrites,
    Publication,
    Publisher,
    RedisNames,
    TokenSubscriber,
    autoclaim_stale,
    backlog,
    cancelled_requests,
    claim_attempt,
    enqueue,
    enqueue_many,
    ensure_group,
    heartbeat_entries,
    live_workers,
    open_redis,
    read_entries,
    read_progress,
    read_result,
    register_worker,
    request_cancel,
    unregister_worker,
)


def test_names_are_namespaced_per_model_and_request() -> None:
    names = RedisNames("ns")
    assert names.request_stream("m") == "ns:requests:m"
    assert names.reply_channel("api-1") == "ns:replies:api-1"
    assert names.result_key("r1") != names.cancel_key("r1")
    assert names.worker_pattern("m") == "ns:workers:m:*"


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


def _payload(request_id: str, model: str = "m") -> RequestPayload:
    return RequestPayload(
        request_id,
        model,
        WireSampling(max_tokens=4),
        deadline=time.time() + 30,
        stream=True,
        reply_to="ns:replies:x",
    )


async def test_enqueue_refuses_past_the_backlog_limit(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    assert await enqueue(redis_async, redis_names, _payload("r1"), max_backlog=2)
    assert await enqueue(redis_async, redis_names, _payload("r2"), max_backlog=2)
    assert await enqueue(redis_async, redis_names, _payload("r3"), max_backlog=2) is None
    assert await enqueue(redis_async, redis_names, _payload("r3"), max_backlog=0), "0 means no limit"


async def test_enqueue_many_checks_each_request_against_the_backlog_in_order(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    payloads = [_payload("r1"), _payload("r2"), _payload("r3")]
    entry_ids = await enqueue_many(redis_async, redis_names, payloads, max_backlog=2)
    assert [entry_id is not None for entry_id in entry_ids] == [True, True, False]
    await ensure_group(redis_async, redis_names, "m")
    entries = await read_entries(redis_async, redis_names, "m", "c1", 10, None, own=False)
    assert [(entry_id, payload.request_id) for entry_id, payload in entries if payload] == [
        (entry_ids[0], "r1"),
        (entry_ids[1], "r2"),
    ]


async def test_only_the_current_attempt_may_publish(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    queue = subscriber.register("r1")
    publisher = Publisher(redis_async, redis_names)
    first = Chunk("r1", attempt=1, seq=0, text="a", token_ids=(97,))
    assert await publisher.publish([Publication(first, True, None, 30, subscriber.channel)]) == [True]
    claim = await claim_attempt(redis_async, redis_names, "r1", 30)
    assert (claim.attempt, claim.finished, claim.cancelled) == (2, False, False)
    assert claim.published == [first]
    stale = Chunk("r1", attempt=1, seq=1, text="zombie")
    fresh = Chunk("r1", attempt=2, seq=1, text="b", final=True)
    assert await publisher.publish(
        [
            Publication(stale, True, None, 30, subscriber.channel),
            Publication(fresh, True, fresh, 30, subscriber.channel),
        ]
    ) == [False, True]
    received = [await asyncio.wait_for(queue.get(), 5) for _ in range(2)]
    await subscriber.close()
    assert [chunk.text for chunk in received] == ["a", "b"]
    assert await read_progress(redis_async, redis_names, "r1", 0) == [first, fresh]
    assert await read_result(redis_async, redis_names, "r1") == fresh
    assert (await claim_attempt(redis_async, redis_names, "r1", 30)).finished


async def test_one_step_reaches_each_api_process_as_one_message(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    listener = redis_async.pubsub()
    await listener.subscribe("api-1", "api-2")
    for _ in range(2):
        await listener.get_message(timeout=5)
    chunks = [Chunk(request_id, attempt=1, seq=0, text=request_id) for request_id in ("r1", "r2", "r3")]
    channels = ["api-1", "api-2", "api-1"]
    publications = [
        Publication(chunk, True, None, 30, channel) for chunk, channel in zip(chunks, channels, strict=True)
    ]
    assert await Publisher(redis_async, redis_names).publish(publications) == [True, True, True]
    messages = [await listener.get_message(timeout=5) for _ in range(2)]
    assert await listener.get_message(timeout=0.2) is None
    await listener.aclose()
    by_channel = {message["channel"]: decode_chunks(message["data"]) for message in messages if message}
    assert by_channel == {b"api-1": [chunks[0], chunks[2]], b"api-2": [chunks[1]]}


async def test_a_final_chunk_acknowledges_its_entry_only_when_it_is_published(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    await ensure_group(redis_async, redis_names, "m")
    for request_id in ("fenced", "current"):
        await enqueue(redis_async, redis_names, _payload(request_id), 0)
    entries = await read_entries(redis_async, redis_names, "m", "w1", 2, None, own=False)
    (fenced_id, _), (current_id, _) = entries
    await redis_async.set(redis_names.attempt_key("fenced"), 2)
    stream = redis_names.request_stream("m")
    publications = [
        Publication(
            Chunk(request_id, attempt=1, seq=0, final=True),
            False,
            None,
            30,
            "nobody",
            EntryRef(stream, entry_id),
        )
        for request_id, entry_id in (("fenced", fenced_id), ("current", current_id))
    ]
    assert await Publisher(redis_async, redis_names).publish(publications) == [False, True]
    pending = await redis_async.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=10)
    assert [entry["message_id"].decode() for entry in pending] == [fenced_id]
    assert [entry_id.decode() for entry_id, _ in await redis_async.xrange(stream)] == [fenced_id]
    assert await backlog(redis_async, redis_names, "m") == 1


async def test_stale_entries_are_taken_over_and_heartbeats_prevent_it(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    await ensure_group(redis_async, redis_names, "m")
    for request_id in ("kept", "lost"):
        await enqueue(redis_async, redis_names, _payload(request_id), 0)
    entries = await read_entries(redis_async, redis_names, "m", "alive", 2, None, own=False)
    assert [payload.request_id for _, payload in entries if payload] == ["kept", "lost"]
    await asyncio.sleep(0.15)
    await heartbeat_entries(redis_async, redis_names, "m", "alive", [entries[0][0]])
    taken = await autoclaim_stale(redis_async, redis_names, "m", "rescuer", lease_ms=100, count=10)
    assert [payload.request_id for _, payload in taken if payload] == ["lost"]
    own = await read_entries(redis_async, redis_names, "m", "rescuer", 10, None, own=True)
    assert [entry_id for entry_id, _ in own] == [entries[1][0]]


async def test_cancel_flags_and_worker_registrations(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    await request_cancel(redis_async, redis_names, "r2", 30)
    assert await cancelled_requests(redis_async, redis_names, ["r1", "r2"]) == {"r2"}
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


async def test_the_subscriber_subscribes_again_after_losing_its_connection(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    def pubsub_ids(clients: list[dict[str, Any]]) -> set[str]:
        return {str(client["id"]) for client in clients}

    before = pubsub_ids(await redis_async.client_list(_type="pubsub"))
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    queue = subscriber.register("r1")
    (own,) = pubsub_ids(await redis_async.client_list(_type="pubsub")) - before
    await redis_async.client_kill_filter(_id=own)
    async with asyncio.timeout(10):
        while True:
            await asyncio.sleep(0.05)
            current = pubsub_ids(await redis_async.client_list(_type="pubsub")) - before
            if current and own not in current:
                break
    await redis_async.publish(subscriber.channel, Chunk("r1", attempt=1, seq=0, text="again").encode())
    chunk = await asyncio.wait_for(queue.get(), 5)
    await subscriber.close()
    assert chunk.text == "again"


async def test_command_connection_pipelines_concurrent_commands_and_keeps_their_order(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    commands = CommandConnection(redis_async.connection_pool)
    key = f"{redis_names.namespace}:counter"
    replies = await asyncio.gather(*(commands.execute("INCR", key) for _ in range(50)))
    assert replies == list(range(1, 51))
    with pytest.raises(ResponseError):
        await commands.execute("LPUSH", key, "x")  # wrong type: an error reply, the connection stays usable
    assert await commands.execute("GET", key) == b"50"
    await commands.close()


async def test_command_connection_loads_a_script_redis_forgot_and_reconnects_after_a_kill(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    commands = CommandConnection(redis_async.connection_pool)
    script = LuaScript(f"return 'hello from {redis_names.namespace}'")  # never loaded: NOSCRIPT first
    assert await script.run(commands, [], []) == f"hello from {redis_names.namespace}".encode()
    own = await commands.execute("CLIENT", "ID")
    waiting = asyncio.ensure_future(
        commands.execute("BLPOP", f"{redis_names.namespace}:nothing", 5, block_s=5)
    )
    await asyncio.sleep(0.2)
    await redis_async.client_kill_filter(_id=str(own))
    with pytest.raises(RedisConnectionError):
        await waiting
    assert await commands.execute("PING") in (b"PONG", "PONG")
    assert await commands.execute("CLIENT", "ID") != own
    await commands.close()


async def test_command_connection_times_out_like_redis_py_and_opens_again(
    redis_url: str, redis_names: RedisNames
) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.3)
    commands = CommandConnection(client.connection_pool)
    with pytest.raises(RedisTimeoutError):
        await commands.execute("BLPOP", f"{redis_names.namespace}:nothing", 2)  # blocks past the timeout
    assert await commands.execute("PING") in (b"PONG", "PONG")
    await commands.close()
    await client.aclose()


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", aioredis.Connection),
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=required", aioredis.SSLConnection),
        ("unix:///run/redis.sock?db=0", aioredis.UnixDomainSocketConnection),
    ],
)
def test_open_redis_keeps_the_transport_the_url_names(url: str, transport: type) -> None:
    """redis-py lets an explicit connection class override the scheme's: a rediss:// URL must still get TLS."""
    connection_class = open_redis(url).connection_pool.connection_class
    assert issubclass(connection_class, transport)
    assert issubclass(connection_class, PromptWrites)
