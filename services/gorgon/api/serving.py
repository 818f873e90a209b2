"""One generation request end to end, shared by /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gorgon.api import metrics
from gorgon.api.choices import Candidate, all_or_none, chosen, fan_out, indexed, merged, usage_of
from gorgon.api.deps import ApiState
from gorgon.api.errors import OpenAIError
from gorgon.api.generation import Waiting
from gorgon.api.openai_format import ChoiceResult, Kind, ReplyShape
from gorgon.api.registry import ServedModel
from gorgon.api.schemas import SamplingFields
from gorgon.api.telemetry import request_identified
from gorgon.api.tool_calls import ReplyPiece, ToolCallReader
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
    prompts: tuple[str, ...] | None = None,
    messages: tuple[tuple[str, str], ...] | None = None,
) -> Response:
    """Serve a completion (`prompts`) or a chat (`messages`): its choices enqueued, relayed and merged."""
    settings = state.settings
    model = await state.registry.resolve(body.model, settings.retry_after_s)
    metrics.serve_model_of(request.scope, model.name)
    max_tokens = _checked_max_tokens(body.requested_max_tokens() or settings.default_max_tokens, model, state)
    base = RequestPayload(
        request_id=f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
        model=model.name,
        sampling=wire_sampling(body, max_tokens),
        deadline=time.time() + settings.request_timeout_s,
        stream=body.stream,
        reply_to=state.gateway.reply_channel,
        prompt=prompts[0] if prompts else None,
        messages=messages,
        traceparent=tracing.current_traceparent() or request.headers.get("traceparent"),
    )
    request_identified(base)
    candidates = fan_out(base, prompts, body.candidates_per_prompt())
    shape = ReplyShape.new(
        kind,
        base.request_id,
        model.name,
        logprobs=body.logprobs_asked() is not None,
        usage_in_chunks=body.wants_usage_chunk(),
        tool_calling=body.tool_calling(),
    )
    try:
        if body.stream:
            return await _streaming_reply(request, state, candidates, shape)
        return await _whole_reply(request, state, candidates, shape, body.n)
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


def _checked_min_tokens(min_tokens: int | None, max_tokens: int) -> int:
    if min_tokens is not None and min_tokens > max_tokens:
        raise OpenAIError(
            400,
            f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})",
            param="min_tokens",
            code="invalid_value",
        )
    return min_tokens or 0


def wire_sampling(body: SamplingFields, max_tokens: int) -> WireSampling:
    """The sampling parameters every candidate of the request shares (`fan_out` varies the seed). With more
    candidates than choices (`best_of`), the chosen tokens' logprobs rank them, so they are asked for."""
    logprobs = body.logprobs_asked()
    if logprobs is None and body.candidates_per_prompt() > body.n:
        logprobs = 0
    return WireSampling(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_sequences(),
        use_speculative=body.use_speculative,
        logprobs=logprobs,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        logit_bias=body.logit_bias_pairs(),
        min_tokens=_checked_min_tokens(body.min_tokens, max_tokens),
        ignore_eos=body.ignore_eos,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        response_format=body.wire_response_format(),
    )


async def _whole_reply(
    request: Request, state: ApiState, candidates: list[Candidate], shape: ReplyShape, n: int
) -> Response:
    finals = await until_disconnected(
        request,
        all_or_none([_final_chunk(state.gateway.generate(candidate.payload)) for candidate in candidates]),
    )
    choices = [
        ChoiceResult(index, final.text, final.finish_reason, final.logprobs)
        for index, final in chosen(candidates, finals, n)
    ]
    reply = shape.whole(choices, *usage_of(candidates, finals))
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
    request: Request, state: ApiState, candidates: list[Candidate], shape: ReplyShape
) -> Response:
    """Server-sent events, their head sent as soon as every candidate is queued (a refusal is still an HTTP
    error of its own); whatever fails later is an error event in the stream. The first candidate's stream
    gives the time-to-first-token and inter-token metrics."""
    streams = [state.gateway.events(candidate.payload) for candidate in candidates]
    streams[0] = metrics.observed_stream(streams[0], request.scope)
    try:
        # each stream's first item says its request is queued
        await until_disconnected(request, all_or_none([anext(stream) for stream in streams]))
    except BaseException:
        for stream in streams:
            await stream.aclose()
        raise
    events = merged(streams) if len(streams) > 1 else indexed(streams[0])
    sse = _sse_events(events, candidates, shape, state.settings.expose_timing)
    return StreamingResponse(sse, media_type="text/event-stream", headers=SSE_HEADERS)


@dataclass
class _StreamedChoice:
    """What a stream has sent of one choice; `reader` reads a chat choice's tool call (tool_calls.py)."""

    reader: ToolCallReader | None = None
    opened: bool = False
    text_sent: int = 0
    final: Chunk | None = None

    def event(self, shape: ReplyShape, index: int, chunk: Chunk) -> dict[str, Any] | None:
        """The choice's event for `chunk`, None when it has nothing to say: nothing said, not final, and no
        logprobs asked. Tokens whose text is held back (it may begin a stop sequence, or be part of a tool call
        not yet sent) still get an event of empty text when their logprobs were asked, as vLLM sends them, so
        the logprobs cover every token."""
        if chunk.final:
            self.final = chunk
        said, finish_reason = self._said(chunk)
        if said.is_empty() and not chunk.final and not (shape.logprobs and chunk.logprobs):
            return None
        data = shape.delta(
            index,
            said.content,
            finish_reason,
            first=not self.opened,
            logprobs=chunk.logprobs,
            text_offset=self.text_sent,
            tool_call=said.call,
        )
        self.opened = True
        self.text_sent += len(chunk.text)
        return data

    def _said(self, chunk: Chunk) -> tuple[ReplyPiece, str | None]:
        """What `chunk` says, and the finish_reason (None before the final chunk)."""
        if self.reader is None:
            return ReplyPiece(chunk.text), chunk.finish_reason if chunk.final else None
        said = self.reader.read(chunk.text)
        if not chunk.final:
            return said, None
        last, finish_reason = self.reader.end(chunk.finish_reason)
        return said.then(last), finish_reason


async def _sse_events(
    events: AsyncGenerator[tuple[int, Chunk | Waiting], None],
    candidates: list[Candidate],
    shape: ReplyShape,
    expose_timing: bool,
) -> AsyncGenerator[bytes, None]:
    """The stream's events: a delta per chunk with something to say (choice index = candidate position: a
    stream has no `best_of`), a keep-alive comment per `Waiting` marker; after every choice's final chunk, the
    usage chunk if asked for."""
    choices = [_StreamedChoice(shape.reader()) for _ in candidates]
    try:
        async for index, item in events:
            if isinstance(item, Waiting):
                yield KEEPALIVE_COMMENT
                continue
            data = choices[index].event(shape, index, item)
            if data is not None:
                if expose_timing:
                    data["gorgon_published_at"] = item.published_at
                yield _sse(data)
        finals = [choice.final for choice in choices]
        if shape.usage_in_chunks and all(finals):
            yield _sse(shape.usage_chunk(*usage_of(candidates, [final for final in finals if final])))
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
