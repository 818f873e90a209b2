"""A lean HTTP/1.1 keep-alive connection: pre-encoded requests, no per-request allocation of a client
framework, so that a load generator sharing the cores it measures takes as little of them as possible
(`gorgon bench platform` reports its CPU per request). Plain HTTP to a known server only: the load test proper
(client.py) uses httpx, for https, per-request timeouts and its error types."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class Connection:
    """One keep-alive connection: its requests go one after another, each reply read in full or streamed."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    async def post(self, request: bytes) -> tuple[int, bytes]:
        """Send a pre-encoded request; returns (status, body) of a Content-Length or chunked response."""
        self.writer.write(request)
        status, headers = await self._read_head()
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b"".join([piece async for piece in self._chunks()])
        else:
            body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return status, body

    async def post_stream(self, request: bytes) -> AsyncIterator[bytes]:
        """Send a pre-encoded request and yield the body's chunks as they arrive (chunked encoding)."""
        self.writer.write(request)
        status, headers = await self._read_head()
        if status != 200:
            body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        async for piece in self._chunks():
            yield piece

    async def _read_head(self) -> tuple[int, dict[bytes, bytes]]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if b":" in line:
                name, value = line.split(b":", 1)
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]


def encode_post(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body
