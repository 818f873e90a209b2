"""GET /health (liveness), GET /ready (Redis reachable), GET /metrics (Prometheus).

/metrics has a router of its own: with GORGON_API_METRICS_PORT set, the API port leaves it out and a listener of
its own serves it (api/metrics.py), so an ingress in front of the API port never exposes it."""

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
metrics_router = APIRouter()
log = logging.getLogger(__name__)


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "not ready", "content": {"application/json": {"schema": ERROR_SCHEMA}}}},
)
async def ready(state: StateDep) -> dict:
    """Ready when Redis answers: requests are queued whether or not a worker is up (a pool scaled to zero wakes
    on its backlog). `models`: the served models, configured or of a live worker."""
    try:
        await state.redis.ping()
        models = await state.registry.models()
    except RedisError as exc:
        # The cause (addresses, server messages) goes to the log; callers only learn that Redis is down.
        log.warning("not ready: Redis unreachable: %s", exc)
        raise OpenAIError(
            503, "Redis is unreachable", type_="server_error", code="redis_unavailable"
        ) from exc
    return {"status": "ready", "models": sorted(models)}


@metrics_router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
