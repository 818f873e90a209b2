"""With an in-memory span exporter, the API's request span and the worker's queue-wait, prefill and decode
spans of the same request form one trace: the traceparent travels in the Redis message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from observability_platform import WORKER_SETTINGS, InProcessPlatform
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gorgon.core import tracing
from gorgon.core.protocol import RequestPayload, WireSampling
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.queue import enqueue
from gorgon.engine.echo import EchoEngine
from gorgon.worker.main import Worker

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
WORKER_SPANS = ("gorgon.queue_wait", "gorgon.prefill", "gorgon.decode")
MAX_TOKENS = 6


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.use_tracer_provider(tracing.in_memory_provider(exporter))
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)


async def finished_spans(exporter: InMemorySpanExporter, count: int) -> dict[str, ReadableSpan]:
    """The spans by name once `count` have ended (the worker ends its last span just after publishing)."""
    for _ in range(200):
        spans = exporter.get_finished_spans()
        if len(spans) >= count:
            return {span.name: span for span in spans}
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {[span.name for span in exporter.get_finished_spans()]} ended")


async def test_worker_spans_join_the_callers_trace_under_the_api_span(
    exported: InMemorySpanExporter, platform: InProcessPlatform
) -> None:
    body = {"prompt": "abc", "max_tokens": MAX_TOKENS, "stream": True}
    reply = await platform.api.post("/v1/completions", json=body, headers={"traceparent": CLIENT_TRACEPARENT})
    assert reply.status_code == 200
    spans = await finished_spans(exported, 1 + len(WORKER_SPANS))
    api = spans["POST /v1/completions"]
    assert api.kind == SpanKind.SERVER
    assert f"{api.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert f"{api.parent.span_id:016x}" == CLIENT_SPAN_ID
    assert api.attributes["http.response.status_code"] == 200
    request_id = api.attributes["gorgon.request_id"]
    for name in WORKER_SPANS:
        span = spans[name]
        assert span.context.trace_id == api.context.trace_id, name
        assert span.parent.span_id == api.context.span_id, name
        assert span.attributes["gorgon.request_id"] == request_id, name
    queue, prefill, decode = (spans[name] for name in WORKER_SPANS)
    assert queue.start_time <= queue.end_time <= prefill.start_time + 1_000_000  # entry ids have ms precision
    assert prefill.end_time <= decode.start_time <= decode.end_time <= api.end_time
    assert prefill.attributes["gen_ai.usage.input_tokens"] == len("abc")
    assert decode.attributes["gen_ai.usage.output_tokens"] == MAX_TOKENS
    assert decode.attributes["gorgon.outcome"] == "length"
    assert tuple(decode.attributes["gen_ai.response.finish_reasons"]) == ("length",)


async def test_a_request_without_traceparent_starts_a_trace_the_worker_joins(
    exported: InMemorySpanExporter, platform: InProcessPlatform
) -> None:
    reply = await platform.api.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
    assert reply.status_code == 200
    spans = await finished_spans(exported, 1 + len(WORKER_SPANS))
    api = spans["POST /v1/completions"]
    assert api.parent is None
    assert {span.context.trace_id for span in spans.values()} == {api.context.trace_id}


async def test_rejected_requests_get_a_span_with_their_status_and_no_worker_spans(
    exported: InMemorySpanExporter, platform: InProcessPlatform
) -> None:
    reply = await platform.api.post("/v1/completions", json={"prompt": "x", "max_tokens": 10**9})
    assert reply.status_code == 400
    spans = await finished_spans(exported, 1)
    await asyncio.sleep(0.05)
    assert [span.name for span in exported.get_finished_spans()] == ["POST /v1/completions"]
    assert spans["POST /v1/completions"].attributes["http.response.status_code"] == 400


async def test_a_message_without_traceparent_gets_a_worker_root_span(
    exported: InMemorySpanExporter, redis_url: str, redis_names: RedisNames
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    worker = Worker(EchoEngine(), redis, redis_names, WORKER_SETTINGS, "untraced-caller")
    running = asyncio.create_task(worker.run())
    try:
        sampling = WireSampling(max_tokens=MAX_TOKENS)
        payload = RequestPayload(
            "r-untraced", "echo", sampling, time.time() + 30, False, "nobody-listens", "abc"
        )
        assert await enqueue(redis, redis_names, payload, 0) is not None
        spans = await finished_spans(exported, 1 + len(WORKER_SPANS))
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, 10)
        await redis.aclose()
    root = spans["gorgon.worker.request"]
    assert root.parent is None
    for name in WORKER_SPANS:
        assert spans[name].context.trace_id == root.context.trace_id, name
        assert spans[name].parent.span_id == root.context.span_id, name
