"""The kopf handlers called as kopf calls them: real kopf Body/Patch/Memo, real Redis, the Kubernetes API
mocked at the client boundary. Events go through kopf's own posting queue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
import redis.asyncio as aioredis
from kopf._core.engines import posting
from kopf._core.engines.posting import K8sEvent
from kubernetes.client import ApiException
from operator_objects import api_mocks, deployment, scaled_to

from gorgon.core.redis.names import RedisNames
from gorgon_operator import handlers
from gorgon_operator.k8s import MISSING_OBJECT_RETRY_S, KubernetesActuator
from gorgon_operator.reconcile import PoolReconciler

MODEL = "tiny"


def capture_events() -> asyncio.Queue[K8sEvent]:
    """Route kopf.event() into a queue we can read (the operator's poster task would send them to the API)."""
    queue: asyncio.Queue[K8sEvent] = asyncio.Queue()
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    posting.settings_var.set(kopf.OperatorSettings())
    return queue


def drain(queue: asyncio.Queue[K8sEvent]) -> list[tuple[str, str]]:
    events = []
    while not queue.empty():
        event = queue.get_nowait()
        events.append((event.type, event.reason))
    return events


def pool_body(names: RedisNames, generation: int = 1, **spec: Any) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": f"{handlers.GROUP}/{handlers.VERSION}",
            "kind": "WorkerPool",
            "metadata": {"name": "pool", "namespace": "ml", "uid": "u-1", "generation": generation},
            "spec": {
                "deployment": "workers",
                "model": MODEL,
                "redis": {"namespace": names.namespace},
                "pollIntervalSeconds": 30,
                "targetBacklogPerReplica": 8,
                **spec,
            },
            "status": {},
        }
    )


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[tuple[Any, Any, kopf.Memo]]:
    apps, core = api_mocks(deployment(1, 1, gpus=0))
    reconciler = PoolReconciler(
        KubernetesActuator(apps, core), default_redis_url=redis_url, default_redis_namespace="unused"
    )
    yield apps, core, kopf.Memo(reconciler=reconciler)
    await reconciler.close()


async def run_timer(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch | None = None) -> kopf.Patch:
    patch = kopf.Patch() if patch is None else patch
    await handlers.poll(
        body=body,
        spec=body.spec,
        status=body.status,
        meta=body.meta,
        namespace="ml",
        patch=patch,
        memo=memo,
    )
    return patch


async def test_timer_scales_writes_status_and_posts_an_event(
    cluster: tuple[Any, Any, kopf.Memo], redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    apps, _, memo = cluster
    events = capture_events()
    for index in range(24):
        await redis_async.xadd(redis_names.request_stream(MODEL), {"payload": str(index)})
    patch = await run_timer(pool_body(redis_names), memo)
    assert scaled_to(apps) == [3]
    assert patch["status"]["backlog"] == 24
    assert patch["status"]["desiredReplicas"] == 3
    assert patch["status"]["window"]["recommendations"]
    assert drain(events) == [("Normal", "Scaled")]


async def test_timer_polls_on_the_pool_interval_not_on_every_tick(
    cluster: tuple[Any, Any, kopf.Memo], redis_names: RedisNames
) -> None:
    apps, _, memo = cluster
    capture_events()
    body = pool_body(redis_names)
    await run_timer(body, memo)
    second = await run_timer(body, memo)  # one tick later, well inside pollIntervalSeconds
    assert apps.read_namespaced_deployment.call_count == 1
    assert not second
    assert memo.next_poll > time.monotonic() + 25


async def test_missing_deployment_is_a_temporary_error_with_status(
    cluster: tuple[Any, Any, kopf.Memo], redis_names: RedisNames
) -> None:
    apps, _, memo = cluster
    apps.read_namespaced_deployment.side_effect = ApiException(status=404, reason="Not Found")
    patch = kopf.Patch()
    body = pool_body(redis_names)
    with pytest.raises(kopf.TemporaryError) as caught:
        await handlers.poll(
            body=body,
            spec=body.spec,
            status=body.status,
            meta=body.meta,
            namespace="ml",
            patch=patch,
            memo=memo,
        )
    assert caught.value.delay == MISSING_OBJECT_RETRY_S
    ready = patch["status"]["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "PollFailed")
    assert "not found" in ready["message"]


async def test_invalid_spec_is_permanent_and_not_retried_until_the_spec_changes(
    cluster: tuple[Any, Any, kopf.Memo], redis_names: RedisNames
) -> None:
    apps, _, memo = cluster
    bad = pool_body(redis_names, generation=1, minReplicas=3, maxReplicas=2)
    with pytest.raises(kopf.PermanentError, match="maxReplicas"):
        await run_timer(bad, memo)
    memo.next_poll = 0.0
    assert not await run_timer(bad, memo)  # same generation: skipped
    fixed = pool_body(redis_names, generation=2)
    handlers.spec_changed(spec=fixed.spec, status=fixed.status, patch=kopf.Patch(), memo=memo)
    capture_events()
    patch = await run_timer(fixed, memo)
    assert patch["status"]["desiredReplicas"] == 1
    apps.read_namespaced_deployment.assert_called_once()


def test_create_with_an_invalid_spec_fails_permanently_and_says_why(redis_names: RedisNames) -> None:
    body = pool_body(redis_names, targetBacklogPerReplica=0)
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError, match="targetBacklogPerReplica"):
        handlers.spec_changed(spec=body.spec, status=body.status, patch=patch, memo=kopf.Memo())
    condition = patch["status"]["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")


def test_create_with_a_valid_spec_makes_the_timer_poll_at_once(redis_names: RedisNames) -> None:
    memo = kopf.Memo(next_poll=time.monotonic() + 1000)
    body = pool_body(redis_names)
    handlers.spec_changed(spec=body.spec, status=body.status, patch=kopf.Patch(), memo=memo)
    assert memo.next_poll == 0.0


async def test_a_newer_status_on_the_object_wins_over_the_remembered_one(
    cluster: tuple[Any, Any, kopf.Memo], redis_names: RedisNames
) -> None:
    _, _, memo = cluster
    capture_events()
    body = pool_body(redis_names)
    await run_timer(body, memo)
    newer = {"lastPollTime": "2999-01-01T00:00:00Z", "window": {"recommendations": [], "lastBusyTime": 1.0}}
    memo.next_poll = 0.0
    later = kopf.Body({**body, "status": newer})
    patch = await run_timer(later, memo)
    assert patch["status"]["window"]["lastBusyTime"] == 1.0  # the other replica's memory, not ours


async def test_startup_keeps_kopf_state_out_of_status_and_posts_only_warnings() -> None:
    settings = kopf.OperatorSettings()
    await handlers.configure(settings=settings)
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.posting.level == logging.WARNING  # not one "succeeded" event per timer tick
