from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from loadtest_server import STALL_S, SseServer

from gorgon_loadtest.client import stream_request
from gorgon_loadtest.plan import RequestSettings
from gorgon_loadtest.record import Mode
from gorgon_loadtest.runner import request_body
from gorgon_loadtest.target import Endpoint, Target, parse_target

SETTINGS = RequestSettings(max_tokens=12, temperature=0.0)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        yield http


def target_of(server: SseServer, endpoint: Endpoint = Endpoint.COMPLETIONS) -> Target:
    return parse_target(server.url, endpoint)


async def send(
    client: httpx.AsyncClient,
    server: SseServer,
    prompt: str,
    *,
    endpoint: Endpoint = Endpoint.COMPLETIONS,
    mode: Mode = Mode.STANDARD,
    settings: RequestSettings = SETTINGS,
    timeout_s: float = 30.0,
):
    body = request_body(endpoint, prompt, mode, settings)
    return await stream_request(client, target_of(server, endpoint), body, timeout_s)


@pytest.mark.parametrize("endpoint", list(Endpoint))
async def test_stream_is_timed_and_tokens_counted(
    client: httpx.AsyncClient, sse_server: SseServer, endpoint: Endpoint
) -> None:
    outcome = await send(client, sse_server, "hello there", endpoint=endpoint)
    assert outcome.ok, outcome.error
    assert outcome.status == 200
    assert outcome.output_tokens == 12
    assert outcome.prompt_tokens == 2
    assert outcome.finish_reason == "length"
    assert len(outcome.itls_s) == 11
    assert all(gap > 0 for gap in outcome.itls_s)
    assert 0 < outcome.ttft_s < outcome.e2e_s
    assert outcome.ttft_s + sum(outcome.itls_s) <= outcome.e2e_s


async def test_multi_token_chunks_count_tokens_from_usage(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    outcome = await send(client, sse_server, "hello", mode=Mode.SPECULATIVE)
    assert outcome.ok
    assert outcome.output_tokens == 12
    assert len(outcome.itls_s) == 5
    assert outcome.tpot_s == pytest.approx((outcome.e2e_s - outcome.ttft_s) / 11)


async def test_without_usage_tokens_are_counted_as_text_chunks(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    settings = RequestSettings(max_tokens=7, temperature=0.0, include_usage=False)
    outcome = await send(client, sse_server, "hello", settings=settings)
    assert outcome.ok
    assert outcome.output_tokens == 7
    assert outcome.prompt_tokens is None


async def test_request_body_carries_mode_usage_and_model(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    settings = RequestSettings(max_tokens=3, temperature=0.5, model="m")
    await send(
        client, sse_server, "body check", endpoint=Endpoint.CHAT, mode=Mode.SPECULATIVE, settings=settings
    )
    body = sse_server.bodies[-1]
    assert body["messages"] == [{"role": "user", "content": "body check"}]
    assert body["use_speculative"] is True
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("m", 3, 0.5)


async def test_http_error_is_recorded_with_status_and_message(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    outcome = await send(client, sse_server, "please http-429")
    assert (outcome.error_type, outcome.status, outcome.error) == ("http_429", 429, "too many requests")
    assert outcome.ttft_s is None


async def test_error_event_in_the_stream_is_a_stream_error(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    outcome = await send(client, sse_server, "stream-error")
    assert (outcome.error_type, outcome.error) == ("stream_error", "engine failed")


async def test_stream_without_done_is_incomplete(client: httpx.AsyncClient, sse_server: SseServer) -> None:
    outcome = await send(client, sse_server, "cut-stream")
    assert outcome.error_type == "incomplete_stream"


async def test_done_without_a_finish_reason_is_a_truncated_stream(
    client: httpx.AsyncClient, sse_server: SseServer
) -> None:
    outcome = await send(client, sse_server, "no-finish")
    assert outcome.error_type == "truncated_stream"


async def test_slow_request_times_out(client: httpx.AsyncClient, sse_server: SseServer) -> None:
    outcome = await send(client, sse_server, "stall", timeout_s=0.3)
    assert outcome.error_type == "timeout"
    assert 0.3 <= outcome.e2e_s < STALL_S


async def test_nothing_listening_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = parse_target(f"http://127.0.0.1:{port}", Endpoint.COMPLETIONS)
    body = request_body(Endpoint.COMPLETIONS, "x", Mode.STANDARD, SETTINGS)
    outcome = await stream_request(client, target, body, 5.0)
    assert outcome.error_type == "connect_error"
