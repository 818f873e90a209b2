"""The models the API serves: those of the live workers, read from their registrations in Redis (cached
briefly), and those configured (`ApiSettings.served_models`), which are served with no worker up: their
requests wait in the queue until one starts (the autoscaler starts one for a backlog), so a pool scaled to zero
wakes on its first request.

Requests never wait for the refresh of a cache that still names their model: they use it while a background
task reads the registrations again. A request for a model the cache does not name reads them at once before it
is refused; /ready and /v1/models read them when the cache is older than `cache_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from gorgon.api.errors import OpenAIError
from gorgon.core.redis.names import RedisNames
from gorgon.core.redis.registry import live_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model requests may name: its context length (the smallest of its live workers', else the configured
    one) and how many live workers serve it now (0: its requests wait for one)."""

    name: str
    context_length: int
    workers: int


class ModelRegistry:
    """`configured`: the models served whether or not a worker is up, with their context lengths."""

    def __init__(
        self,
        redis: AsyncRedis,
        names: RedisNames,
        cache_s: float,
        default_model: str | None,
        configured: Mapping[str, int] | None = None,
    ) -> None:
        self._redis = redis
        self._names = names
        self._cache_s = cache_s
        self._default_model = default_model
        self._configured = {
            name: ServedModel(name, context, 0) for name, context in (configured or {}).items()
        }
        self._models: dict[str, ServedModel] = dict(self._configured)
        self._fetched_at = float("-inf")
        self._refresh_task: asyncio.Task[None] | None = None

    async def models(self) -> dict[str, ServedModel]:
        """The served models, read again first if the cache is older than `cache_s`."""
        if self._stale():
            await self._refresh()
        return self._models

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task

    def _stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self._cache_s

    async def _refresh(self) -> None:
        self._models = {**self._configured, **self._aggregate(await live_workers(self._redis, self._names))}
        self._fetched_at = time.monotonic()

    def _models_refreshed_in_background(self) -> dict[str, ServedModel]:
        """The cached models at once; a stale cache is read again by a background task meanwhile (an empty
        one is left to the caller, who reads it at once)."""
        if self._models and self._stale() and self._refresh_task is None:
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_quietly())
        return self._models

    async def _refresh_quietly(self) -> None:
        try:
            await self._refresh()
        except RedisError as exc:
            log.warning("could not read the worker registrations: %s", exc)
        finally:
            self._refresh_task = None

    @staticmethod
    def _aggregate(records: list[dict]) -> dict[str, ServedModel]:
        models: dict[str, ServedModel] = {}
        for record in records:
            name = record["model"]
            known = models.get(name)
            context = (
                min(record["context_length"], known.context_length) if known else record["context_length"]
            )
            models[name] = ServedModel(name, context, (known.workers if known else 0) + 1)
        return models

    async def resolve(self, requested: str | None, retry_after_s: int) -> ServedModel:
        """The served model a request goes to; 404 for a model not served, 503 when no model is configured and
        no worker is up."""
        served = self._pick(requested, self._models_refreshed_in_background())
        if served is not None:
            return served
        await self._refresh()
        models = self._models
        served = self._pick(requested, models)
        if served is not None:
            return served
        name = self._name_for(requested, models)
        if not models:
            raise OpenAIError(
                503,
                "no worker is serving any model yet; retry shortly",
                type_="server_error",
                code="no_workers",
                headers={"Retry-After": str(retry_after_s)},
            )
        if name is None:
            raise OpenAIError(
                400, f"several models are served ({', '.join(sorted(models))}): name one", param="model"
            )
        raise OpenAIError(
            404,
            f"the model {name!r} does not exist or no worker serves it; served: {', '.join(sorted(models))}",
            param="model",
            code="model_not_found",
        )

    def _name_for(self, requested: str | None, models: dict[str, ServedModel]) -> str | None:
        return requested or self._default_model or (next(iter(models)) if len(models) == 1 else None)

    def _pick(self, requested: str | None, models: dict[str, ServedModel]) -> ServedModel | None:
        name = self._name_for(requested, models)
        return models.get(name) if name is not None else None
