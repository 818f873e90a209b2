"""One poll end to end: real Redis for the backlog, the Kubernetes API mocked at the client boundary."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from operator_objects import GPU_NODES, api_mocks, deployment, node, scaled_to, secret

from gorgon.core.redis.names import RedisNames
from gorgon_operator.errors import InvalidSpecError, TransientError
from gorgon_operator.k8s import KubernetesActuator
from gorgon_operator.reconcile import PoolReconciler

MODEL = "tiny"


class Clock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pool_spec(redis_names: RedisNames) -> dict[str, Any]:
    return {
        "deployment": "workers",
        "model": MODEL,
        "redis": {"namespace": redis_names.namespace},
        "targetBacklogPerReplica": 8,
        "maxReplicas": 10,
    }


@pytest.fixture
async def make_reconciler(redis_url: str, clock: Clock) -> AsyncIterator[Callable[..., PoolReconciler]]:
    made: list[PoolReconciler] = []

    def make(
        apps: Any, core: Any, url: str | None = redis_url, *, list_cluster_gpus: bool = True
    ) -> PoolReconciler:
        reconciler = PoolReconciler(
            KubernetesActuator(apps, core, list_cluster_gpus=list_cluster_gpus),
            default_redis_url=url,
            default_redis_namespace="unused",
            clock=clock,
        )
        made.append(reconciler)
        return reconciler

    yield make
    for reconciler in made:
        await reconciler.close()


async def queue(redis_async: aioredis.Redis, names: RedisNames, count: int) -> None:
    for index in range(count):
        await redis_async.xadd(names.request_stream(MODEL), {"payload": f"request {index}"})


async def test_a_backlog_scales_the_deployment_up_and_is_reported_in_status(
    make_reconciler: Callable[..., PoolReconciler],
    pool_spec: dict[str, Any],
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
) -> None:
    await queue(redis_async, redis_names, 20)
    apps, core = api_mocks(deployment(1, 1, gpus=0))
    outcome = await make_reconciler(apps, core).poll("ml", pool_spec, {})
    assert scaled_to(apps) == [3]
    status = outcome.status
    assert (status["backlog"], status["replicas"], status["readyReplicas"], status["desiredReplicas"]) == (
        20,
        1,
        1,
        3,
    )
    assert status["stream"] == redis_names.request_stream(MODEL)
    assert status["lastDecision"]["reason"] == "ScaleUp"
    assert status["lastScaleTime"] == status["lastPollTime"]
    assert [(event.type, event.reason) for event in outcome.events] == [("Normal", "Scaled")]
    assert "1 → 3" in outcome.events[0].message
    ready = next(condition for condition in status["conditions"] if condition["type"] == "Ready")
    assert ready["status"] == "True"
    json.dumps(status)  # the status must be JSON for the API server


async def test_no_change_means_no_patch_and_no_event(
    make_reconciler: Callable[..., PoolReconciler],
    pool_spec: dict[str, Any],
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
) -> None:
    await queue(redis_async, redis_names, 16)
    apps, core = api_mocks(deployment(2, 2, gpus=0))
    previous = {"lastScaleTime": "2026-01-01T00:00:00Z"}
    outcome = await make_reconciler(apps, core).poll("ml", pool_spec, previous)
    apps.patch_namespaced_deployment_scale.assert_not_called()
    assert outcome.events == []
    assert outcome.status["lastScaleTime"] == "2026-01-01T00:00:00Z"


async def test_window_state_in_status_prevents_scale_down_after_an_operator_restart(
    make_reconciler: Callable[..., PoolReconciler],
    pool_spec: dict[str, Any],
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
    clock: Clock,
) -> None:
    pool_spec = {**pool_spec, "scaleToZeroAfterSeconds": 3600}
    await queue(redis_async, redis_names, 40)
    apps, core = api_mocks(deployment(5, 5, gpus=0))
    first = await make_reconciler(apps, core).poll("ml", pool_spec, {})
    await redis_async.delete(redis_names.request_stream(MODEL))  # drained
    clock.now += 60
    restarted = make_reconciler(apps, core)  # a new operator process: only the status survives
    status = json.loads(json.dumps(first.status))
    second = await restarted.poll("ml", pool_spec, status)
    assert second.status["desiredReplicas"] == 5
    assert second.status["lastDecision"]["reason"] == "Stabilizing"
    apps.patch_namespaced_deployment_scale.assert_not_called()
    clock.now += 300  # the window has passed: the drained pool scales down (one replica until idle)
    third = await restarted.poll("ml", pool_spec, second.status)
    assert scaled_to(apps) == [1]
    assert third.status["desiredReplicas"] == 1


async def test_gpu_shortfall_caps_replicas_and_warns_once(
    make_reconciler: Callable[..., PoolReconciler],
    pool_spec: dict[str, Any],
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
) -> None:
    await queue(redis_async, redis_names, 80)
    apps, core = api_mocks(deployment(1, 1, gpus=1, node_selector=GPU_NODES), nodes=[node("a", 2)])
    reconciler = make_reconciler(apps, core)
    first = await reconciler.poll("ml", pool_spec, {})
    assert scaled_to(apps) == [2]
    assert (first.status["gpuCapacity"], first.status["gpuShortfall"]) == (2, 3)  # wanted 5 (+4 step limit)
    assert ("Warning", "GPUShortfall") in [(event.type, event.reason) for event in first.events]
    limited = next(
        condition for condition in first.status["conditions"] if condition["type"] == "ScalingLimited"
    )
    assert (limited["status"], limited["reason"]) == ("True", "GPUCapped")
    apps.read_namespaced_deployment.return_value = deployment(2, 2, gpus=1, node_selector=GPU_NODES)
    second = await reconciler.poll("ml", pool_spec, first.status)
    assert second.status["gpuShortfall"] == 4  # 10 wanted, +4 step limit → 6, GPUs for 2
    assert [event.reason for event in second.events] == ["GPUShortfall"]  # a new shortfall: warned again
    third = await reconciler.poll("ml", pool_spec, second.status)
    assert third.events == []  # the same shortfall: no repeat


async def test_the_gpu_cap_can_be_turned_off_for_cluster_autoscalers(
    make_reconciler: Callable[..., PoolReconciler],
    pool_spec: dict[str, Any],
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
) -> None:
    await queue(redis_async, redis_names, 32)
    apps, core = api_mocks(deployment(4, 4, gpus=1), nodes=[node("a", 1)])
    outcome = await make_reconciler(apps, core).poll("ml", {**pool_spec, "capToSchedulableGPUs": False}, {})
    core.list_node.assert_not_called()
    assert outcome.status["gpuCapacity"] is None
    assert outcome.status["desiredReplicas"] == 4


async def test_without_cluster_wide_listing_the_gpu_cap_is_off_and_nothing_outside_the_namespace_is_read(
    make_reconciler: Callable[..., PoolReconciler],
    pool_spec: dict[str, Any],
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
) -> None:
    await queue(redis_async, redis_names, 32)
    apps, core = api_mocks(deployment(4, 4, gpus=1), nodes=[node("a", 1)])
    reconciler = make_reconciler(apps, core, list_cluster_gpus=False)
    outcome = await reconciler.poll("ml", {**pool_spec, "capToSchedulableGPUs": True}, {})
    core.list_node.assert_not_called()
    core.list_pod_for_all_namespaces.assert_not_called()
    assert outcome.status["gpuCapacity"] is None
    assert outcome.status["desiredReplicas"] == 4


async def test_redis_url_comes_from_the_secret_named_in_the_spec(
    make_reconciler: Callable[..., PoolReconciler],
    pool_spec: dict[str, Any],
    redis_url: str,
    redis_async: aioredis.Redis,
    redis_names: RedisNames,
) -> None:
    await queue(redis_async, redis_names, 9)
    apps, core = api_mocks(deployment(1, 1, gpus=0))
    core.read_namespaced_secret.return_value = secret("url", redis_url)
    spec = {**pool_spec, "redis": {**pool_spec["redis"], "urlSecretRef": {"name": "redis", "key": "url"}}}
    outcome = await make_reconciler(apps, core, url=None).poll("ml", spec, {})
    assert outcome.status["backlog"] == 9
    assert core.read_namespaced_secret.call_args.args == ("redis", "ml")


async def test_unreachable_redis_is_transient(
    make_reconciler: Callable[..., PoolReconciler], pool_spec: dict[str, Any]
) -> None:
    apps, core = api_mocks(deployment(1, 1, gpus=0))
    reconciler = make_reconciler(apps, core, url="redis://127.0.0.1:1/0")
    with pytest.raises(TransientError, match="Redis") as caught:
        await reconciler.poll("ml", {**pool_spec, "pollIntervalSeconds": 7}, {})
    assert caught.value.delay_s == 7
    apps.patch_namespaced_deployment_scale.assert_not_called()


async def test_invalid_spec_is_permanent_and_marks_the_pool_not_ready(
    make_reconciler: Callable[..., PoolReconciler], pool_spec: dict[str, Any]
) -> None:
    apps, core = api_mocks(deployment(1, 1, gpus=0))
    reconciler = make_reconciler(apps, core)
    with pytest.raises(InvalidSpecError, match="maxReplicas") as caught:
        await reconciler.poll("ml", {**pool_spec, "minReplicas": 5, "maxReplicas": 2}, {})
    status = reconciler.failed_status({"backlog": 3}, caught.value)
    assert status["backlog"] == 3
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Ready", "False", "InvalidSpec")
    ]


async def test_no_redis_url_anywhere_is_a_spec_error(
    make_reconciler: Callable[..., PoolReconciler], pool_spec: dict[str, Any]
) -> None:
    apps, core = api_mocks(deployment(1, 1, gpus=0))
    with pytest.raises(InvalidSpecError, match="urlSecretRef"):
        await make_reconciler(apps, core, url=None).poll("ml", pool_spec, {})
