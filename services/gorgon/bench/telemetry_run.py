"""What `gorgon bench telemetry` measures (telemetry.py holds its flags and prints the table): the same constant
reply through three ASGI stacks, called directly, in alternating rounds."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tqdm import tqdm

from gorgon.api.telemetry import RequestTelemetry
from gorgon.core import tracing

ROUTE = "/v1/completions"


class DroppingExporter(SpanExporter):
    """Takes every span and keeps none: the tracing stack pays for its spans up to the export."""

    def export(self, spans: Sequence[object]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def constant_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def http_scope() -> Scope:
    headers = [
        (b"host", b"bench"),
        (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ]
    return {"type": "http", "method": "POST", "path": ROUTE, "headers": headers}


async def time_stack(app: ASGIApp, requests: int) -> float:
    """Microseconds per request through `app`."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    started = time.perf_counter()
    for _ in range(requests):
        await app(http_scope(), receive, send)
    return (time.perf_counter() - started) / requests * 1e6


def stacks() -> dict[str, tuple[ASGIApp, Callable[[], None]]]:
    """Each stack with the setup that makes its tracing state current."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    wrapped = RequestTelemetry(constant_app)
    return {
        "bare app": (constant_app, lambda: tracing.use_tracer_provider(None)),
        "telemetry, tracing off": (wrapped, lambda: tracing.use_tracer_provider(None)),
        "telemetry, tracing on": (wrapped, lambda: tracing.use_tracer_provider(provider)),
    }


async def measure(requests: int, rounds: int) -> dict[str, float]:
    timings: dict[str, list[float]] = {}
    chosen = stacks()
    for _ in tqdm(range(rounds), desc="rounds", file=sys.stderr):
        for name, (app, activate) in chosen.items():
            activate()
            timings.setdefault(name, []).append(await time_stack(app, requests))
    chosen["bare app"][1]()
    return {name: statistics.median(values) for name, values in timings.items()}
