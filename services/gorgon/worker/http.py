"""The worker's small HTTP endpoint for probes and scraping: /health, /ready, /metrics.

A plain asyncio server (HTTP/1.1, one request per connection) in the worker's own event loop, so a probe sees
the loop's real state: if the loop is stuck, the probe times out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def route(path: str, is_ready: Callable[[], bool]) -> bytes:
    """The full HTTP response for a GET of `path`."""
    if path == "/health":
        return _response("200 OK", b"ok\n")
    if path == "/ready":
        return (
            _response("200 OK", b"ready\n")
            if is_ready()
            else _response("503 Service Unavailable", b"not ready\n")
        )
    if path == "/metrics":
        return _response("200 OK", generate_latest(), CONTENT_TYPE_LATEST)
    return _response("404 Not Found", b"not found\n")


async def serve_probes(host: str, port: int, is_ready: Callable[[], bool]) -> asyncio.Server:
    """Start the endpoint; the returned server's socket tells the bound port (useful with port 0)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request_line.decode(errors="replace").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            writer.write(route(path, is_ready))
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("probe connection dropped: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_LINE)
    bound = server.sockets[0].getsockname()[1]
    log.info("worker probes on http://%s:%d (/health, /ready, /metrics)", host, bound)
    return server
