"""The response head waits for the body's first write, and leaves alone when nothing follows it."""

from __future__ import annotations

import asyncio

from gorgon.api.http_protocol import HeadHoldingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_head_and_body_leave_in_one_write() -> None:
    inner = RecordingTransport()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())
    transport.write(HEAD)
    assert inner.sent == []
    transport.write(b"{}")
    transport.write(memoryview(b"more"))
    transport.writelines([HEAD, b"{}"])
    assert inner.sent == [HEAD + b"{}", b"more"]
    await asyncio.sleep(0)
    assert inner.sent == [HEAD + b"{}", b"more", HEAD + b"{}"]


async def test_a_head_alone_is_sent_when_the_loop_comes_round_or_on_close() -> None:
    inner = RecordingTransport()
    transport = HeadHoldingTransport(inner, asyncio.get_running_loop())
    transport.write(HEAD)
    await asyncio.sleep(0)
    assert inner.sent == [HEAD]
    transport.write(HEAD)
    transport.close()
    assert inner.sent == [HEAD, HEAD] and inner.closed
    assert transport.is_closing()
