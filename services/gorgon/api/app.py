"""The FastAPI application: create_app() wires settings, Redis, the token subscriber and the routers."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gorgon.api.config import ApiSettings, get_api_settings
from gorgon.api.deps import ApiState
from gorgon.api.direct_routes import DirectRoutes
from gorgon.api.errors import OpenAIError, install_error_handlers
from gorgon.api.generation import Gateway
from gorgon.api.metrics import VLLM_NAMED, serve_metrics_apart
from gorgon.api.registry import ModelRegistry
from gorgon.api.routes import chat, completions, health, models
from gorgon.api.telemetry import RequestTelemetry
from gorgon.core.config import RedisSettings, get_redis_settings
from gorgon.core.redis.connection import open_redis
from gorgon.core.redis.memory import MemoryGuard
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.subscriber import TokenSubscriber

log = logging.getLogger(__name__)


class BodyTooLargeError(Exception):
    """A streamed request body went past the limit."""


class BodySizeLimit:
    """Answer 413 to bodies larger than `limit` bytes, declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLargeError
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLargeError:
            if started:
                raise
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        response = OpenAIError(
            413, f"the request body is larger than {self.limit} bytes", code="request_too_large"
        ).response()
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class GorgonApp(FastAPI):
    """FastAPI, with the generation endpoints taken at the application's entry by `direct` (see
    api/direct_routes.py); every other request goes through FastAPI as usual."""

    direct: DirectRoutes | None = None
    direct_stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self.direct
        if (
            direct is not None
            and self.direct_stack is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in direct.paths
        ):
            scope["app"] = self
            await self.direct_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: ApiSettings | None = None, redis_settings: RedisSettings | None = None) -> FastAPI:
    settings = settings or get_api_settings()
    redis_settings = redis_settings or get_redis_settings()
    VLLM_NAMED.enabled = settings.vllm_metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.key_hashes:
            log.warning(
                "no API keys configured (GORGON_API_KEY_HASHES, GORGON_API_KEYS_FILE): "
                "anyone who reaches the API can use it"
            )
        redis = open_redis(redis_settings.url, settings.redis_max_connections)
        names = RedisNames(redis_settings.namespace)
        subscriber = TokenSubscriber(redis, names)
        await subscriber.start()
        gateway = Gateway(
            redis,
            names,
            subscriber,
            settings.max_backlog,
            settings.retry_after_s,
            keepalive_s=settings.sse_keepalive_s,
            memory_guard=MemoryGuard(redis, settings.redis_memory_limit),
        )
        registry = ModelRegistry(
            redis, names, settings.model_cache_s, settings.default_model, settings.served_models
        )
        app.state.gorgon = ApiState(settings, redis, names, gateway, registry)
        metrics_server = (
            serve_metrics_apart(settings.host, settings.metrics_port) if settings.metrics_port else None
        )
        gc.freeze()  # what start-up built lives as long as the process: keep it out of every collection
        try:
            yield
        finally:
            await registry.close()
            await gateway.close()
            await subscriber.close()
            await redis.aclose()
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.shutdown)
                metrics_server.server_close()

    # FastAPI's own request spans would duplicate RequestTelemetry's (the parent of the worker's spans).
    app = GorgonApp(
        title="gorgon", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry={"tracing": False}
    )
    install_error_handlers(app)
    for module in (completions, chat, models, health):
        app.include_router(module.router)
    if not settings.metrics_port:
        app.include_router(health.metrics_router)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestTelemetry)
    generation_routes = [*completions.router.routes, *chat.router.routes]
    app.direct = DirectRoutes(
        functools.partial(FastAPI.__call__, app),
        [route for route in generation_routes if isinstance(route, APIRoute)],
        passed=(BodyTooLargeError,),
    )
    app.direct_stack = RequestTelemetry(BodySizeLimit(app.direct, settings.max_body_bytes))
    return app
