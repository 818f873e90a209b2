"""`gorgon bench platform`: the platform's own overhead, measured with the echo engine on this machine.

It starts a private Redis (unless REDIS_URL is set), one API process and one echo worker, then measures:

    throughput   closed loop, --concurrency keep-alive connections, non-streaming: requests/s sustained, next to
                 the same loop against a constant FastAPI route (bench/ceiling.py) and Redis PING round trips,
                 which show what this machine allows at the moment of the run
    latency      open loop at --rate requests/s, non-streaming: end-to-end latency next to the latency of the
                 same request run on an in-process echo engine (the difference is what the platform adds); each
                 request is timed from the moment the load generator starts it (waits for a free connection
                 count), and how late the generator's own timer started it behind schedule is reported apart
    sse          streaming at --sse-rate streams/s on a worker with a --sse-step-delay per step: the delay from
                 the worker publishing a chunk to the client reading it as an SSE event

and prints a Markdown table (the figures for docs/benchmarks.md); --output also writes them as JSON. The
measuring is platform_run.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for throughput (default 32)")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="requests/s for the latency run (default 100)"
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per request (default 16)")
    parser.add_argument("--sse-rate", type=float, default=20.0, help="streams/s for the SSE run (default 20)")
    parser.add_argument("--sse-step-delay", type=float, default=0.02, help="echo step delay in the SSE run")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    from gorgon.bench.platform_run import measure_platform  # starts Redis, the API and a worker

    results = measure_platform(args)
    sys.stdout.write(render(results, args) + "\n")
    if args.output:
        args.output.write_text(json.dumps(results, default=asdict, indent=2))  # Figures as their fields
    return 0


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    ceiling, redis_rtt, cpu = (
        results["http_ceiling"],
        results["redis_round_trip"],
        results["cpu_ms_per_request"],
    )
    throughput, latency, engine, sse, lag = (
        results["throughput"],
        results["latency"],
        results["engine_in_process"],
        results["sse_delivery"],
        results["load_generator_lag"],
    )
    rows = [
        "| measurement | figure | target |",
        "|---|---|---|",
        f"| API throughput, non-streaming, {args.concurrency} connections, {args.max_tokens} tokens | "
        f"{throughput.per_second:.0f} req/s ({throughput.errors} errors) | ≥ 1000 req/s |",
        f"| HTTP ceiling: constant FastAPI route, plain uvicorn, same client | {ceiling.per_second:.0f} req/s | |",
        f"| platform throughput / HTTP ceiling | {throughput.per_second / ceiling.per_second:.2f} | |",
        f"| CPU per request: API / worker / Redis / load generator | {cpu['api']:.2f} / {cpu['worker']:.2f} / "
        f"{cpu['redis']:.2f} / {cpu['load_generator']:.2f} ms | |",
        f"| one API process's capacity on a core of its own (1000 / API CPU ms) | {1000 / cpu['api']:.0f} req/s"
        " | ≥ 1000 req/s |",
        f"| Redis round trip (PING), p50 / p99 | {redis_rtt.p50_ms:.3f} / {redis_rtt.p99_ms:.3f} ms | |",
        f"| end-to-end latency at {args.rate:.0f} req/s, p50 / p99 | {latency.p50_ms:.2f} / {latency.p99_ms:.2f} ms"
        f" ({latency.errors} errors) | |",
        f"| load generator's lateness behind its schedule (not counted above), p50 / p99 | {lag.p50_ms:.2f} / "
        f"{lag.p99_ms:.2f} ms | |",
        f"| same request on the engine in-process, p50 / p99 | {engine.p50_ms:.3f} / {engine.p99_ms:.3f} ms | |",
        f"| added latency (end-to-end percentile − in-process p50), p50 / p99 | {latency.p50_ms - engine.p50_ms:.2f} / "
        f"{latency.p99_ms - engine.p50_ms:.2f}"
        " ms | ≤ 2 / ≤ 5 ms |",
        f"| SSE chunk delivery (worker publish → client), p50 / p99, {args.sse_rate:.0f} streams/s | "
        f"{sse.p50_ms:.2f} / {sse.p99_ms:.2f} ms ({sse.requests} chunks, {sse.errors} failed streams) | p99 ≤ 2 ms |",
    ]
    return "\n".join(rows)
