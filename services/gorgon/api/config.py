"""API settings: environment variables GORGON_API_* (or `.env`); Redis from core/config.py."""

from __future__ import annotations

import hashlib
import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, PositiveInt, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SHA256_HEX_LENGTH = 64

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest under which an API key is configured (GORGON_API_KEY_HASHES)."""
    return hashlib.sha256(key.encode()).hexdigest()


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
        description="Comma-separated SHA-256 hex digests of the accepted API keys (Bearer). Empty, and no "
        "keys_file: no auth.",
    )
    keys_file: Path | None = Field(
        default=None,
        description="File of accepted API keys, one per line (a mounted Secret); their SHA-256 digests join "
        "key_hashes at start, the keys themselves are neither kept nor logged.",
    )
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses or CIDRs of the reverse proxies whose X-Forwarded-For names the "
        "client (for the per-address rate limit without keys). Empty: the peer is the client.",
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
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a /metrics listener of its own, apart from the API port an ingress exposes; "
        "0: /metrics on the API port.",
    )
    vllm_metrics: bool = Field(
        default=False,
        description="Also publish the API's latency histograms under vLLM's names "
        "(`vllm:time_to_first_token_seconds`, `vllm:inter_token_latency_seconds`, "
        "`vllm:e2e_request_latency_seconds`, ...), for dashboards built for vLLM (docs/observability.md).",
    )
    expose_timing: bool = Field(
        default=False,
        description="Add the worker's publish time to SSE chunks (for `gorgon bench platform`).",
    )
    served_models: Annotated[dict[str, PositiveInt], NoDecode] = Field(
        default_factory=dict,
        description="Comma-separated `name:context_length` of the models served with no worker up: their "
        "requests wait in the queue until a worker starts (scale from zero). Live workers add theirs.",
    )
    sse_keepalive_s: float = Field(
        default=15.0,
        gt=0.0,
        le=15.0,
        description="A stream that gets no chunk for this long (queued, a slow step) gets an SSE comment.",
    )
    redis_memory_limit: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of Redis's maxmemory past which new requests get 503, before Redis refuses "
        "writes (the workers can still finish theirs).",
    )
    shutdown_grace_s: int = Field(
        default=25,
        ge=0,
        description="On SIGTERM: time the open streams get to finish; keep it below the pod's "
        "terminationGracePeriodSeconds.",
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

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        """An address or a CIDR each; host bits are allowed (10.0.0.7/8 means 10.0.0.0/8)."""
        if isinstance(value, str):
            return [
                ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()
            ]
        return value

    @field_validator("served_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        """`name:context_length` each (the name may hold colons of its own: the last one separates)."""
        if not isinstance(value, str):
            return value
        models: dict[str, str] = {}
        for part in (part.strip() for part in value.split(",")):
            if part:
                name, _, context = part.rpartition(":")
                if not name:
                    raise ValueError(f"{part!r}: write each served model as name:context_length")
                models[name] = context
        return models

    @model_validator(mode="after")
    def _add_keys_from_file(self) -> Self:
        """The digests of the keys in `keys_file` join `key_hashes`; a file that cannot be read or holds no key
        stops the start (the API must not come up open when keys were meant to be on)."""
        if self.keys_file is None:
            return self
        try:
            lines = self.keys_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"keys_file {self.keys_file} cannot be read: {type(exc).__name__}") from None
        keys = [line.strip() for line in lines if line.strip()]
        if not keys:
            raise ValueError(f"keys_file {self.keys_file} holds no key")
        digests = [hash_api_key(key) for key in keys]
        self.key_hashes = list(dict.fromkeys([*self.key_hashes, *digests]))
        return self


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
