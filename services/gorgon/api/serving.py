"""One generation request end to end, shared by /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gorgon.api import metrics
from gorgon.api.deps import ApiState
from gorgon.api.errors import OpenAIError
from gorgon.api.generation import Waiting
from gorgon.api.openai_format import Kind, ReplyShape
from gorgon.api.registry import ServedModel
from gorgon.api.schemas import SamplingFields
from gorgon.api.telemetry import request_identified
from gorgon.core import tracing
from gorgon.core.protocol import Chunk, RequestPayload, WireSampling

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_COMMENT = b": keep-alive\n\n"
CLIENT_CLOSED_STATUS = 499
DISCONNECT_WATCH_AFTER_S = 0.05
"""Work that takes longer than this gets a watcher for the client's disconnect (quick answers skip its cost)."""
T = TypeVar("T")


class ClientDisconnectedError(Exception):
    """The client went away before the answer was ready."""


async def serve_generation(
    request: Request,
    state: ApiState,
    body: SamplingFields,
    kind: Kind,
    *,
    max_tokens: int | None,
    prompt: str | None = None,
    messages: tuple[tuple[str, str], ...] | None = None,
) -> Response:
    settings = state.settings
    model = await state.registry.resolve(body.model, settings.retry_after_s)
    metrics.serve_model_of(request.scope, model.name)
    payload = RequestPayload(
        request_id=f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
        model=model.name,
        sampling=_sampling(
            body, _checked_max_tokens(max_tokens or settings.default_max_tokens, model, state)
        ),
        deadline=time.time() + settings.request_timeout_s,
        stream=body.stream,
        reply_to=state.gateway.reply_channel,
        prompt=prompt,
        messages=messages,
        traceparent=tracing.current_traceparent() or request.headers.get("traceparent"),
    )
    request_identified(payload)
    shape = ReplyShape.new(kind, payload.request_id, model.name)
    try:
        if body.stream:
            return await _streaming_reply(request, state, payload, shape, body)
        return await _whole_reply(request, state, payload, shape)
    except ClientDisconnectedError:
        return Response(status_code=CLIENT_CLOSED_STATUS)


def _checked_max_tokens(max_tokens: int, model: ServedModel, state: ApiState) -> int:
    if max_tokens > state.settings.max_tokens_limit:
        raise OpenAIError(
            400,
            f"max_tokens must be at most {state.settings.max_tokens_limit}",
            param="max_tokens",
            code="invalid_value",
        )
    if max_tokens >= model.context_length:
        raise OpenAIError(
            400,
            f"max_tokens ({max_tokens}) must be smaller than the model's context length ({model.context_length})",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens


def _sampling(body: SamplingFields, max_tokens: int) -> WireSampling:
    return WireSampling(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_sequences(),
        use_speculative=body.use_speculative,
    )


async def _whole_reply(
    request: Request, state: ApiState, payload: RequestPayload, shape: ReplyShape
) -> Response:
    final = await until_disconnected(request, _final_chunk(state.gateway.generate(payload)))
    reply = shape.whole(final.text, final.finish_reason, final.prompt_tokens, final.completion_tokens)
    return Response(orjson.dumps(reply), media_type="application/json")


async def _final_chunk(chunks: AsyncGenerator[Chunk, None]) -> Chunk:
    """The final chunk; the generator is closed here rather than left to the garbage collector's finaliser
    (which would schedule a task per request)."""
    try:
        async for chunk in chunks:
            if chunk.final:
                return chunk
    finally:
        await chunks.aclose()
    raise OpenAIError(502, "the worker ended the request without a result", type_="server_error")


async def _streaming_reply(
    request: Request,
    state: ApiState,
    payload: RequestPayload,
    shape: ReplyShape,
    body: SamplingFields,
) -> Response:
    """Server-sent events, their head sent as soon as the request is queued (a refusal is still an HTTP error
    of its own); whatever fails later is an error event in the stream."""
    events = metrics.observed_stream(state.gateway.events(payload), request.scope)
    try:
        queued = await until_disconnected(request, anext(events))
    except BaseException:
        await events.aclose()
        raise
    sse = _sse_events(queued, events, shape, body.wants_usage_chunk(), state.settings.expose_timing)
    return StreamingResponse(sse, media_type="text/event-stream", headers=SSE_HEADERS)


async def _sse_events(
    first: Chunk | Waiting,
    events: AsyncGenerator[Chunk | Waiting, None],
    shape: ReplyShape,
    include_usage: bool,
    expose_timing: bool,
) -> AsyncGenerator[bytes, None]:
    """The stream's events: a delta per chunk with text, a keep-alive comment per `Waiting` marker but the
    first (which says the request is queued: the response's head says as much)."""
    item, opening, after_first = first, True, False
    try:
        while True:
            if isinstance(item, Chunk):
                if item.text or item.final:
                    data = shape.delta(item.text, item.finish_reason if item.final else None, first=opening)
                    if expose_timing:
                        data["gorgon_published_at"] = item.published_at
                    yield _sse(data)
                    opening = False
                if item.final:
                    break
            elif after_first:
                yield KEEPALIVE_COMMENT
            after_first = True
            item = await anext(events)
        if include_usage:
            yield _sse(shape.usage_chunk(item.prompt_tokens, item.completion_tokens))
    except OpenAIError as exc:
        yield _sse(exc.body())
    finally:
        await events.aclose()
    yield b"data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, unless the client disconnects first (then `work` is cancelled: ClientDisconnectedError)."""
    work_task = asyncio.ensure_future(work)
    await asyncio.wait({work_task}, timeout=DISCONNECT_WATCH_AFTER_S)
    if work_task.done():
        return work_task.result()
    watch_task = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work_task.done():
            work_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OpenAIError):
                await work_task
        watch_task.cancel()
    if work_task.cancelled():
        raise ClientDisconnectedError
    return work_task.result()


async def _disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
