"""Per-request telemetry of the worker: counters of what the engine produced, and the request's spans.

The spans continue the API's trace (the traceparent in the Redis message), one per phase:

    gorgon.queue_wait   enqueue (the stream entry's id is its Redis time) → admission by this worker
    gorgon.prefill      admission → the first tokens (the engine's prefill step)
    gorgon.decode       first tokens → final chunk published (or cancelled, or superseded)

With tracing off only the counters are kept (one small record per running request).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, StatusCode

from gorgon.core import tracing
from gorgon.core.protocol import RequestPayload
from gorgon.engine.interface import TokenEvent
from gorgon.worker import metrics

NS_PER_MS = 1_000_000
FINISH_REASONS = frozenset({"stop", "length"})


def enqueued_at_ns(entry_id: str) -> int | None:
    """When the stream entry was added, from its id (`<unix ms>-<seq>`, Redis server time)."""
    millis, _, _ = entry_id.partition("-")
    return int(millis) * NS_PER_MS if millis.isdigit() else None


@dataclass
class RequestTrace:
    """What the observer keeps about one running request."""

    parent: Context | None
    attributes: dict[str, str | int]
    prefill: Span | None
    root: Span | None = None
    decode: Span | None = None
    produced: bool = False
    completion_tokens: int = 0


class RequestObserver:
    """Records a worker's requests as they are admitted, produce tokens and leave."""

    def __init__(self) -> None:
        self._requests: dict[str, RequestTrace] = {}

    def admitted(self, entry_id: str, payload: RequestPayload, *, redelivered: bool) -> None:
        now_ns = time.time_ns()
        enqueued_ns = enqueued_at_ns(entry_id)
        if enqueued_ns is not None and not redelivered:
            metrics.QUEUE_WAIT.observe(max(0, now_ns - enqueued_ns) / 1e9)
        attributes: dict[str, str | int] = {
            "gorgon.request_id": payload.request_id,
            "gen_ai.request.model": payload.model,
            "gorgon.redelivered": int(redelivered),
        }
        parent, root = _parent_context(payload, attributes, enqueued_ns or now_ns)
        if enqueued_ns is not None:
            queue_span = tracing.start_span("gorgon.queue_wait", parent, enqueued_ns, attributes)
            if queue_span is not None:
                queue_span.end(end_time=max(now_ns, enqueued_ns))
        prefill = tracing.start_span("gorgon.prefill", parent, now_ns, attributes)
        self._requests[payload.request_id] = RequestTrace(parent, attributes, prefill, root)

    def token_event(self, event: TokenEvent) -> None:
        """One engine step's output for one request."""
        metrics.GENERATED_TOKENS.inc(len(event.token_ids))
        if event.drafted_tokens:
            metrics.SPECULATIVE_STEPS.inc()
            metrics.SPECULATIVE_DRAFT_TOKENS.inc(event.drafted_tokens)
            metrics.SPECULATIVE_ACCEPTED_TOKENS.inc(event.accepted_tokens)
        request = self._requests.get(event.request_id)
        if request is None:
            return
        request.completion_tokens = event.completion_tokens
        if request.produced:
            return
        request.produced = True
        metrics.PROMPT_TOKENS.inc(event.prompt_tokens)
        if request.prefill is not None:
            request.prefill.set_attribute("gen_ai.usage.input_tokens", event.prompt_tokens)
            request.prefill.end()
            request.decode = tracing.start_span("gorgon.decode", request.parent, None, request.attributes)

    def finished(self, request_id: str, reason: str) -> None:
        """The request's final chunk is published (`reason`: its finish reason, or `error`)."""
        metrics.FINISHED.labels(reason).inc()
        self._end(request_id, reason)

    def cancelled(self, request_id: str) -> None:
        """The client went away; the request left the batch."""
        metrics.CANCELLED.inc()
        self._end(request_id, "cancelled")

    def superseded(self, request_id: str) -> None:
        """Another worker took the request over; this attempt stops."""
        self._end(request_id, "superseded")

    def _end(self, request_id: str, outcome: str) -> None:
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        for span in (request.prefill, request.decode, request.root):
            if span is None or not span.is_recording():
                continue
            span.set_attribute("gorgon.outcome", outcome)
            span.set_attribute("gen_ai.usage.output_tokens", request.completion_tokens)
            if outcome in FINISH_REASONS:
                span.set_attribute("gen_ai.response.finish_reasons", [outcome])
            elif outcome == "error":
                span.set_status(StatusCode.ERROR)
            span.end()


def _parent_context(
    payload: RequestPayload, attributes: dict[str, str | int], started_ns: int
) -> tuple[Context | None, Span | None]:
    """The API's span from the message's traceparent; without one (an API with tracing off and a caller that
    sent none), a worker root span `gorgon.worker.request` so the request's phases still form one trace."""
    if tracing.tracer() is None:
        return None, None
    parent = tracing.context_from_traceparent(payload.traceparent)
    if parent is not None:
        return parent, None
    root = tracing.start_span("gorgon.worker.request", None, started_ns, attributes)
    if root is None:
        return None, None
    return trace.set_span_in_context(root), root
