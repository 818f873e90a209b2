"""A minimal HTTP/1.1 SSE client on raw asyncio streams, light enough to hold a thousand streams from one
process on a loaded 2-core machine (httpx costs several times more CPU per event)."""

from __future__ import annotations

import asyncio
import json
import time

from reliability_harness import StreamOutcome, read_sse_line


def dechunk(body: bytes) -> bytes:
    """The payload of a `Transfer-Encoding: chunked` body."""
    payload, position = bytearray(), 0
    while True:
        line_end = body.index(b"\r\n", position)
        size = int(body[position:line_end].split(b";")[0], 16)
        if size == 0:
            return bytes(payload)
        payload += body[line_end + 2 : line_end + 2 + size]
        position = line_end + 2 + size + 2


def completion_request(host: str, prompt: str, max_tokens: int) -> bytes:
    body = json.dumps(
        {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "use_speculative": False}
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def parse_reply(outcome: StreamOutcome, raw: bytes) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    outcome.status = int(lines[0].split()[1])
    if any(line.lower() == "transfer-encoding: chunked" for line in lines):
        body = dechunk(body)
    if outcome.status != 200:
        outcome.error = json.loads(body)["error"]["message"]
        return
    for line in body.decode().split("\n"):
        read_sse_line(outcome, line)


async def open_stream(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def finish_stream(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    host: str,
    outcome: StreamOutcome,
    timeout_s: float,
) -> StreamOutcome:
    """Send the request on an open connection and read the whole event stream (the server closes it)."""
    reader, writer = connection
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(completion_request(host, outcome.prompt, outcome.max_tokens))
            await writer.drain()
            parse_reply(outcome, await reader.read())
    except TimeoutError:
        outcome.hung = True
    except (OSError, ValueError) as exc:
        outcome.error = f"transport: {type(exc).__name__}: {exc}"
    finally:
        writer.close()
    outcome.elapsed_s = time.monotonic() - started
    return outcome
