"""One streamed request, timed chunk by chunk."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from gorgon_loadtest.record import ErrorType, StreamOutcome
from gorgon_loadtest.sse import DONE, Chunk, MalformedChunkError, SseDecoder, parse_chunk
from gorgon_loadtest.target import Target

ERROR_MESSAGE_LIMIT = 200


class _StreamTimer:
    """Folds the chunks of one stream into a StreamOutcome; times are seconds since the request was sent."""

    def __init__(self, outcome: StreamOutcome) -> None:
        self.outcome = outcome
        self.text_chunks = 0
        self.reported_tokens: int | None = None
        self.last_text_at: float | None = None

    def add(self, chunk: Chunk, at_s: float) -> None:
        self.outcome.chunks += 1
        if chunk.text:
            self._add_text(at_s)
        if chunk.finish_reason is not None:
            self.outcome.finish_reason = chunk.finish_reason
        if chunk.completion_tokens is not None:
            self.reported_tokens = chunk.completion_tokens
        if chunk.prompt_tokens is not None:
            self.outcome.prompt_tokens = chunk.prompt_tokens

    def _add_text(self, at_s: float) -> None:
        self.text_chunks += 1
        if self.last_text_at is None:
            self.outcome.ttft_s = at_s
        else:
            self.outcome.itls_s.append(at_s - self.last_text_at)
        self.last_text_at = at_s

    def finish(self) -> None:
        tokens = self.reported_tokens if self.reported_tokens is not None else self.text_chunks
        self.outcome.output_tokens = tokens


async def stream_request(
    client: httpx.AsyncClient, target: Target, body: dict[str, Any], timeout_s: float
) -> StreamOutcome:
    """POST `body` (with stream=true) and time its chunks; failures are recorded, never raised."""
    outcome = StreamOutcome()
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await _consume_stream(client, target, body, sent, outcome)
    except (TimeoutError, httpx.TimeoutException):
        _fail(outcome, ErrorType.TIMEOUT, f"no complete answer within {timeout_s:g} s")
    except httpx.ConnectError as exc:
        _fail(outcome, ErrorType.CONNECT, str(exc) or type(exc).__name__)
    except httpx.TransportError as exc:
        _fail(outcome, ErrorType.TRANSPORT, str(exc) or type(exc).__name__)
    except MalformedChunkError as exc:
        _fail(outcome, ErrorType.MALFORMED, str(exc))
    outcome.e2e_s = time.perf_counter() - sent
    return outcome


async def _consume_stream(
    client: httpx.AsyncClient, target: Target, body: dict[str, Any], sent: float, outcome: StreamOutcome
) -> None:
    async with client.stream("POST", target.request_url, json=body) as response:
        outcome.status = response.status_code
        if response.status_code != httpx.codes.OK:
            await response.aread()
            _fail(outcome, f"http_{response.status_code}", _error_text(response))
            return
        timer = _StreamTimer(outcome)
        decoder = SseDecoder()
        async for line in response.aiter_lines():
            payload = decoder.feed(line)
            if payload is not None and _take_payload(payload, time.perf_counter() - sent, timer, target):
                return
        trailing = decoder.flush()
        if trailing is not None and _take_payload(trailing, time.perf_counter() - sent, timer, target):
            return
        _fail(outcome, ErrorType.INCOMPLETE, "the stream ended without data: [DONE]")


def _take_payload(payload: str, at_s: float, timer: _StreamTimer, target: Target) -> bool:
    """Apply one event; True when the stream is over (its [DONE], or an error event)."""
    if payload == DONE:
        if timer.outcome.finish_reason is None:
            _fail(timer.outcome, ErrorType.TRUNCATED, "data: [DONE] came before any finish_reason")
        timer.finish()
        return True
    chunk = parse_chunk(payload, target.endpoint)
    if chunk.error is not None:
        _fail(timer.outcome, ErrorType.STREAM_ERROR, chunk.error)
        return True
    timer.add(chunk, at_s)
    return False


def _fail(outcome: StreamOutcome, error_type: str, message: str) -> None:
    outcome.error_type = str(error_type)
    outcome.error = message[:ERROR_MESSAGE_LIMIT]


def _error_text(response: httpx.Response) -> str:
    """The OpenAI-style error message of a failed response, else the start of its body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:ERROR_MESSAGE_LIMIT]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return json.dumps(body)[:ERROR_MESSAGE_LIMIT]
