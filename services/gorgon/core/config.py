"""Settings shared by every gorgon process. Each service adds its own settings class beside its code
(engine/config.py, api/config.py, worker/config.py), all read through pydantic-settings with an env prefix
and `.env`."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RedisSettings(BaseSettings):
    """How to reach Redis. AUTH and TLS go in the URL (`rediss://:password@host:6380/0`)."""

    model_config = SettingsConfigDict(env_prefix="GORGON_", env_file=".env", extra="ignore")

    url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "GORGON_REDIS_URL"),
        description="Redis URL; unset under `gorgon up` means an embedded Redis server.",
    )
    namespace: str = Field(
        default="gorgon",
        validation_alias=AliasChoices("GORGON_REDIS_NAMESPACE"),
        description="Prefix of every Redis key, stream and channel, so that installations can share a server.",
    )


@lru_cache
def get_redis_settings() -> RedisSettings:
    return RedisSettings()
