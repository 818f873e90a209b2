"""API settings: environment variables GORGON_API_* (or `.env`); Redis from core/config.py."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SHA256_HEX_LENGTH = 64


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GORGON_API_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    host: str = Field(default="0.0.0.0", description="Address the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    default_model: str | None = Field(
        default=None,
        description="Model for requests that name none. Unset: the only model served, if there is exactly one.",
    )
    default_max_tokens: int = Field(default=128, ge=1, description="max_tokens when a request gives none.")
    max_tokens_limit: int = Field(default=4096, ge=1, description="Largest max_tokens a request may ask for.")
    max_backlog: int = Field(
        default=1000, ge=0, description="Per-model queue length past which requests get 429 (0: no limit)."
    )
    retry_after_s: int = Field(
        default=1, ge=1, description="Retry-After sent with 429/503 under backpressure."
    )
    request_timeout_s: float = Field(
        default=300.0,
        gt=0.0,
        description="Deadline of a request; past it the client gets 504, the worker drops it.",
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="Largest request body accepted (413)."
    )
    key_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated SHA-256 hex digests of the accepted API keys (Bearer). Empty: no auth.",
    )
    rate_limit_per_minute: int = Field(
        default=0,
        ge=0,
        description="Requests per minute per API key (per client address without keys); 0: off.",
    )
    redis_max_connections: int = Field(default=64, ge=2, description="Redis connections of one API process.")
    model_cache_s: float = Field(
        default=1.0, ge=0.0, description="How long the list of served models is cached."
    )
    expose_timing: bool = Field(
        default=False,
        description="Add the worker's publish time to SSE chunks (for `gorgon bench platform`).",
    )

    @field_validator("key_hashes", mode="before")
    @classmethod
    def _split_hashes(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("key_hashes")
    @classmethod
    def _only_digests(cls, hashes: list[str]) -> list[str]:
        """A clear key configured by mistake is refused (without echoing it: it is a secret)."""
        for digest in hashes:
            if len(digest) != SHA256_HEX_LENGTH or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    "each entry must be the SHA-256 hex digest of a key (64 hex characters), never the key itself"
                )
        return hashes


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
