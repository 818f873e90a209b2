"""Shared objects of one API process (set up by the app's lifespan) and the per-request checks."""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis as AsyncRedis

from gorgon.api.config import ApiSettings, IPNetwork, hash_api_key
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


def _is_trusted(address: str, proxies: Sequence[IPNetwork]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in proxies)


def client_address(request: Request, trusted_proxies: Sequence[IPNetwork]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the right-most address of
    X-Forwarded-For that is not a trusted proxy (each proxy appends the address it was reached from, so what
    lies left of the first untrusted hop is whatever the client chose to send). A hop that is no IP address
    leaves the nearest trusted proxy as the client."""
    nearest = request.client.host if request.client else "unknown"
    if not _is_trusted(nearest, trusted_proxies):
        return nearest
    hops = [hop.strip() for header in request.headers.getlist("x-forwarded-for") for hop in header.split(",")]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return _valid_address(hop) or nearest
        nearest = hop
    return nearest


def _valid_address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _caller_identity(request: Request, settings: ApiSettings) -> str:
    """The key's hash prefix when keys are configured (checked here), else the client address."""
    if not settings.key_hashes:
        return f"addr:{client_address(request, settings.trusted_proxies)}"
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
