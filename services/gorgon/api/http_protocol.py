"""uvicorn's httptools protocol with the response head and the first body write sent together.

uvicorn writes a response's status line and headers as soon as the application starts the response, and the
body in a second write: two sends, two TCP segments, and often two wake-ups of the client, which reads the head
and then waits for the body. Here the head is held until the next write (the body, normally in the same step of
the request's task) and both leave in one send; a head that nothing follows in the same loop iteration is sent
when the loop comes round, so nothing waits longer than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RESPONSE_HEAD_PREFIX = b"HTTP/1.1 "


class HeadHoldingTransport:
    """A transport proxy that holds a response head until the next write (or the next loop iteration)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif isinstance(data, bytes) and data.startswith(RESPONSE_HEAD_PREFIX):
            self._held = data
            self._loop.call_soon(self.release)
        else:
            self._transport.write(data)

    def writelines(self, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(pieces))

    def release(self) -> None:
        """Send a held head now (nothing else was written after it)."""
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)

    def close(self) -> None:
        self.release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadCoalescingProtocol(HttpToolsProtocol):
    """`uvicorn.run(..., http=HeadCoalescingProtocol)`: httptools, with `HeadHoldingTransport` on each connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        holding = HeadHoldingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, holding))
