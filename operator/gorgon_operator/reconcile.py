"""One poll of a WorkerPool: measure the backlog and the Deployment, decide, scale, and say what happened.

No kopf here: the handlers call `PoolReconciler.poll` and turn its outcome into a status patch and events, and
its errors into kopf.TemporaryError / PermanentError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from gorgon.core.redis.queue import backlog
from gorgon_operator import metrics
from gorgon_operator.errors import InvalidSpecError, PoolError, TransientError
from gorgon_operator.k8s import KubernetesActuator, Workload
from gorgon_operator.policy import Decision, Observation, Reason, WindowState, decide
from gorgon_operator.spec import WorkerPoolSpec, parse_spec

log = logging.getLogger(__name__)

CONDITION_READY = "Ready"
CONDITION_LIMITED = "ScalingLimited"
LIMITING_REASONS = frozenset({Reason.MAX_REPLICAS, Reason.GPU_CAPPED, Reason.SCALE_UP_LIMITED})


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes event to post on the WorkerPool."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Outcome:
    status: dict[str, Any]  # the whole new status
    events: list[Event] = field(default_factory=list)
    decision: Decision | None = None


class PoolReconciler:
    """Polls WorkerPools. Holds one Redis client per URL; `clock` gives epoch seconds."""

    def __init__(
        self,
        actuator: KubernetesActuator,
        *,
        default_redis_url: str | None,
        default_redis_namespace: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._actuator = actuator
        self._default_redis_url = default_redis_url
        self._default_redis_namespace = default_redis_namespace
        self._clock = clock
        self._redis: dict[str, AsyncRedis] = {}

    async def close(self) -> None:
        for client in self._redis.values():
            await client.aclose()
        self._redis.clear()

    async def poll(self, namespace: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> Outcome:
        """Measure, decide and scale once. Raises TransientError or InvalidSpecError."""
        pool = parse_spec(spec)
        now = self._clock()
        queued = await self._backlog(namespace, pool)
        workload = await asyncio.to_thread(
            self._actuator.read_workload, namespace, pool.deployment, pool.gpu_resource_name
        )
        capacity = await self._gpu_capacity(namespace, pool, workload)
        observation = Observation(now, queued, workload.replicas, workload.ready, capacity)
        decision = decide(pool.policy, WindowState.from_status(status.get("window")), observation)
        scaled = decision.desired != workload.replicas
        if scaled:
            await asyncio.to_thread(self._actuator.scale, namespace, pool.deployment, decision.desired)
        metrics.record_poll(namespace, pool, observation, decision)
        return Outcome(
            status=_status_after(status, self._stream(pool), observation, decision, scaled),
            events=_events(status, observation, decision, scaled),
            decision=decision,
        )

    def failed_status(self, status: Mapping[str, Any], error: PoolError) -> dict[str, Any]:
        """The status to write when a poll failed: everything kept, Ready=False with the cause."""
        reason = "InvalidSpec" if isinstance(error, InvalidSpecError) else "PollFailed"
        new = dict(status)
        new["conditions"] = set_condition(
            status.get("conditions") or [], CONDITION_READY, "False", reason, str(error), now=self._clock()
        )
        return new

    def _stream(self, pool: WorkerPoolSpec) -> str:
        return pool.redis_names(self._default_redis_namespace).request_stream(pool.model)

    async def _backlog(self, namespace: str, pool: WorkerPoolSpec) -> int:
        url = await self._redis_url(namespace, pool)
        client = self._redis.get(url)
        if client is None:
            client = self._redis[url] = AsyncRedis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return await backlog(client, pool.redis_names(self._default_redis_namespace), pool.model)
        except RedisError as exc:
            raise TransientError(
                f"cannot read the backlog from Redis: {exc}", delay_s=pool.poll_interval_s
            ) from exc

    async def _redis_url(self, namespace: str, pool: WorkerPoolSpec) -> str:
        if pool.redis_url_secret is not None:
            return await asyncio.to_thread(self._actuator.read_secret_value, namespace, pool.redis_url_secret)
        if self._default_redis_url:
            return self._default_redis_url
        raise InvalidSpecError("no Redis URL: set spec.redis.urlSecretRef (or REDIS_URL for the operator)")

    async def _gpu_capacity(self, namespace: str, pool: WorkerPoolSpec, workload: Workload) -> int | None:
        gpus = pool.gpus_per_replica if pool.gpus_per_replica is not None else workload.gpus_per_replica
        if not pool.cap_to_schedulable_gpus or gpus < 1:
            return None
        return await asyncio.to_thread(
            self._actuator.gpu_capacity, namespace, workload, pool.gpu_resource_name, gpus
        )


def _status_after(
    previous: Mapping[str, Any], stream: str, obs: Observation, decision: Decision, scaled: bool
) -> dict[str, Any]:
    now = _timestamp(obs.t)
    conditions = set_condition(
        previous.get("conditions") or [], CONDITION_READY, "True", "Polled", "", now=obs.t
    )
    if decision.reason in LIMITING_REASONS:
        limited = ("True", str(decision.reason), decision.message)
    else:
        limited = ("False", "NotLimited", "")
    conditions = set_condition(conditions, CONDITION_LIMITED, *limited, now=obs.t)
    return {
        **previous,
        "stream": stream,
        "backlog": obs.backlog,
        "replicas": obs.current,
        "readyReplicas": obs.ready,
        "desiredReplicas": decision.desired,
        "gpuCapacity": obs.gpu_capacity,
        "gpuShortfall": decision.gpu_shortfall,
        "lastPollTime": now,
        "lastScaleTime": now if scaled else previous.get("lastScaleTime"),
        "lastDecision": {
            "time": now,
            "desired": decision.desired,
            "recommendation": decision.recommendation,
            "reason": str(decision.reason),
            "message": decision.message,
        },
        "window": decision.state.to_status(),
        "conditions": conditions,
    }


def _events(previous: Mapping[str, Any], obs: Observation, decision: Decision, scaled: bool) -> list[Event]:
    events = []
    if scaled:
        message = f"{obs.current} → {decision.desired} replicas ({decision.reason}): {decision.message}"
        events.append(Event("Normal", "Scaled", message))
    if decision.gpu_shortfall and decision.gpu_shortfall != previous.get("gpuShortfall"):
        message = (
            f"{decision.gpu_shortfall} more worker(s) wanted than the schedulable GPUs can hold "
            f"(capacity {obs.gpu_capacity}); add GPU nodes or lower the load"
        )
        events.append(Event("Warning", "GPUShortfall", message))
    return events


def set_condition(
    conditions: Sequence[Mapping[str, Any]], kind: str, status: str, reason: str, message: str, *, now: float
) -> list[dict[str, Any]]:
    """Conditions with `kind` set; its lastTransitionTime changes only when its status does."""
    result = [dict(condition) for condition in conditions if condition.get("type") != kind]
    old = next((condition for condition in conditions if condition.get("type") == kind), None)
    if old is None or old.get("status") != status:
        transition = _timestamp(now)
    else:
        transition = old.get("lastTransitionTime", _timestamp(now))
    result.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": transition,
        }
    )
    return sorted(result, key=lambda condition: condition["type"])


def _timestamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
