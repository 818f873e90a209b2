"""The models the workers serve, read from their registrations in Redis (cached briefly)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

from gorgon.api.errors import OpenAIError
from gorgon.core.streams import RedisNames, live_workers


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    context_length: int
    workers: int


class ModelRegistry:
    def __init__(
        self, redis: AsyncRedis, names: RedisNames, cache_s: float, default_model: str | None
    ) -> None:
        self._redis = redis
        self._names = names
        self._cache_s = cache_s
        self._default_model = default_model
        self._models: dict[str, ServedModel] = {}
        self._fetched_at = float("-inf")

    async def models(self) -> dict[str, ServedModel]:
        if time.monotonic() - self._fetched_at > self._cache_s:
            self._models = self._aggregate(await live_workers(self._redis, self._names))
            self._fetched_at = time.monotonic()
        return self._models

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
        """The served model a request goes to; 404 for a model nobody serves, 503 when no worker is up."""
        models = await self.models()
        name = requested or self._default_model or (next(iter(models)) if len(models) == 1 else None)
        if name is not None and name in models:
            return models[name]
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
