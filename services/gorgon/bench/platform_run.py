"""What `gorgon bench platform` measures (platform.py holds its flags and renders the table): it starts a
private Redis (unless REDIS_URL is set), one API process and one echo worker, and measures them and this
machine's limits in one run. The load generator talks to the API through gorgon_loadtest's lean HTTP/1.1
connection and reads SSE with gorgon_loadtest's decoder."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvloop
from redis.asyncio import Redis as AsyncRedis
from tqdm import tqdm

from gorgon.core.config import get_redis_settings
from gorgon.engine.echo import EchoEngine
from gorgon.engine.interface import GenerationRequest, SamplingParams
from gorgon.local.processes import LocalServices, free_port, spawn, stop_all
from gorgon.local.redis_server import start_private_redis
from gorgon_loadtest.http1 import Connection, encode_post
from gorgon_loadtest.sse import timed_payloads

log = logging.getLogger(__name__)

PROMPT = "Write a short history of the internet:"


@dataclass
class Figures:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def figures(latencies_s: list[float], errors: int, seconds: float) -> Figures:
    return Figures(
        len(latencies_s),
        errors,
        seconds,
        percentile(latencies_s, 0.5) * 1e3,
        percentile(latencies_s, 0.99) * 1e3,
    )


def _exit_on_sigterm(signum: int, _: object) -> None:
    raise SystemExit(128 + signum)


def measure_platform(args: argparse.Namespace) -> dict[str, Any]:
    """Start the platform, measure it and stop it; the figures by name (platform.py renders them)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the finally below stops the child processes
    url = get_redis_settings().url
    embedded = None
    if not url:
        embedded = start_private_redis()
        url = embedded.url
    services = LocalServices(url, f"gorgon-bench-{uuid.uuid4().hex[:8]}")
    try:
        return uvloop.run(_measure_all(services, args))
    finally:
        services.stop(grace_s=10)
        if embedded is not None:
            embedded.stop()


async def _measure_all(services: LocalServices, args: argparse.Namespace) -> dict[str, Any]:
    worker = services.start_worker("echo", 0.0)
    api = await asyncio.to_thread(services.start_api, expose_timing="true")
    api_process = services.processes[-1]
    host, port = api.removeprefix("http://").split(":")
    body = json.dumps({"prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0}).encode()
    results: dict[str, Any] = {}
    await closed_loop(host, int(port), body, args.concurrency, 1.0, "warm-up")
    before = await cpu_seconds(services.redis_url, api_process.pid, worker.pid)
    results["throughput"] = await closed_loop(
        host, int(port), body, args.concurrency, args.duration, "throughput"
    )
    after = await cpu_seconds(services.redis_url, api_process.pid, worker.pid)
    results["cpu_ms_per_request"] = {
        name: (after[name] - before[name]) * 1e3 / max(1, results["throughput"].requests) for name in after
    }
    results["http_ceiling"] = await http_ceiling(body, args.concurrency, args.duration)
    results["redis_round_trip"] = await redis_round_trips(services.redis_url, args.duration)
    results["latency"], results["load_generator_lag"] = await open_loop(
        host, int(port), body, args.rate, args.duration
    )
    results["engine_in_process"] = in_process_engine(args.max_tokens, int(args.rate * args.duration))
    await asyncio.to_thread(stop_all, [worker])
    sse_worker = services.start_worker("echo", args.sse_step_delay)
    stream_body = json.dumps(
        {"prompt": PROMPT, "max_tokens": args.max_tokens, "stream": True, "use_speculative": False}
    ).encode()
    await asyncio.to_thread(_wait_for_a_model, api, sse_worker)
    results["sse_delivery"] = await sse_delivery(host, int(port), stream_body, args.sse_rate, args.duration)
    return results


def _wait_for_a_model(api: str, worker: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not httpx.get(f"{api}/v1/models", timeout=5).json()["data"]:
        if worker.poll() is not None:
            raise RuntimeError(f"the SSE worker exited with status {worker.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("the SSE worker did not register")
        time.sleep(0.2)


def own_cpu_seconds() -> float:
    """User + system CPU time of this process (the load generator) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_seconds(redis_url: str, api_pid: int, worker_pid: int) -> dict[str, float]:
    """CPU time used so far by the API process, the worker process, the Redis server and this load generator."""
    client = AsyncRedis.from_url(redis_url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return {
        "api": process_cpu_seconds(api_pid),
        "worker": process_cpu_seconds(worker_pid),
        "redis": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "load_generator": own_cpu_seconds(),
    }


async def closed_loop(
    host: str, port: int, body: bytes, concurrency: int, duration: float, label: str
) -> Figures:
    request = encode_post(host, port, "/v1/completions", body)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration
    bar = tqdm(desc=label, unit=" req", leave=False)

    async def client() -> None:
        nonlocal errors
        connection = await Connection.open(host, port)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                status, _ = await connection.post(request)
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
                bar.update(1)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    bar.close()
    return figures(latencies, errors, time.perf_counter() - started)


async def open_loop(
    host: str, port: int, body: bytes, rate: float, duration: float
) -> tuple[Figures, Figures]:
    """Latency of requests started on a fixed schedule, and how late the generator started them (its lag)."""
    request = encode_post(host, port, "/v1/completions", body)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(max(4, int(rate // 10))):
        pool.put_nowait(await Connection.open(host, port))
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        started = time.perf_counter()
        lags.append(started - scheduled)
        connection = await pool.get()
        status, _ = await connection.post(request)
        if status == 200:
            latencies.append(time.perf_counter() - started)
        else:
            errors += 1
        pool.put_nowait(connection)

    total = int(rate * duration)
    start = time.perf_counter()
    tasks = []
    for index in tqdm(range(total), desc=f"latency at {rate:.0f}/s", unit=" req", leave=False):
        scheduled = start + index / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        await pool.get_nowait().close()
    return figures(latencies, errors, elapsed), figures(lags, 0, elapsed)


async def http_ceiling(body: bytes, concurrency: int, duration: float) -> Figures:
    """The same closed loop against a constant FastAPI route served the same way (see bench/ceiling.py)."""
    port = free_port()
    server = spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "gorgon.bench.ceiling:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ],
        os.environ,
    )
    try:
        await _wait_for_port("127.0.0.1", port)
        await closed_loop("127.0.0.1", port, body, concurrency, 1.0, "ceiling warm-up")
        return await closed_loop("127.0.0.1", port, body, concurrency, duration, "HTTP ceiling")
    finally:
        await asyncio.to_thread(stop_all, [server], 10)


async def _wait_for_port(host: str, port: int) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise TimeoutError(f"nothing listens on {host}:{port}")


async def redis_round_trips(redis_url: str, duration: float) -> Figures:
    """PING round trips from this process: the floor under every Redis step of a request."""
    client = AsyncRedis.from_url(redis_url)
    latencies = []
    started_all = time.perf_counter()
    try:
        while time.perf_counter() - started_all < min(duration, 3.0):
            started = time.perf_counter()
            await client.ping()
            latencies.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return figures(latencies, 0, time.perf_counter() - started_all)


def in_process_engine(max_tokens: int, repeats: int) -> Figures:
    """The same request on an echo engine in this process: encode, add, step to the end."""
    engine = EchoEngine()
    latencies = []
    started_all = time.perf_counter()
    for index in range(repeats):
        started = time.perf_counter()
        params = SamplingParams(max_new_tokens=max_tokens)
        engine.add(GenerationRequest(f"r{index}", tuple(engine.encode(PROMPT)), params))
        while engine.num_active:
            engine.step()
        latencies.append(time.perf_counter() - started)
    return figures(latencies, 0, time.perf_counter() - started_all)


async def sse_delivery(host: str, port: int, body: bytes, rate: float, duration: float) -> Figures:
    """Per SSE event: client receive time minus the worker's publish time (same machine clock)."""
    request = encode_post(host, port, "/v1/completions", body)
    delays: list[float] = []
    errors = 0

    async def one_stream() -> None:
        nonlocal errors
        connection = await Connection.open(host, port)
        arrivals: list[tuple[float, bytes]] = []
        try:
            async for piece in connection.post_stream(request):
                arrivals.append((time.time(), piece))
        except (RuntimeError, OSError, ValueError) as exc:
            log.warning("a stream failed: %s", exc)
            errors += 1
        finally:
            await connection.close()
        try:
            delays.extend(_publish_to_receive_delays(arrivals))
        except ValueError as exc:
            log.warning("a stream sent an event that is not JSON: %s", exc)
            errors += 1

    total = int(rate * duration)
    start = time.perf_counter()
    tasks = []
    for index in tqdm(range(total), desc=f"SSE at {rate:.0f} streams/s", unit=" stream", leave=False):
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one_stream()))
    await asyncio.gather(*tasks)
    return figures(delays, errors, time.perf_counter() - start)


def _publish_to_receive_delays(arrivals: list[tuple[float, bytes]]) -> list[float]:
    """Per SSE event of a stream: when the piece completing it arrived minus the worker's publish time. Decoded
    once the stream has ended, so that decoding one stream's events does not delay reading the others (the
    generator serves every stream from one process)."""
    delays = []
    for received, payload in timed_payloads(arrivals):
        if payload.startswith("{"):
            published = json.loads(payload).get("gorgon_published_at")
            if published:
                delays.append(received - published)
    return delays
