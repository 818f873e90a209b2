from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from loadtest_server import CHUNK_DELAY_S, SseServer

from gorgon_loadtest.plan import Bounds, RequestSettings
from gorgon_loadtest.record import LoadLevel, Mode, RequestRecord
from gorgon_loadtest.runner import LoadRunner
from gorgon_loadtest.target import Endpoint, Target, parse_target

PROMPTS = ["first prompt", "second prompt", "third prompt"]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        yield http


def make_runner(
    client: httpx.AsyncClient,
    server: SseServer,
    *,
    requests: int,
    duration_s: float = 60.0,
    max_tokens: int = 8,
    max_in_flight: int = 64,
) -> LoadRunner:
    bounds = Bounds(requests=requests, duration_s=duration_s, timeout_s=30.0, max_in_flight=max_in_flight)
    return LoadRunner(
        client,
        PROMPTS,
        RequestSettings(max_tokens=max_tokens, temperature=0.0),
        bounds,
        show_progress=False,
    )


def target_of(server: SseServer) -> Target:
    return parse_target(server.url, Endpoint.COMPLETIONS)


def most_in_flight(records: list[RequestRecord]) -> int:
    """The largest number of requests outstanding at once, from their start and end times."""
    edges = [(r.start_s, 1) for r in records] + [(r.start_s + r.outcome.e2e_s, -1) for r in records]
    in_flight = peak = 0
    for _, change in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        in_flight += change
        peak = max(peak, in_flight)
    return peak


async def test_closed_loop_sends_every_request_with_at_most_c_in_flight(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    runner = make_runner(client, sse_server, requests=12)
    result = await runner.run(target_of(sse_server), LoadLevel(mode=Mode.STANDARD, concurrency=3))
    assert [record.index for record in result.records] == list(range(12))
    assert all(record.outcome.ok and record.outcome.output_tokens == 8 for record in result.records)
    assert 1 < most_in_flight(result.records) <= 3
    last_end = max(record.start_s + record.outcome.e2e_s for record in result.records)
    assert last_end <= result.wall_s


async def test_prompts_are_used_in_turn(client: httpx.AsyncClient, sse_server: SseServer) -> None:
    sse_server.bodies.clear()
    await make_runner(client, sse_server, requests=4).run(
        target_of(sse_server), LoadLevel(mode=Mode.SPECULATIVE, concurrency=1)
    )
    assert [body["prompt"] for body in sse_server.bodies] == [*PROMPTS, PROMPTS[0]]
    assert all(body["use_speculative"] for body in sse_server.bodies)


async def test_duration_bound_stops_new_requests(client: httpx.AsyncClient, sse_server: SseServer) -> None:
    runner = make_runner(client, sse_server, requests=10_000, duration_s=0.3)
    result = await runner.run(target_of(sse_server), LoadLevel(mode=Mode.STANDARD, concurrency=2))
    assert 0 < len(result.records) < 10_000
    assert all(record.start_s < 0.3 for record in result.records)


async def test_open_loop_sends_the_requested_number_spread_over_time(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    runner = make_runner(client, sse_server, requests=15)
    result = await runner.run(target_of(sse_server), LoadLevel(mode=Mode.STANDARD, rate=100.0))
    assert len(result.records) == 15
    assert all(record.outcome.ok for record in result.records)
    starts = [record.start_s for record in result.records]
    assert starts == sorted(starts)
    assert starts[-1] > 0


async def test_open_loop_drops_arrivals_beyond_max_in_flight(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    long_request_tokens = round(0.5 / CHUNK_DELAY_S)
    runner = make_runner(client, sse_server, requests=10, max_tokens=long_request_tokens, max_in_flight=2)
    result = await runner.run(target_of(sse_server), LoadLevel(mode=Mode.STANDARD, rate=200.0))
    dropped = [record for record in result.records if record.outcome.error_type == "client_overload"]
    sent = [record for record in result.records if record.outcome.ok]
    assert len(result.records) == 10
    assert dropped
    assert len(sent) + len(dropped) == 10
    assert most_in_flight(sent) <= 2


async def test_warm_up_requests_are_sent_but_not_recorded(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    sse_server.bodies.clear()
    runner = make_runner(client, sse_server, requests=2)
    await runner.warm_up(target_of(sse_server), Mode.STANDARD, 3)
    result = await runner.run(target_of(sse_server), LoadLevel(mode=Mode.STANDARD, concurrency=1))
    assert len(sse_server.bodies) == 5
    assert len(result.records) == 2
