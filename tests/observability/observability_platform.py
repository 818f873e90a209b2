"""An API and an echo worker in this process, on the session's private Redis: requests go through the real
ASGI app, Redis stream and pub/sub; the worker's /metrics is its real probe server on a free port, its series
labelled with the served model as `gorgon worker` labels them (and the labelling undone afterwards: the
registry is the whole test run's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import redis.asyncio as aioredis

from gorgon.api import metrics as api_metrics
from gorgon.api.app import create_app
from gorgon.api.config import ApiSettings
from gorgon.core.config import RedisSettings
from gorgon.core.redis.names import RedisNames
from gorgon.engine.echo import EchoEngine
from gorgon.worker import metrics as worker_metrics
from gorgon.worker.config import WorkerSettings
from gorgon.worker.http import serve_probes
from gorgon.worker.main import Worker

WORKER_SETTINGS = WorkerSettings(
    read_block_ms=20, lease_s=2.0, heartbeat_interval_s=0.5, registration_ttl_s=5.0, shutdown_grace_s=5.0
)


@dataclass
class InProcessPlatform:
    api: httpx.AsyncClient
    worker_metrics_url: str
    worker: Worker


@asynccontextmanager
async def running_platform(
    redis_url: str, names: RedisNames, *, vllm_metrics: bool = False
) -> AsyncIterator[InProcessPlatform]:
    redis = aioredis.Redis.from_url(redis_url)
    worker = Worker(EchoEngine(), redis, names, WORKER_SETTINGS, "observed-worker")
    worker_metrics.SERVED_MODEL.model_name = worker.model
    worker_metrics.SERVED_MODEL.vllm_names = vllm_metrics
    probes = await serve_probes("127.0.0.1", 0, lambda: worker.ready)
    worker_task = asyncio.create_task(worker.run())
    while not worker.ready:
        await asyncio.sleep(0.01)
    redis_settings = RedisSettings(REDIS_URL=redis_url, GORGON_REDIS_NAMESPACE=names.namespace)
    app = create_app(ApiSettings(vllm_metrics=vllm_metrics), redis_settings)
    port = probes.sockets[0].getsockname()[1]
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as client:
                yield InProcessPlatform(client, f"http://127.0.0.1:{port}/metrics", worker)
    finally:
        worker.request_stop()
        await asyncio.wait_for(worker_task, 10)
        probes.close()
        await redis.aclose()
        worker_metrics.SERVED_MODEL.model_name = None
        worker_metrics.SERVED_MODEL.vllm_names = False
        api_metrics.VLLM_NAMED.enabled = False
