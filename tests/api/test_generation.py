"""The API's relay against a real Redis: order, backpressure (queue length, Redis memory), worker errors, keep-alive
markers, recovery of chunks that pub/sub did not deliver, and requests Redis lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from gorgon.api import generation
from gorgon.api.errors import OpenAIError
from gorgon.api.generation import WAITING, ChunkOrder, Gateway
from gorgon.core.protocol import Chunk, RequestPayload, WireError, WireSampling
from gorgon.core.redis.fencing import claim_attempt
from gorgon.core.redis.memory import MemoryGuard
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.publisher import Publication, Publisher
from gorgon.core.redis.queue import backlog
from gorgon.core.redis.subscriber import TokenSubscriber
from redis_memory_testing import fill_to, redis_with_memory_limit

ELSEWHERE = "a-channel-nobody-listens-to"


@pytest.fixture
async def gateway(redis_async: aioredis.Redis, redis_names: RedisNames) -> AsyncIterator[Gateway]:
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    yield Gateway(redis_async, redis_names, subscriber, max_backlog=1, retry_after_s=7)
    await subscriber.close()


def request(gateway: Gateway, request_id: str, *, stream: bool) -> RequestPayload:
    return RequestPayload(
        request_id,
        "m",
        WireSampling(max_tokens=3),
        deadline=time.time() + 30,
        stream=stream,
        reply_to=gateway.reply_channel,
    )


async def collect(gateway: Gateway, payload: RequestPayload) -> list[Chunk]:
    return [chunk async for chunk in gateway.generate(payload)]


async def relay_in_background(
    gateway: Gateway, payload: RequestPayload, redis: aioredis.Redis, names: RedisNames
) -> asyncio.Task[list[Chunk]]:
    """Start relaying and return once the request is enqueued."""
    task = asyncio.create_task(collect(gateway, payload))
    async with asyncio.timeout(5):
        while not await backlog(redis, names, "m"):
            await asyncio.sleep(0.01)
    return task


def test_chunk_order_relays_each_seq_once_drops_identical_repeats_and_reports_gaps() -> None:
    order = ChunkOrder(stream=True)
    assert order.accept(Chunk("r", attempt=1, seq=0, text="a")) is True
    assert order.accept(Chunk("r", attempt=1, seq=0, text="a")) is False
    assert order.accept(Chunk("r", attempt=2, seq=1, text="b")) is True
    assert order.accept(Chunk("r", attempt=3, seq=1, text="b")) is False, "a resumed attempt repeating seq 1"
    assert order.accept(Chunk("r", attempt=1, seq=2, text="c")) is True, "attempts do not order chunks"
    assert order.accept(Chunk("r", attempt=2, seq=4, text="e")) is None, "seq 3 is missing"


def test_a_repeat_that_differs_from_what_was_relayed_ends_the_stream() -> None:
    order = ChunkOrder(stream=True)
    assert order.accept(Chunk("r", attempt=1, seq=0, text="a")) is True
    assert order.accept(Chunk("r", attempt=1, seq=1, text="b")) is True
    with pytest.raises(OpenAIError) as forked:
        order.accept(Chunk("r", attempt=2, seq=1, text="X"))
    assert (forked.value.status, forked.value.code) == (502, "stream_interrupted")
    with pytest.raises(OpenAIError):
        order.accept(Chunk("r", attempt=2, seq=1, text="b", final=True))


def test_a_whole_reply_takes_the_first_final_chunk_of_any_attempt() -> None:
    order = ChunkOrder(stream=False)
    assert order.accept(Chunk("r", attempt=3, seq=0, text="abc", final=True)) is True
    assert order.accept(Chunk("r", attempt=2, seq=5, text="x")) is False


async def test_a_chunk_pub_sub_did_not_deliver_is_read_back_from_the_progress_list(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    relaying = await relay_in_background(
        gateway, request(gateway, "r1", stream=True), redis_async, redis_names
    )
    publisher = Publisher(redis_async, redis_names)
    await publisher.publish([Publication(Chunk("r1", 1, 0, text="a"), True, None, 30, ELSEWHERE)])
    final = Chunk("r1", 1, 1, text="b", final=True, finish_reason="length")
    await publisher.publish([Publication(final, True, final, 30, gateway.reply_channel)])
    relayed = await asyncio.wait_for(relaying, 5)
    assert [(chunk.seq, chunk.text) for chunk in relayed] == [(0, "a"), (1, "b")]


async def test_a_missed_final_result_is_read_from_the_result_key(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    relaying = await relay_in_background(
        gateway, request(gateway, "r1", stream=False), redis_async, redis_names
    )
    final = Chunk("r1", 1, 0, text="abc", final=True, finish_reason="length")
    await Publisher(redis_async, redis_names).publish([Publication(final, False, final, 30, ELSEWHERE)])
    (relayed,) = await asyncio.wait_for(relaying, 5)
    assert relayed.text == "abc"


async def test_worker_errors_become_openai_errors(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    relaying = await relay_in_background(
        gateway, request(gateway, "r1", stream=False), redis_async, redis_names
    )
    error = WireError("too long", "invalid_request_error", "context_length_exceeded", 400)
    failed = Chunk("r1", 1, 0, final=True, error=error)
    await Publisher(redis_async, redis_names).publish(
        [Publication(failed, False, failed, 30, gateway.reply_channel)]
    )
    with pytest.raises(OpenAIError) as raised:
        await asyncio.wait_for(relaying, 5)
    assert (raised.value.status, raised.value.code) == (400, "context_length_exceeded")


async def test_a_full_queue_is_refused_with_retry_after(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    waiting = await relay_in_background(
        gateway, request(gateway, "r1", stream=False), redis_async, redis_names
    )
    with pytest.raises(OpenAIError) as raised:
        await anext(gateway.generate(request(gateway, "r2", stream=False)))
    assert raised.value.status == 429 and raised.value.headers == {"Retry-After": "7"}
    waiting.cancel()


async def test_a_gap_is_filled_by_seq_from_a_progress_list_that_started_over(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    """Redis restarted without persistence between chunks 1 and 2, and pub/sub lost chunks 2 and 3 while the
    API subscribed again: the progress list now starts at seq 2, and the gap is filled from it by seq."""
    relaying = await relay_in_background(
        gateway, request(gateway, "r1", stream=True), redis_async, redis_names
    )
    publisher = Publisher(redis_async, redis_names)
    for seq, text in enumerate("ab"):
        await publisher.publish(
            [Publication(Chunk("r1", 1, seq, text=text), True, None, 30, gateway.reply_channel)]
        )
    await redis_async.delete(redis_names.progress_key("r1"))
    for seq, text in ((2, "c"), (3, "d")):
        await publisher.publish([Publication(Chunk("r1", 1, seq, text=text), True, None, 30, ELSEWHERE)])
    final = Chunk("r1", 1, 4, text="e", final=True, finish_reason="length")
    await publisher.publish([Publication(final, True, final, 30, gateway.reply_channel)])
    relayed = await asyncio.wait_for(relaying, 5)
    assert "".join(chunk.text for chunk in relayed) == "abcde"
    assert [chunk.seq for chunk in relayed] == [0, 1, 2, 3, 4]


async def test_a_request_redis_lost_fails_within_seconds_and_one_a_worker_holds_goes_on(
    redis_async: aioredis.Redis, redis_names: RedisNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "LOST_AFTER_S", 0.5)
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    gateway = Gateway(redis_async, redis_names, subscriber, max_backlog=0, retry_after_s=2)
    lost = await relay_in_background(
        gateway, request(gateway, "lost", stream=False), redis_async, redis_names
    )
    held = asyncio.create_task(collect(gateway, request(gateway, "held", stream=False)))
    async with asyncio.timeout(5):
        while await backlog(redis_async, redis_names, "m") < 2:
            await asyncio.sleep(0.01)
    await redis_async.set(redis_names.held_key("held"), 1, px=30_000)
    started = time.monotonic()
    await redis_async.delete(redis_names.request_stream("m"))
    with pytest.raises(OpenAIError) as failed:
        await asyncio.wait_for(lost, 10)
    assert (failed.value.status, failed.value.code) == (503, "request_lost")
    assert failed.value.headers == {"Retry-After": "2"}
    assert time.monotonic() - started < 4
    assert not held.done()
    final = Chunk("held", 1, 0, text="abc", final=True, finish_reason="length")
    await Publisher(redis_async, redis_names).publish(
        [Publication(final, False, final, 30, gateway.reply_channel)]
    )
    assert [chunk.text for chunk in await asyncio.wait_for(held, 5)] == ["abc"]
    await subscriber.close()


async def test_events_say_queued_at_once_then_keep_alive_while_no_chunk_comes(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    subscriber = TokenSubscriber(redis_async, redis_names)
    await subscriber.start()
    gateway = Gateway(redis_async, redis_names, subscriber, max_backlog=0, retry_after_s=1, keepalive_s=0.2)
    events = gateway.events(request(gateway, "r1", stream=True))
    started = time.monotonic()
    assert await anext(events) is WAITING
    assert await backlog(redis_async, redis_names, "m") == 1, "queued before the first event"
    assert await anext(events) is WAITING
    assert await anext(events) is WAITING
    assert 0.35 < time.monotonic() - started < 1.5
    final = Chunk("r1", 1, 0, text="a", final=True, finish_reason="length")
    await Publisher(redis_async, redis_names).publish(
        [Publication(final, True, final, 30, gateway.reply_channel)]
    )
    while (event := await anext(events)) is WAITING:
        pass
    assert event == final
    await events.aclose()
    await subscriber.close()


async def test_new_requests_are_refused_while_redis_memory_is_nearly_full(redis_names: RedisNames) -> None:
    with redis_with_memory_limit(4_000_000) as url:
        client = aioredis.Redis.from_url(url)
        subscriber = TokenSubscriber(client, redis_names)
        await subscriber.start()
        guard = MemoryGuard(client, limit_fraction=0.8, check_s=0.0)
        gateway = Gateway(client, redis_names, subscriber, 0, retry_after_s=3, memory_guard=guard)
        async with contextlib.aclosing(gateway.events(request(gateway, "r1", stream=True))) as events:
            assert await anext(events) is WAITING
        sync_client = redis.Redis.from_url(url)
        fill_to(sync_client, 0.85)
        await guard.over_limit()  # reads again in the background
        await asyncio.sleep(0.1)
        with pytest.raises(OpenAIError) as refused:
            await anext(gateway.events(request(gateway, "r2", stream=True)))
        assert (refused.value.status, refused.value.code) == (503, "queue_memory_full")
        assert refused.value.headers == {"Retry-After": "3"}
        assert await backlog(client, redis_names, "m") == 1, "r2 was not queued"
        await gateway.close()
        await subscriber.close()
        await client.aclose()
        sync_client.close()


async def test_a_resumed_attempt_whose_text_differs_from_what_was_relayed_ends_the_stream_cleanly(
    redis_async: aioredis.Redis, redis_names: RedisNames, gateway: Gateway
) -> None:
    """A stale snapshot left two of the four chunks relayed; the attempt that resumes from them samples other
    text: the client gets the four chunks once and then an error, never a second, different continuation."""
    relayed: list[str] = []

    async def relay() -> None:
        async for chunk in gateway.generate(request(gateway, "r1", stream=True)):
            relayed.append(chunk.text)

    relaying = asyncio.create_task(relay())
    async with asyncio.timeout(5):
        while not await backlog(redis_async, redis_names, "m"):
            await asyncio.sleep(0.01)
    publisher = Publisher(redis_async, redis_names)
    for seq, text in enumerate("abcd"):
        chunk = Chunk("r1", 1, seq, text=text)
        await publisher.publish([Publication(chunk, True, None, 30, gateway.reply_channel)])
    await redis_async.ltrim(redis_names.progress_key("r1"), 0, 1)
    claim = await claim_attempt(redis_async, redis_names, "r1", 30)
    assert [chunk.seq for chunk in claim.published] == [0, 1]
    for seq, text in ((2, "c"), (3, "X"), (4, "y")):
        chunk = Chunk("r1", claim.attempt, seq, text=text)
        await publisher.publish([Publication(chunk, True, None, 30, gateway.reply_channel)])
    with pytest.raises(OpenAIError) as forked:
        await asyncio.wait_for(relaying, 5)
    assert (forked.value.status, forked.value.code) == (502, "stream_interrupted")
    assert relayed == ["a", "b", "c", "d"]
