"""The lean HTTP/1.1 connection against a real server (loadtest_server.py): chunked streams, Content-Length
replies, and one connection kept alive across requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from loadtest_server import SseServer

from gorgon_loadtest.http1 import Connection, encode_post
from gorgon_loadtest.sse import DONE, parse_chunk, timed_payloads
from gorgon_loadtest.target import Endpoint


@pytest.fixture
async def connection(sse_server: SseServer) -> AsyncIterator[Connection]:
    address = urlsplit(sse_server.url)
    opened = await Connection.open(address.hostname or "", address.port or 80)
    yield opened
    await opened.close()


def completion_request(server: SseServer, body: dict[str, object]) -> bytes:
    address = urlsplit(server.url)
    return encode_post(
        address.hostname or "", address.port or 80, "/v1/completions", json.dumps(body).encode()
    )


async def test_a_stream_arrives_in_pieces_that_decode_to_its_events(
    sse_server: SseServer, connection: Connection
) -> None:
    request = completion_request(sse_server, {"prompt": "hi", "max_tokens": 3, "stream": True})
    pieces = [(0.0, piece) async for piece in connection.post_stream(request)]
    payloads = [payload for _, payload in timed_payloads(pieces)]
    assert payloads[-1] == DONE
    assert [parse_chunk(payload, Endpoint.COMPLETIONS).text for payload in payloads[:-1]] == [
        "w0 ",
        "w1 ",
        "w2 ",
    ]


async def test_one_connection_serves_chunked_and_content_length_replies_in_turn(
    sse_server: SseServer, connection: Connection
) -> None:
    status, streamed = await connection.post(
        completion_request(sse_server, {"prompt": "hi", "max_tokens": 2})
    )
    assert status == 200
    assert streamed.endswith(b"data: [DONE]\n\n")
    status, refused = await connection.post(completion_request(sse_server, {"prompt": "http-429"}))
    assert status == 429
    assert json.loads(refused)["error"]["code"] == "rate_limited"
    status, _ = await connection.post(completion_request(sse_server, {"prompt": "again", "max_tokens": 1}))
    assert status == 200


async def test_a_refused_stream_raises_with_its_status(sse_server: SseServer, connection: Connection) -> None:
    request = completion_request(sse_server, {"prompt": "http-429", "stream": True})
    with pytest.raises(RuntimeError, match="HTTP 429"):
        async for _ in connection.post_stream(request):
            pass
