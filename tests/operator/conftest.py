"""Fixtures of the operator tests."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from operator_objects import GPU_NODES, api_mocks, deployment, node

from gorgon.core.redis.names import RedisNames
from gorgon_operator.k8s import KubernetesActuator
from gorgon_operator.reconcile import PoolReconciler


@pytest.fixture
async def sample_status(
    redis_url: str, redis_async: aioredis.Redis, redis_names: RedisNames
) -> dict[str, Any]:
    """The status one real poll writes: a backlog, a scale-up and a GPU shortfall."""
    for index in range(40):
        await redis_async.xadd(redis_names.request_stream("m"), {"payload": str(index)})
    apps, core = api_mocks(deployment(1, 1, node_selector=GPU_NODES), nodes=[node("a", 2)])
    reconciler = PoolReconciler(
        KubernetesActuator(apps, core, list_cluster_gpus=True),
        default_redis_url=redis_url,
        default_redis_namespace=redis_names.namespace,
    )
    try:
        outcome = await reconciler.poll("ml", {"deployment": "workers", "model": "m"}, {})
    finally:
        await reconciler.close()
    assert outcome.status["gpuShortfall"] > 0
    return outcome.status
