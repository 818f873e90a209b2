"""The worker's probe endpoint as the kubelet and Prometheus see it."""

from __future__ import annotations

import asyncio

from gorgon.worker import metrics
from gorgon.worker.http import serve_probes


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    status = int(response.split(" ", 2)[1])
    return status, response.split("\r\n\r\n", 1)[1]


async def test_probes_report_liveness_readiness_and_metrics() -> None:
    ready = False
    server = await serve_probes("127.0.0.1", 0, lambda: ready)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await get(port, "/health") == (200, "ok\n")
        assert (await get(port, "/ready"))[0] == 503
        ready = True
        assert await get(port, "/ready") == (200, "ready\n")
        metrics.BATCH_SIZE.set(3)
        status, body = await get(port, "/metrics")
        assert status == 200 and "gorgon_worker_batch_size 3.0" in body
        assert (await get(port, "/nope"))[0] == 404
    finally:
        server.close()
