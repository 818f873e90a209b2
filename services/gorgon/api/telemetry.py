"""Per-request telemetry of the API: one ASGI middleware that records the request metrics and opens the
request's server span (the parent of the worker's spans), for every route except the probes and /metrics.

It wraps the whole response, so a stream counts until its last byte, and a 413 from the body-size limit or a
401 from the key check is counted like any other answer.
"""

from __future__ import annotations

import time

import orjson
from opentelemetry.trace import Span, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gorgon.api import metrics
from gorgon.core import tracing
from gorgon.core.logs import bind_request_id
from gorgon.core.protocol import RequestPayload

MAX_ERROR_BODY_BYTES = 8192
UNKNOWN_REASON = "unknown"


class ResponseSeen:
    """What the middleware saw of the response: its status, and the body of a rejection (for its code)."""

    __slots__ = ("error_body", "status")

    def __init__(self) -> None:
        self.status = 500
        self.error_body = b""

    def see(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body" and metrics.is_rejection(self.status):
            room = MAX_ERROR_BODY_BYTES - len(self.error_body)
            self.error_body += message.get("body", b"")[: max(room, 0)]

    def rejection_reason(self) -> str:
        """The OpenAI error code of a rejection's body (`unknown` when it has none)."""
        try:
            code = orjson.loads(self.error_body)["error"]["code"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return UNKNOWN_REASON
        return str(code) if code else UNKNOWN_REASON


class RequestTelemetry:
    """ASGI middleware: request count, latency, in-flight and rejections, and the request's span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in metrics.PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        scope[metrics.STARTED_AT] = started = time.perf_counter()
        seen = ResponseSeen()

        async def watching_send(message: Message) -> None:
            seen.see(message)
            await send(message)

        metrics.IN_FLIGHT.inc()
        try:
            if tracing.tracer() is None:
                await self.app(scope, receive, watching_send)
            else:
                await self._traced(scope, receive, watching_send, seen)
        finally:
            metrics.IN_FLIGHT.dec()
            _record(scope, seen, time.perf_counter() - started)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, seen: ResponseSeen) -> None:
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        with tracing.server_span(scope["method"], _header(scope, b"traceparent"), attributes) as span:
            try:
                await self.app(scope, receive, send)
            finally:
                _describe_span(span, scope, seen.status)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _record(scope: Scope, seen: ResponseSeen, elapsed_s: float) -> None:
    endpoint = metrics.endpoint_of(scope)
    metrics.requests_counter(endpoint, seen.status).inc()
    metrics.latency_histogram(endpoint, metrics.model_of(scope)).observe(elapsed_s)
    if metrics.is_rejection(seen.status):
        metrics.REJECTED.labels(seen.rejection_reason()).inc()


def _describe_span(span: Span | None, scope: Scope, status: int) -> None:
    if span is None:
        return
    endpoint = metrics.endpoint_of(scope)
    span.update_name(f"{scope['method']} {endpoint}")
    span.set_attribute("http.route", endpoint)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


def request_identified(payload: RequestPayload) -> None:
    """The request has its id: tag this context's log records and the request span with it."""
    bind_request_id(payload.request_id)
    span = tracing.current_span()
    if span is not None:
        span.set_attributes(
            {
                "gorgon.request_id": payload.request_id,
                "gen_ai.operation.name": "chat" if payload.messages is not None else "text_completion",
                "gen_ai.request.model": payload.model,
                "gen_ai.request.max_tokens": payload.sampling.max_tokens,
            }
        )
