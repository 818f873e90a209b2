"""A WorkerPool spec as a typed value, with the defaults of every field that is not a policy tunable, and the
scaling policy as written in a spec or a simulate trace (camelCase) as a ScalingPolicy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from gorgon.core.defaults import DEFAULT_MODEL_DISPLAY_NAME
from gorgon.core.redis.names import RedisNames
from gorgon_operator.errors import InvalidSpecError
from gorgon_operator.policy import ScalingPolicy

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


# --- the policy as written in a WorkerPool spec (camelCase) or a simulate trace ---------------------------

_SPEC_KEYS: dict[str, str] = {
    "targetBacklogPerReplica": "target_backlog_per_replica",
    "minReplicas": "min_replicas",
    "maxReplicas": "max_replicas",
    "scaleToZeroAfterSeconds": "scale_to_zero_after_s",
    "startupGraceSeconds": "startup_grace_s",
}
_BEHAVIOR_KEYS: dict[str, dict[str, str]] = {
    "scaleUp": {
        "stabilizationWindowSeconds": "scale_up_window_s",
        "maxStepReplicas": "scale_up_max_step_replicas",
        "maxStepPercent": "scale_up_max_step_percent",
    },
    "scaleDown": {
        "stabilizationWindowSeconds": "scale_down_window_s",
        "maxStepReplicas": "scale_down_max_step_replicas",
        "maxStepPercent": "scale_down_max_step_percent",
    },
}


def policy_from_spec(spec: Mapping[str, Any], *, ignore_unknown: bool = True) -> ScalingPolicy:
    """Build a policy from camelCase fields (a WorkerPool spec, or the `policy` of a simulate trace).

    Absent fields keep the defaults of `ScalingPolicy`. Raises ValueError naming what is wrong.
    """
    values: dict[str, Any] = {}
    unknown = []
    for key, value in spec.items():
        if key in _SPEC_KEYS:
            values[_SPEC_KEYS[key]] = value
        elif key == "behavior":
            unknown += _behavior_values(value or {}, values)
        else:
            unknown.append(key)
    if unknown and not ignore_unknown:
        raise ValueError(f"unknown policy field(s): {', '.join(sorted(unknown))}")
    return replace(ScalingPolicy(), **_typed(values))


def _behavior_values(behavior: Mapping[str, Any], values: dict[str, Any]) -> list[str]:
    unknown = []
    for key, value in behavior.items():
        if key == "tolerance":
            values["tolerance"] = value
        elif key in _BEHAVIOR_KEYS and isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                if sub_key in _BEHAVIOR_KEYS[key]:
                    values[_BEHAVIOR_KEYS[key][sub_key]] = sub_value
                else:
                    unknown.append(f"behavior.{key}.{sub_key}")
        else:
            unknown.append(f"behavior.{key}")
    return unknown


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Coerce to the declared field types, so `"300"` or `2.0` from YAML/JSON fail or convert cleanly."""
    types = {f.name: f.type for f in fields(ScalingPolicy)}
    typed: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            if "None" not in str(types[name]):
                raise ValueError(f"{name} must not be null")
            typed[name] = None
            continue
        wants_int = str(types[name]).startswith("int")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if wants_int and value != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        typed[name] = int(value) if wants_int else float(value)
    return typed
