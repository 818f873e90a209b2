"""The worker's consume loop in-process (echo engine) against a real Redis: publishing, fencing, takeover,
dead-lettering, deadlines, cancellation and shutdown; requests failing alone, preparation beside the decode loop,
and takeover while every row is busy."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
import torch

from gorgon.core.protocol import Chunk, RequestPayload, WireSampling
from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.core.redis.publisher import Publication, Publisher
from gorgon.core.redis.queue import backlog, enqueue, ensure_group, read_entries
from gorgon.core.redis.requests import read_progress, read_result, request_cancel
from gorgon.core.redis.subscriber import TokenSubscriber
from gorgon.engine.echo import EchoEngine, chat_prompt, continuation
from gorgon.engine.interface import ChatMessage, GenerationRequest, TokenEvent
from gorgon.worker.config import WorkerSettings
from gorgon.worker.main import Worker

FAST = WorkerSettings(
    read_block_ms=20, lease_s=1.0, heartbeat_interval_s=0.2, registration_ttl_s=2.0, shutdown_grace_s=5.0
)


def payload(
    reply_to: str, request_id: str, *, max_tokens: int = 8, stream: bool = False, prompt: str = "abc", **extra
) -> RequestPayload:
    sampling = WireSampling(max_tokens=max_tokens, temperature=0.0, **extra)
    return RequestPayload(
        request_id=request_id,
        model="echo",
        sampling=sampling,
        deadline=time.time() + 30,
        stream=stream,
        reply_to=reply_to,
        prompt=prompt,
    )


async def start_worker(
    redis: aioredis.Redis,
    names: RedisNames,
    settings: WorkerSettings = FAST,
    step_delay_s: float = 0.0,
    name: str = "w1",
    engine: EchoEngine | None = None,
) -> tuple[Worker, asyncio.Task[None]]:
    engine = engine or EchoEngine(step_delay_s=step_delay_s)
    worker = Worker(engine, redis, names, settings, name)
    task = asyncio.create_task(worker.run())
    while not worker.ready:
        await asyncio.sleep(0.01)
    return worker, task


async def stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.request_stop()
    await asyncio.wait_for(task, 10)


async def collect(queue: asyncio.Queue[Chunk], timeout: float = 10) -> list[Chunk]:
    chunks: list[Chunk] = []
    async with asyncio.timeout(timeout):
        while not chunks or not chunks[-1].final:
            chunks.append(await queue.get())
    return chunks


@pytest.fixture
async def subscriber(redis_async: aioredis.Redis, redis_names: RedisNames) -> AsyncIterator[TokenSubscriber]:
    sub = TokenSubscriber(redis_async, redis_names)
    await sub.start()
    yield sub
    await sub.close()


async def test_non_streaming_request_gets_one_final_chunk_and_its_entry_is_deleted(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names)
    queue = subscriber.register("r1")
    await enqueue(redis_async, redis_names, payload(subscriber.channel, "r1", max_tokens=8), 0)
    chunks = await collect(queue)
    await stop_worker(worker, task)
    assert len(chunks) == 1
    assert chunks[0].text == continuation("abc", 8)
    assert chunks[0].finish_reason == "length"
    assert (chunks[0].prompt_tokens, chunks[0].completion_tokens) == (3, 8)
    assert await backlog(redis_async, redis_names, "echo") == 0
    stored = await read_result(redis_async, redis_names, "r1")
    assert stored is not None and stored.text == chunks[0].text


async def test_streaming_chunks_are_seq_numbered_and_kept_as_progress(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names)
    queue = subscriber.register("r1")
    await enqueue(
        redis_async,
        redis_names,
        payload(subscriber.channel, "r1", max_tokens=7, stream=True, use_speculative=False),
        0,
    )
    chunks = await collect(queue)
    await stop_worker(worker, task)
    assert [chunk.seq for chunk in chunks] == list(range(7))
    assert "".join(chunk.text for chunk in chunks) == continuation("abc", 7)
    progress = await read_progress(redis_async, redis_names, "r1", 0)
    assert [chunk.seq for chunk in progress] == list(range(7))


async def test_requests_join_the_running_batch(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names, step_delay_s=0.01)
    long_queue = subscriber.register("long")
    await enqueue(
        redis_async, redis_names, payload(subscriber.channel, "long", max_tokens=60, use_speculative=False), 0
    )
    await asyncio.sleep(0.1)
    short_queue = subscriber.register("short")
    await enqueue(
        redis_async, redis_names, payload(subscriber.channel, "short", max_tokens=3, use_speculative=False), 0
    )
    short = await collect(short_queue)
    assert long_queue.empty(), "the short request finished while the long one was still running"
    long = await collect(long_queue)
    await stop_worker(worker, task)
    assert short[-1].published_at < long[-1].published_at
    assert long[-1].text == continuation("abc", 60)


async def test_stop_sequences_end_the_text_before_the_stop(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names)
    queue = subscriber.register("r1")
    await enqueue(
        redis_async,
        redis_names,
        payload(subscriber.channel, "r1", max_tokens=20, stream=True, stop=("fg",)),
        0,
    )
    chunks = await collect(queue)
    await stop_worker(worker, task)
    assert "".join(chunk.text for chunk in chunks) == "de"
    assert chunks[-1].finish_reason == "stop"


async def test_context_overflow_is_reported_to_the_client(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names)
    queue = subscriber.register("r1")
    await enqueue(
        redis_async, redis_names, payload(subscriber.channel, "r1", max_tokens=4000, prompt="x" * 200), 0
    )
    (chunk,) = await collect(queue)
    await stop_worker(worker, task)
    assert chunk.error is not None
    assert (chunk.error.code, chunk.error.status) == ("context_length_exceeded", 400)
    assert await backlog(redis_async, redis_names, "echo") == 0


async def test_expired_deadline_gives_a_timeout_error(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names, step_delay_s=0.02)
    queue = subscriber.register("r1")
    late = replace(
        payload(subscriber.channel, "r1", max_tokens=1000, use_speculative=False), deadline=time.time() + 0.3
    )
    await enqueue(redis_async, redis_names, late, 0)
    (chunk,) = await collect(queue)
    await stop_worker(worker, task)
    assert chunk.error is not None and chunk.error.code == "timeout"
    assert worker.engine.num_active == 0


async def test_cancel_flag_drops_the_row_and_frees_the_slot(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names, step_delay_s=0.01)
    queue = subscriber.register("r1")
    await enqueue(
        redis_async,
        redis_names,
        payload(subscriber.channel, "r1", max_tokens=1000, stream=True, use_speculative=False),
        0,
    )
    await queue.get()
    await request_cancel(redis_async, redis_names, "r1", 30)
    async with asyncio.timeout(2):
        while await backlog(redis_async, redis_names, "echo"):
            await asyncio.sleep(0.01)
    assert worker.engine.num_active == 0
    await stop_worker(worker, task)
    progress = await read_progress(redis_async, redis_names, "r1", 0)
    assert len(progress) < 1000 and not progress[-1].final


async def test_superseded_attempt_is_fenced_out_and_does_not_ack(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names, step_delay_s=0.01)
    queue = subscriber.register("r1")
    await enqueue(
        redis_async,
        redis_names,
        payload(subscriber.channel, "r1", max_tokens=500, stream=True, use_speculative=False),
        0,
    )
    await queue.get()
    await redis_async.set(redis_names.attempt_key("r1"), 2)  # another worker took the request over
    async with asyncio.timeout(2):
        while worker.engine.num_active:
            await asyncio.sleep(0.01)
    await stop_worker(worker, task)
    published = await read_progress(redis_async, redis_names, "r1", 0)
    assert all(chunk.attempt == 1 for chunk in published)
    assert not published[-1].final
    assert await backlog(redis_async, redis_names, "echo") == 1, "the entry must stay for its new owner"


async def _abandoned_entry(redis: aioredis.Redis, names: RedisNames, request: RequestPayload) -> str:
    """An entry delivered to a consumer that then died."""
    await ensure_group(redis, names, "echo")
    await enqueue(redis, names, request, 0)
    ((entry_id, _),) = await read_entries(redis, names, "echo", "dead-worker", 1, None, own=False)
    return entry_id


async def test_entry_of_a_dead_worker_is_resumed_where_it_stopped(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    request = payload(subscriber.channel, "r1", max_tokens=12, stream=True, use_speculative=False)
    await _abandoned_entry(redis_async, redis_names, request)
    already = continuation("abc", 5)
    publisher = Publisher(redis_async, redis_names)
    for seq, char in enumerate(already):
        chunk = Chunk("r1", attempt=1, seq=seq, text=char, token_ids=tuple(char.encode()))
        # published to a channel nobody hears (the resumed attempt reads them from the progress list)
        await publisher.publish([Publication(chunk, True, None, 60, "elsewhere")])
    queue = subscriber.register("r1")
    worker, task = await start_worker(redis_async, redis_names, name="w2")
    chunks = await collect(queue, timeout=10)
    await stop_worker(worker, task)
    assert [chunk.seq for chunk in chunks] == list(range(5, 12))
    assert {chunk.attempt for chunk in chunks} == {2}
    assert already + "".join(chunk.text for chunk in chunks) == continuation("abc", 12)
    assert chunks[-1].completion_tokens == 12 and chunks[-1].prompt_tokens == 3
    assert await backlog(redis_async, redis_names, "echo") == 0


async def test_entry_delivered_too_often_is_dead_lettered_with_an_error_to_the_client(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    request = payload(subscriber.channel, "r1", max_tokens=5)
    await _abandoned_entry(redis_async, redis_names, request)
    await redis_async.set(redis_names.attempt_key("r1"), FAST.max_deliveries)
    queue = subscriber.register("r1")
    worker, task = await start_worker(redis_async, redis_names, name="w2")
    (chunk,) = await collect(queue, timeout=10)
    await stop_worker(worker, task)
    assert chunk.error is not None and chunk.error.code == "worker_failure"
    assert await backlog(redis_async, redis_names, "echo") == 0
    dead = await redis_async.xrange(redis_names.dead_letter_stream("echo"))
    assert len(dead) == 1
    assert RequestPayload.decode(dead[0][1][b"p"]).request_id == "r1"


async def test_stop_hands_unfinished_work_back_for_immediate_takeover(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    settings = FAST.model_copy(update={"shutdown_grace_s": 0.0})
    worker, task = await start_worker(redis_async, redis_names, settings, step_delay_s=0.01)
    queue = subscriber.register("r1")
    await enqueue(
        redis_async,
        redis_names,
        payload(subscriber.channel, "r1", max_tokens=300, stream=True, use_speculative=False),
        0,
    )
    await queue.get()
    await stop_worker(worker, task)
    pending = await redis_async.xpending_range(
        redis_names.request_stream("echo"), CONSUMER_GROUP, min="-", max="+", count=10
    )
    assert len(pending) == 1
    assert pending[0]["time_since_delivered"] >= int(FAST.lease_s * 1000)
    assert await redis_async.get(redis_names.worker_key("echo", "w1")) is None


async def test_a_request_over_the_token_budget_waits_for_room(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    settings = FAST.model_copy(update={"max_batch_tokens": 50})
    worker, task = await start_worker(redis_async, redis_names, settings, step_delay_s=0.005)
    first_queue, second_queue = subscriber.register("first"), subscriber.register("second")
    for request_id in ("first", "second"):  # 3 prompt + 30 new tokens each: only one fits in 50
        request = payload(subscriber.channel, request_id, max_tokens=30, stream=True, use_speculative=False)
        await enqueue(redis_async, redis_names, request, 0)
    first, second = await collect(first_queue), await collect(second_queue)
    await stop_worker(worker, task)
    assert second[0].published_at >= first[-1].published_at
    assert "".join(chunk.text for chunk in second) == continuation("abc", 30)


async def test_while_the_engine_defers_a_request_the_rest_stay_in_the_stream(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    """Requests over the budget wait in the stream, where another worker can take them, not in this worker."""
    settings = FAST.model_copy(update={"max_batch_tokens": 50})
    worker, task = await start_worker(redis_async, redis_names, settings, step_delay_s=0.02)
    queues = {request_id: subscriber.register(request_id) for request_id in ("first", "second", "third")}
    for request_id in ("first", "second"):  # 3 prompt + 30 new tokens each: only one fits in 50
        request = payload(subscriber.channel, request_id, max_tokens=30, stream=True, use_speculative=False)
        await enqueue(redis_async, redis_names, request, 0)
    await queues["first"].get()  # the first runs
    async with asyncio.timeout(5):
        while not worker._engine_full:  # the second is deferred
            await asyncio.sleep(0.005)
    third = payload(subscriber.channel, "third", max_tokens=30, stream=True, use_speculative=False)
    await enqueue(redis_async, redis_names, third, 0)
    await asyncio.sleep(0.3)  # several steps and syncs of the worker
    pending = await redis_async.xpending(redis_names.request_stream("echo"), CONSUMER_GROUP)
    assert pending["pending"] == 2
    third_chunks = await collect(queues["third"], timeout=20)
    await stop_worker(worker, task)
    assert "".join(chunk.text for chunk in third_chunks) == continuation("abc", 30)


# --- one request fails alone ----------------------------------------------------------------------------------

SLOW_ENCODE_S = 1.0


class FaultyEcho(EchoEngine):
    """The echo engine, failing where a prompt says so: `fail:encode` (tokenising raises), `fail:add` (admission
    raises), `fail:row` (an error event at its first step), `fail:step` (every step raises while it is in the
    batch); `slow:encode` takes SLOW_ENCODE_S to tokenise."""

    def encode(self, prompt: str | Sequence[ChatMessage]) -> list[int]:
        text = prompt if isinstance(prompt, str) else chat_prompt(prompt)
        if "fail:encode" in text:
            raise ValueError("the tokenizer broke")
        if "slow:encode" in text:
            time.sleep(SLOW_ENCODE_S)
        return super().encode(prompt)

    def add(self, request: GenerationRequest) -> None:
        if b"fail:add" in bytes(request.prompt_ids):
            raise RuntimeError("no room in the cache")
        super().add(request)

    def step(self) -> list[TokenEvent]:
        prompts = {request_id: bytes(row.request.prompt_ids) for request_id, row in self._rows.items()}
        if any(b"fail:step" in prompt for prompt in prompts.values()):
            raise RuntimeError("device lost")
        failing = [request_id for request_id, prompt in prompts.items() if b"fail:row" in prompt]
        for request_id in failing:
            self.cancel(request_id)
        failed = [
            TokenEvent(request_id, (), "", None, 0, 0, error="sampling failed: nan") for request_id in failing
        ]
        return failed + super().step()


async def _acknowledged_everything(redis: aioredis.Redis, names: RedisNames) -> bool:
    pending = await redis.xpending(names.request_stream("echo"), CONSUMER_GROUP)
    return pending["pending"] == 0 and await backlog(redis, names, "echo") == 0


async def _submit(
    redis: aioredis.Redis, names: RedisNames, subscriber: TokenSubscriber, request_id: str, **fields
) -> asyncio.Queue[Chunk]:
    queue = subscriber.register(request_id)
    await enqueue(redis, names, payload(subscriber.channel, request_id, **fields), 0)
    return queue


async def test_each_kind_of_failure_fails_its_request_alone_without_redelivery(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    """A stream runs while requests fail in each phase: each failing client gets its error, the stream completes
    exactly, every entry is acknowledged (nothing is redelivered) and the worker goes on."""
    engine = FaultyEcho(step_delay_s=0.01)
    worker, task = await start_worker(redis_async, redis_names, engine=engine)
    running = await _submit(
        redis_async, redis_names, subscriber, "running", max_tokens=80, stream=True, use_speculative=False
    )
    await running.get()
    expected = {
        "encode": ("fail:encode", 500, "request_failed"),
        "invalid": ("abc", 400, "invalid_request_error"),
        "add": ("fail:add", 500, "request_failed"),
        "row": ("fail:row", 500, "generation_failed"),
    }
    queues = {
        name: await _submit(
            redis_async,
            redis_names,
            subscriber,
            name,
            prompt=prompt,
            **({"top_p": 0.0} if name == "invalid" else {}),
        )
        for name, (prompt, _, _) in expected.items()
    }
    for name, (_, status, code) in expected.items():
        (chunk,) = await collect(queues[name])
        assert chunk.error is not None, name
        assert (chunk.error.status, chunk.error.code) == (status, code), chunk.error
        assert chunk.attempt == 1
    rest = await collect(running)
    assert rest[-1].finish_reason == "length" and rest[-1].error is None
    assert not task.done(), "the worker goes on"
    async with asyncio.timeout(2):
        while not await _acknowledged_everything(redis_async, redis_names):
            await asyncio.sleep(0.01)
    later = await collect(await _submit(redis_async, redis_names, subscriber, "later", max_tokens=5))
    assert later[-1].text == continuation("abc", 5)
    await stop_worker(worker, task)


async def test_a_failed_step_fails_its_requests_with_503_and_the_worker_goes_on(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names, engine=FaultyEcho(step_delay_s=0.01))
    first = await _submit(redis_async, redis_names, subscriber, "first", max_tokens=300, stream=True)
    await first.get()
    doomed = await _submit(redis_async, redis_names, subscriber, "doomed", prompt="fail:step")
    for queue in (first, doomed):
        chunks = await collect(queue)
        assert chunks[-1].error is not None
        assert (chunks[-1].error.status, chunks[-1].error.code) == (503, "engine_step_failed")
    later = await collect(await _submit(redis_async, redis_names, subscriber, "later", max_tokens=5))
    assert later[-1].text == continuation("abc", 5)
    assert not worker.broken and not task.done()
    assert await _acknowledged_everything(redis_async, redis_names)
    await stop_worker(worker, task)


async def test_a_worker_whose_engine_keeps_failing_steps_stops_to_be_replaced(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    settings = FAST.model_copy(update={"max_failed_steps_in_row": 2})
    worker, task = await start_worker(redis_async, redis_names, settings, engine=FaultyEcho())
    for name in ("one", "two"):
        (chunk,) = await collect(
            await _submit(redis_async, redis_names, subscriber, name, prompt="fail:step")
        )
        assert chunk.error is not None and chunk.error.status == 503
    await asyncio.wait_for(task, 10)
    assert worker.broken


class OutOfMemoryOnce(EchoEngine):
    """The echo engine, running the device out of memory once: at its first step holding `at_rows` rows."""

    def __init__(self, at_rows: int, step_delay_s: float = 0.01) -> None:
        super().__init__(step_delay_s=step_delay_s)
        self._at_rows = at_rows
        self.rows_per_step: list[int] = []
        self.raised_at: int | None = None  # index in rows_per_step

    def step(self) -> list[TokenEvent]:
        self.rows_per_step.append(len(self._rows))
        if self.raised_at is None and len(self._rows) >= self._at_rows:
            self.raised_at = len(self.rows_per_step) - 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().step()


async def test_an_out_of_memory_step_retries_its_requests_in_a_smaller_batch(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    """Both requests of the step that ran out of memory finish exactly as without it, the worker admits one row
    and then two again, and the failed step does not count toward stopping the worker."""
    engine = OutOfMemoryOnce(at_rows=2)
    settings = FAST.model_copy(update={"max_failed_steps_in_row": 1})
    worker, task = await start_worker(redis_async, redis_names, settings, engine=engine)
    streamed = await _submit(
        redis_async, redis_names, subscriber, "streamed", max_tokens=40, stream=True, use_speculative=False
    )
    first = await streamed.get()
    whole = await _submit(redis_async, redis_names, subscriber, "whole", max_tokens=20)
    chunks = [first, *await collect(streamed)]
    (result,) = await collect(whole)
    assert engine.raised_at is not None
    assert [chunk.error for chunk in chunks] == [None] * len(chunks)
    assert "".join(chunk.text for chunk in chunks) == continuation("abc", 40)
    assert [chunk.seq for chunk in chunks] == list(range(len(chunks)))
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (3, 40)
    assert result.error is None and result.text == continuation("abc", 20)
    assert (result.prompt_tokens, result.completion_tokens) == (3, 20)
    after = engine.rows_per_step[engine.raised_at + 1 : engine.raised_at + 3]
    assert after == [1, 2], "half the rows, then one more per successful step"
    assert not worker.broken and not task.done()
    assert await _acknowledged_everything(redis_async, redis_names)
    await stop_worker(worker, task)


async def test_a_request_out_of_memory_alone_gets_a_retryable_503_and_the_worker_goes_on(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    worker, task = await start_worker(redis_async, redis_names, engine=OutOfMemoryOnce(at_rows=1))
    (chunk,) = await collect(await _submit(redis_async, redis_names, subscriber, "alone"))
    assert chunk.error is not None
    assert (chunk.error.status, chunk.error.code) == (503, "out_of_memory")
    assert "retry" in chunk.error.message
    later = await collect(await _submit(redis_async, redis_names, subscriber, "later", max_tokens=5))
    assert later[-1].text == continuation("abc", 5)
    assert not worker.broken and not task.done()
    await stop_worker(worker, task)


async def test_tokenising_a_huge_prompt_does_not_stall_the_running_streams(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    """A prompt that takes a second to tokenise is prepared beside the decode loop: the running stream's chunks
    keep their pace meanwhile."""
    worker, task = await start_worker(redis_async, redis_names, engine=FaultyEcho(step_delay_s=0.01))
    running = await _submit(
        redis_async, redis_names, subscriber, "running", max_tokens=200, stream=True, use_speculative=False
    )
    await running.get()
    slow = await _submit(redis_async, redis_names, subscriber, "slow", prompt="slow:encode", max_tokens=3)
    chunks = await collect(running)
    (slow_chunk,) = await collect(slow)
    await stop_worker(worker, task)
    assert slow_chunk.text == continuation("slow:encode", 3)
    times = [chunk.published_at for chunk in chunks]
    assert times[-1] - times[0] > SLOW_ENCODE_S, "the slow prompt was tokenised while the stream ran"
    assert max(later - earlier for earlier, later in itertools.pairwise(times)) < 0.25


async def test_a_dead_workers_entry_is_taken_over_while_every_row_is_busy_and_goes_before_new_ones(
    redis_async: aioredis.Redis, redis_names: RedisNames, subscriber: TokenSubscriber
) -> None:
    settings = FAST.model_copy(update={"max_batch_size": 2})
    worker, task = await start_worker(redis_async, redis_names, settings, step_delay_s=0.01)
    busy = [
        await _submit(
            redis_async, redis_names, subscriber, name, max_tokens=250, stream=True, use_speculative=False
        )
        for name in ("busy-1", "busy-2")
    ]
    for queue in busy:
        await queue.get()
    orphan = subscriber.register("orphan")
    request = payload(subscriber.channel, "orphan", max_tokens=5, stream=True, use_speculative=False)
    orphan_entry = await _abandoned_entry(redis_async, redis_names, request)
    newcomer = await _submit(redis_async, redis_names, subscriber, "newcomer", max_tokens=5, stream=True)
    deadline = time.monotonic() + FAST.lease_s + 4 * FAST.heartbeat_interval_s
    while time.monotonic() < deadline:
        pending = await redis_async.xpending_range(
            redis_names.request_stream("echo"), CONSUMER_GROUP, min=orphan_entry, max=orphan_entry, count=1
        )
        if pending and pending[0]["consumer"] == b"w1":
            break
        await asyncio.sleep(0.05)
    assert pending[0]["consumer"] == b"w1", "taken over on schedule"
    assert worker.engine.num_active == 2, "while both rows were busy"
    orphan_chunks, newcomer_chunks = await collect(orphan), await collect(newcomer)
    await stop_worker(worker, task)
    assert orphan_chunks[0].published_at < newcomer_chunks[0].published_at
    assert "".join(chunk.text for chunk in orphan_chunks) == continuation("abc", 5)
