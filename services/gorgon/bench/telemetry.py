"""`gorgon bench telemetry`: what the API's per-request telemetry (RequestTelemetry: metrics, and the request
span when tracing is on) costs, in microseconds per request, side by side in one run.

Three ASGI stacks answer the same constant reply, called directly (no sockets, so the figure is the middleware's
own cost): the bare app, the app under RequestTelemetry with tracing off, and with tracing on (spans go to an
exporter that drops them, through the SDK's batch processor as in production). Rounds alternate the stacks so
machine noise hits them alike; the median round is reported. The measuring is telemetry_run.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

DEFAULT_REQUESTS = 20_000
DEFAULT_ROUNDS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests per stack per round")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="alternating rounds")


def run(args: argparse.Namespace) -> int:
    from gorgon.bench.telemetry_run import measure  # the API and OpenTelemetry load only here

    medians = asyncio.run(measure(args.requests, args.rounds))
    sys.stdout.write(table(medians))
    return 0


def table(medians: dict[str, float]) -> str:
    bare = medians["bare app"]
    lines = ["| stack | µs per request | added over the bare app |", "|---|---:|---:|"]
    for name, value in medians.items():
        lines.append(f"| {name} | {value:.1f} | {value - bare:+.1f} µs |")
    return "\n".join(lines) + "\n"
