"""Closed-loop (fixed concurrency) and open-loop (Poisson arrivals) load, bounded by a request count, a
duration and a per-request timeout."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from tqdm import tqdm

from gorgon_loadtest.client import stream_request
from gorgon_loadtest.plan import Bounds, RequestSettings
from gorgon_loadtest.record import ErrorType, LoadLevel, Mode, RequestRecord, RunResult, StreamOutcome
from gorgon_loadtest.target import Endpoint, Target

log = logging.getLogger(__name__)


def request_body(endpoint: Endpoint, prompt: str, mode: Mode, settings: RequestSettings) -> dict[str, Any]:
    """The JSON body of one streamed request."""
    body: dict[str, Any] = {
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "stream": True,
        "use_speculative": mode is Mode.SPECULATIVE,
    }
    if settings.include_usage:
        body["stream_options"] = {"include_usage": True}
    if settings.model is not None:
        body["model"] = settings.model
    if endpoint is Endpoint.CHAT:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


class LoadRunner:
    """Sends the load of one LoadLevel at a time to a target, through a shared HTTP client."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        prompts: list[str],
        settings: RequestSettings,
        bounds: Bounds,
        *,
        seed: int = 0,
        show_progress: bool = True,
    ) -> None:
        self.client = client
        self.prompts = prompts
        self.settings = settings
        self.bounds = bounds
        self.seed = seed
        self.show_progress = show_progress

    async def warm_up(self, target: Target, mode: Mode, requests: int) -> None:
        """Send `requests` requests one by one and discard them (keeps first-call costs out of figures)."""
        for index in range(requests):
            await self._send(target, mode, index)

    async def run(self, target: Target, level: LoadLevel) -> RunResult:
        progress = tqdm(
            total=self.bounds.requests,
            desc=level.label,
            unit="req",
            disable=None if self.show_progress else True,
            leave=False,
        )
        cpu_started = time.process_time()
        run = _RunState(target=target, level=level, started=time.perf_counter(), progress=progress)
        with progress:
            if level.rate is None:
                await self._closed_loop(run, level.concurrency or 1)
            else:
                await self._open_loop(run, level.rate)
        wall_s = time.perf_counter() - run.started
        client_cpu_s = time.process_time() - cpu_started
        records = sorted(run.records, key=lambda record: record.index)
        log.info("%s: %d requests in %.1f s", level.label, len(records), wall_s)
        return RunResult(level=level, records=records, wall_s=wall_s, client_cpu_s=client_cpu_s)

    async def _closed_loop(self, run: _RunState, concurrency: int) -> None:
        next_index = iter(range(self.bounds.requests))
        deadline = run.started + self.bounds.duration_s

        async def user() -> None:
            for index in next_index:
                now = time.perf_counter()
                if now >= deadline:
                    return
                run.add(await self._timed_request(run, index, started_at=now))

        await asyncio.gather(*(user() for _ in range(concurrency)))

    async def _open_loop(self, run: _RunState, rate: float) -> None:
        arrivals = random.Random(self.seed)
        in_flight: set[asyncio.Task[None]] = set()
        next_arrival = run.started

        async def one(index: int, started_at: float) -> None:
            run.add(await self._timed_request(run, index, started_at=started_at))

        for index in range(self.bounds.requests):
            next_arrival += arrivals.expovariate(rate)
            if next_arrival >= run.started + self.bounds.duration_s:
                break
            await asyncio.sleep(max(0.0, next_arrival - time.perf_counter()))
            if len(in_flight) >= self.bounds.max_in_flight:
                run.add(self._dropped(run, index))
                continue
            task = asyncio.create_task(one(index, time.perf_counter()))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)

    async def _timed_request(self, run: _RunState, index: int, started_at: float) -> RequestRecord:
        """Send one request; its start is `started_at`, the clock reading that admitted it."""
        start_s = started_at - run.started
        outcome = await self._send(run.target, run.level.mode, index)
        return RequestRecord(level=run.level, index=index, start_s=start_s, outcome=outcome)

    async def _send(self, target: Target, mode: Mode, index: int) -> StreamOutcome:
        prompt = self.prompts[index % len(self.prompts)]
        body = request_body(target.endpoint, prompt, mode, self.settings)
        return await stream_request(self.client, target, body, self.bounds.timeout_s)

    def _dropped(self, run: _RunState, index: int) -> RequestRecord:
        outcome = StreamOutcome(
            e2e_s=0.0,
            error_type=ErrorType.CLIENT_OVERLOAD.value,
            error=f"not sent: {self.bounds.max_in_flight} requests already in flight (--max-in-flight)",
        )
        start_s = time.perf_counter() - run.started
        return RequestRecord(level=run.level, index=index, start_s=start_s, outcome=outcome)


@dataclass
class _RunState:
    """One run in progress: where it sends, when it started, what it recorded so far."""

    target: Target
    level: LoadLevel
    started: float
    progress: tqdm
    records: list[RequestRecord] = field(default_factory=list)

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)
        self.progress.update()
