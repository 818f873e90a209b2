"""GET /health (liveness), GET /ready (Redis reachable and a live worker), GET /metrics (Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from gorgon.api.deps import StateDep
from gorgon.api.errors import OpenAIError
from gorgon.api.schemas import ERROR_SCHEMA

router = APIRouter()
log = logging.getLogger(__name__)


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "not ready", "content": {"application/json": {"schema": ERROR_SCHEMA}}}},
)
async def ready(state: StateDep) -> dict:
    """Ready when Redis answers and a worker serves the default model (or any model, with no default set)."""
    try:
        await state.redis.ping()
        models = await state.registry.models()
    except RedisError as exc:
        log.warning("not ready: Redis unreachable: %s", exc)
        raise OpenAIError(
            503, f"Redis is unreachable: {exc}", type_="server_error", code="redis_unavailable"
        ) from exc
    wanted = state.settings.default_model
    if not models or (wanted is not None and wanted not in models):
        raise OpenAIError(
            503, f"no live worker serves {wanted or 'any model'}", type_="server_error", code="no_workers"
        )
    return {"status": "ready", "models": sorted(models)}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
