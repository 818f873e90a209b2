"""Worker settings: environment variables GORGON_WORKER_* (or `.env`); Redis from core/config.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EngineName = Literal["medusa", "echo"]


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GORGON_WORKER_", env_file=".env", extra="ignore")

    engine: EngineName = Field(
        default="medusa",
        description="`medusa`: the real model (engine settings GORGON_ENGINE_*); `echo`: deterministic tokens "
        "without a model, for tests and platform benchmarks.",
    )
    worker_id: str | None = Field(
        default=None,
        description="Consumer name in the Redis group; keep it stable across restarts (the pod name) so a "
        "restarted worker resumes its own pending entries. Unset: host name, process id and a random suffix.",
    )
    http_host: str = Field(
        default="0.0.0.0", description="Address of the /health, /ready, /metrics endpoint."
    )
    http_port: int = Field(
        default=8001, ge=0, le=65535, description="Port of that endpoint (0: any free port)."
    )
    vllm_metrics: bool = Field(
        default=False,
        description="Also publish the worker's series under vLLM's names (`vllm:num_requests_running`, "
        "`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, token counters, ...), for dashboards and "
        "autoscalers built for vLLM (docs/observability.md).",
    )
    max_batch_size: int | None = Field(
        default=None, ge=1, description="Requests decoded together; unset: the engine's own maximum."
    )
    max_batch_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Token budget of the running batch: prompt + max_tokens summed over its requests; a request "
        "that does not fit waits for rows to finish (an empty batch always takes one). Unset: no budget.",
    )
    first_batch_wait_s: float = Field(
        default=0.0,
        ge=0.0,
        description="An idle worker waits this long after the first request to gather more.",
    )
    sync_interval_s: float = Field(
        default=0.002,
        ge=0.0,
        description="A step with nothing to publish skips its Redis round trip (cancel flags, new requests) "
        "unless the last one is this old; model steps are longer, so each of them syncs.",
    )
    read_block_ms: int = Field(default=100, ge=1, description="How long an idle worker blocks on XREADGROUP.")
    lease_s: float = Field(
        default=15.0,
        gt=0.0,
        description="An entry idle this long (its worker stopped heartbeating) is taken over.",
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0.0, description="How often in-flight entries and the registration are refreshed."
    )
    registration_ttl_s: float = Field(
        default=10.0,
        gt=0.0,
        description="A worker that stops heartbeating disappears from /ready after this.",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="Deliveries of one request before it is dead-lettered and its client told.",
    )
    max_failed_steps_in_row: int = Field(
        default=3,
        ge=1,
        description="Engine steps failing as a whole in a row (each fails its requests with a 503) before the "
        "worker stops and exits non-zero, so that it is replaced instead of failing every request.",
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=0.0,
        description="On SIGTERM: time to finish in-flight requests before handing them back.",
    )
    result_ttl_s: int = Field(
        default=60, ge=1, description="How long a final result stays readable in Redis."
    )
    echo_step_delay_s: float = Field(
        default=0.0, ge=0.0, description="Echo engine only: sleep per decoding step (simulates model time)."
    )

    @model_validator(mode="after")
    def _heartbeat_fits_lease(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 2 > self.lease_s:
            raise ValueError("heartbeat_interval_s must be at most half of lease_s")
        if self.heartbeat_interval_s >= self.registration_ttl_s:
            raise ValueError("heartbeat_interval_s must be shorter than registration_ttl_s")
        return self
