"""`gorgon bench telemetry`: what the API's per-request telemetry (RequestTelemetry: metrics, and the request
span when tracing is on) costs, in microseconds per request, side by side in one run.

Three ASGI stacks answer the same constant reply, called directly (no sockets, so the figure is the middleware's
own cost): the bare app, the app under RequestTelemetry with tracing off, and with tracing on (spans go to an
exporter that drops them, through the SDK's batch processor as in production). Rounds alternate the stacks so
machine noise hits them alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_REQUESTS = 20_000
DEFAULT_ROUNDS = 5
ROUTE = "/v1/completions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests per stack per round")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="alternating rounds")


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
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from gorgon.api.telemetry import RequestTelemetry  # noqa: PLC0415
    from gorgon.core import tracing  # noqa: PLC0415

    class DroppingExporter(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    wrapped = RequestTelemetry(constant_app)
    return {
        "bare app": (constant_app, lambda: tracing.use_tracer_provider(None)),
        "telemetry, tracing off": (wrapped, lambda: tracing.use_tracer_provider(None)),
        "telemetry, tracing on": (wrapped, lambda: tracing.use_tracer_provider(provider)),
    }


async def measure(requests: int, rounds: int) -> dict[str, float]:
    from tqdm import tqdm  # noqa: PLC0415

    timings: dict[str, list[float]] = {}
    chosen = stacks()
    for _ in tqdm(range(rounds), desc="rounds", file=sys.stderr):
        for name, (app, activate) in chosen.items():
            activate()
            timings.setdefault(name, []).append(await time_stack(app, requests))
    chosen["bare app"][1]()
    return {name: statistics.median(values) for name, values in timings.items()}


def table(medians: dict[str, float]) -> str:
    bare = medians["bare app"]
    lines = ["| stack | µs per request | added over the bare app |", "|---|---:|---:|"]
    for name, value in medians.items():
        lines.append(f"| {name} | {value:.1f} | {value - bare:+.1f} µs |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    medians = asyncio.run(measure(args.requests, args.rounds))
    sys.stdout.write(table(medians))
    return 0
