"""Operator metrics after a real poll (backlog in a real Redis, the Deployment behind a recording actuator),
scraped from the operator's own /metrics server; the worker's model-load and KV-cache gauges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import kopf
import redis.asyncio as aioredis
import torch
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gorgon.core.redis.names import RedisNames
from gorgon.engine.echo import EchoEngine
from gorgon.engine.interface import KVCacheUsage
from gorgon.engine.kv import RowKVCache
from gorgon.local.processes import free_port
from gorgon.worker import metrics as worker_metrics
from gorgon.worker.config import WorkerSettings
from gorgon_operator import handlers
from gorgon_operator.k8s import Workload
from gorgon_operator.metrics import serve_metrics
from gorgon_operator.reconcile import PoolReconciler

MODEL = "observed-model"
DEPLOYMENT = "observed-workers"


@dataclass
class RecordingActuator:
    """The Deployment as the Kubernetes API would report it; scale calls are recorded, not sent."""

    replicas: int
    ready: int
    scaled_to: list[int] = field(default_factory=list)

    def read_workload(self, namespace: str, name: str, gpu_resource: str) -> Workload:
        return Workload(replicas=self.replicas, ready=self.ready)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.scaled_to.append(replicas)


def scraped(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


async def test_a_poll_exports_backlog_replicas_and_the_scale_event(
    redis_url: str, redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    for index in range(20):
        await redis_async.xadd(redis_names.request_stream(MODEL), {"p": f"request {index}"})
    actuator = RecordingActuator(replicas=1, ready=1)
    reconciler = PoolReconciler(actuator, default_redis_url=redis_url, default_redis_namespace="unused")  # type: ignore[arg-type]
    spec = {
        "deployment": DEPLOYMENT,
        "model": MODEL,
        "redis": {"namespace": redis_names.namespace},
        "targetBacklogPerReplica": 8,
        "maxReplicas": 10,
    }
    port = free_port()
    serve_metrics(port)
    pool = frozenset({("worker_namespace", "ml"), ("deployment", DEPLOYMENT), ("model", MODEL)})
    before = scraped(port)
    try:
        outcome = await reconciler.poll("ml", spec, {})
    finally:
        await reconciler.close()
    after = scraped(port)

    assert actuator.scaled_to == [3]
    assert after[("gorgon_queue_backlog", pool)] == 20
    assert after[("gorgon_operator_replicas", pool)] == 1
    assert after[("gorgon_operator_ready_replicas", pool)] == 1
    assert after[("gorgon_operator_desired_replicas", pool)] == 3
    event = (
        "gorgon_operator_scale_events_total",
        pool | {("direction", "up"), ("reason", str(outcome.decision.reason))},
    )
    assert after[event] - before.get(event, 0.0) == 1


def test_model_load_time_is_recorded_and_the_engine_watched() -> None:
    engine = worker_metrics.timed_engine_build(lambda _: EchoEngine(), WorkerSettings(engine="echo"))
    assert worker_metrics.ENGINE_MEMORY.engine is engine
    assert REGISTRY.get_sample_value("gorgon_worker_model_load_seconds") > 0
    # The echo engine has no KV cache: its gauges are present with no sample, not a made-up zero.
    assert REGISTRY.get_sample_value("gorgon_worker_kv_cache_bytes") is None


class EchoEngineWithCache(EchoEngine):
    """The echo engine with a real KV cache behind it, as the Medusa engine keeps one for its running batch."""

    def __init__(self, cache: RowKVCache) -> None:
        super().__init__()
        self.cache = cache

    def kv_cache_usage(self) -> KVCacheUsage:
        return self.cache.usage()


def test_kv_cache_bytes_and_usage_are_the_running_batchs() -> None:
    layers, rows, kv_heads, capacity, head_dim = 2, 3, 4, 16, 8
    cache = RowKVCache.allocate(
        num_layers=layers,
        batch=rows,
        kv_heads=kv_heads,
        head_dim=head_dim,
        capacity=capacity,
        dtype=torch.float16,
        device=torch.device("cpu"),
    )
    cache.lengths[:] = torch.tensor([4, 8, 12])
    collector = worker_metrics.EngineMemoryCollector()
    collector.engine = EchoEngineWithCache(cache)
    samples = {family.name: family.samples for family in collector.collect()}
    assert [sample.value for sample in samples["gorgon_worker_kv_cache_bytes"]] == [
        layers * 2 * rows * kv_heads * capacity * head_dim * 2  # keys + values, fp16
    ]
    assert [sample.value for sample in samples["gorgon_worker_kv_cache_usage_ratio"]] == [
        (4 + 8 + 12) / (rows * capacity)
    ]


def pool_body(spec: dict[str, Any]) -> kopf.Body:
    metadata = {"name": "pool", "namespace": "ml", "uid": "u-1", "generation": 1}
    return kopf.Body({"kind": "WorkerPool", "metadata": metadata, "spec": spec, "status": {}})


async def poll_failure(body: kopf.Body, redis_url: str) -> str:
    """Run the operator's timer once on `body`; the kopf error it raised, by name."""
    reconciler = PoolReconciler(
        RecordingActuator(replicas=1, ready=1),  # type: ignore[arg-type]
        default_redis_url=redis_url,
        default_redis_namespace="unused",
    )
    try:
        await handlers.poll(
            body=body,
            spec=body.spec,
            status=body.status,
            meta=body.meta,
            namespace="ml",
            patch=kopf.Patch(),
            memo=kopf.Memo(reconciler=reconciler),
        )
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        return type(exc).__name__
    finally:
        await reconciler.close()
    return "none"


async def test_failed_polls_are_counted_by_kind(redis_names: RedisNames) -> None:
    def errors(kind: str) -> float:
        labels = {"worker_namespace": "ml", "kind": kind}
        return REGISTRY.get_sample_value("gorgon_operator_poll_errors_total", labels) or 0.0

    before = errors("transient"), errors("invalid_spec")
    unreachable = "redis://127.0.0.1:1/0"
    valid = {"deployment": DEPLOYMENT, "model": MODEL, "redis": {"namespace": redis_names.namespace}}
    assert await poll_failure(pool_body(valid), unreachable) == "TemporaryError"
    assert await poll_failure(pool_body({"model": MODEL}), unreachable) == "PermanentError"
    assert (errors("transient"), errors("invalid_spec")) == (before[0] + 1, before[1] + 1)
