"""Settings of the operator process (GORGON_OPERATOR_*); Redis comes from gorgon.core.config.RedisSettings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GORGON_OPERATOR_", env_file=".env", extra="ignore")

    namespace: str | None = Field(
        default=None, description="Namespace whose WorkerPools are served; unset means every namespace."
    )
    health_port: int = Field(default=8080, ge=1, le=65535, description="Port of the liveness endpoint.")
    health_path: str = Field(default="/healthz", description="Path of the liveness endpoint.")
    metrics_port: int = Field(
        default=8081, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: not served)."
    )
    list_cluster_gpus: bool = Field(
        default=False,
        description="List the nodes and the pods of every namespace for the GPU cap of the WorkerPools (needs "
        "a ClusterRole); off: the operator stays in its namespace and the GPU cap is off.",
    )
    peering: str | None = Field(
        default=None,
        description="kopf peering name, to run several replicas (one active); unset runs standalone.",
    )
