"""Shared objects of one API process (set up by the app's lifespan) and the per-request checks."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis as AsyncRedis

from gorgon.api.config import ApiSettings
from gorgon.api.errors import OpenAIError
from gorgon.api.generation import Gateway
from gorgon.api.registry import ModelRegistry
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.rate_limit import count_request

RATE_WINDOW_S = 60


@dataclass
class ApiState:
    settings: ApiSettings
    redis: AsyncRedis
    names: RedisNames
    gateway: Gateway
    registry: ModelRegistry


def get_state(request: Request) -> ApiState:
    return request.app.state.gorgon


StateDep = Annotated[ApiState, Depends(get_state)]


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest under which an API key is configured (GORGON_API_KEY_HASHES)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _caller_identity(request: Request, settings: ApiSettings) -> str:
    """The key's hash prefix when keys are configured (checked here), else the client address."""
    if not settings.key_hashes:
        return f"addr:{request.client.host if request.client else 'unknown'}"
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise OpenAIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            type_="authentication_error",
            code="invalid_api_key",
        )
    digest = hash_api_key(key.strip())
    if not any(hmac.compare_digest(digest, known) for known in settings.key_hashes):
        raise OpenAIError(401, "invalid API key", type_="authentication_error", code="invalid_api_key")
    return f"key:{digest[:16]}"


async def authorize(request: Request, state: ApiState) -> None:
    """Check the API key (if keys are configured) and the per-caller rate limit (if one is configured)."""
    settings = state.settings
    identity = _caller_identity(request, settings)
    limit = settings.rate_limit_per_minute
    if limit <= 0:
        return
    now = time.time()
    count = await count_request(state.redis, state.names, identity, RATE_WINDOW_S, now)
    if count > limit:
        retry_after = int(RATE_WINDOW_S - now % RATE_WINDOW_S) + 1
        raise OpenAIError(
            429,
            f"rate limit of {limit} requests per minute exceeded",
            type_="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry_after)},
        )


async def _authorize_dependency(request: Request, state: StateDep) -> None:
    await authorize(request, state)


AuthorizedDep = Depends(_authorize_dependency)
