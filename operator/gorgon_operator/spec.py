"""A WorkerPool spec as a typed value, with the defaults of every field that is not a policy tunable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gorgon.core.streams import RedisNames
from gorgon.engine.config import DEFAULT_MODEL_DISPLAY_NAME
from gorgon_operator.errors import InvalidSpecError
from gorgon_operator.policy import ScalingPolicy, policy_from_spec

DEFAULT_POLL_INTERVAL_S = 15.0
DEFAULT_GPU_RESOURCE_NAME = "nvidia.com/gpu"
DEFAULT_CAP_TO_SCHEDULABLE_GPUS = True
MIN_POLL_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class WorkerPoolSpec:
    deployment: str
    model: str  # the name the workers serve and queue under (their engine's ModelInfo.name)
    policy: ScalingPolicy
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    redis_url_secret: SecretKeyRef | None = None
    redis_namespace: str | None = None  # None: the operator's own GORGON_REDIS_NAMESPACE
    gpus_per_replica: int | None = None  # None: read from the Deployment's pod template
    gpu_resource_name: str = DEFAULT_GPU_RESOURCE_NAME
    cap_to_schedulable_gpus: bool = DEFAULT_CAP_TO_SCHEDULABLE_GPUS

    def redis_names(self, default_namespace: str) -> RedisNames:
        return RedisNames(self.redis_namespace or default_namespace)


_POOL_FIELDS = {
    "deployment",
    "model",
    "redis",
    "pollIntervalSeconds",
    "gpusPerReplica",
    "gpuResourceName",
    "capToSchedulableGPUs",
}


def parse_spec(spec: Mapping[str, Any]) -> WorkerPoolSpec:
    """Check and type a WorkerPool spec; InvalidSpecError names every field that is wrong."""
    try:
        policy = policy_from_spec({k: v for k, v in spec.items() if k not in _POOL_FIELDS})
    except (ValueError, TypeError) as exc:
        raise InvalidSpecError(str(exc)) from exc
    deployment = spec.get("deployment")
    if not isinstance(deployment, str) or not deployment:
        raise InvalidSpecError("spec.deployment must name the worker Deployment")
    redis = spec.get("redis") or {}
    return WorkerPoolSpec(
        deployment=deployment,
        model=_text(spec, "model") or DEFAULT_MODEL_DISPLAY_NAME,
        policy=policy,
        poll_interval_s=_poll_interval(spec.get("pollIntervalSeconds")),
        redis_url_secret=_secret_ref(redis.get("urlSecretRef")),
        redis_namespace=_text(redis, "namespace"),
        gpus_per_replica=_gpus(spec.get("gpusPerReplica")),
        gpu_resource_name=_text(spec, "gpuResourceName") or DEFAULT_GPU_RESOURCE_NAME,
        cap_to_schedulable_gpus=_flag(spec.get("capToSchedulableGPUs", DEFAULT_CAP_TO_SCHEDULABLE_GPUS)),
    )


def _text(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidSpecError(f"{key} must be a string, got {value!r}")
    return value


def _poll_interval(value: Any) -> float:
    if value is None:
        return DEFAULT_POLL_INTERVAL_S
    if isinstance(value, bool) or not isinstance(value, int | float) or value < MIN_POLL_INTERVAL_S:
        raise InvalidSpecError(
            f"pollIntervalSeconds must be a number ≥ {MIN_POLL_INTERVAL_S:g}, got {value!r}"
        )
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpecError(f"capToSchedulableGPUs must be true or false, got {value!r}")
    return value


def _gpus(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSpecError(f"gpusPerReplica must be a whole number ≥ 0, got {value!r}")
    return value


def _secret_ref(value: Any) -> SecretKeyRef | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value.get("name") or not value.get("key"):
        raise InvalidSpecError("redis.urlSecretRef needs a name and a key")
    return SecretKeyRef(str(value["name"]), str(value["key"]))
