"""The worker's export: its series labelled with the served model, vLLM's names on demand, and the waiting
requests as its share of the model's unread stream entries."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge

from gorgon.core.redis.names import CONSUMER_GROUP, RedisNames
from gorgon.core.redis.registry import register_worker
from gorgon.worker import metrics
from gorgon.worker.metrics import ServedModelExport, track_waiting_share, waiting_share


def exported(export: ServedModelExport) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → (labels, value) of every sample the export yields."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in export.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def measured_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("gorgon_worker_batch_size", "running", registry=registry).set(3)
    finished = Counter("gorgon_worker_requests_finished_total", "finished", ["reason"], registry=registry)
    finished.labels("stop").inc(2)
    return registry


def test_series_carry_no_model_until_the_engine_is_loaded_then_its_name() -> None:
    export = ServedModelExport(measured_registry())
    assert exported(export)["gorgon_worker_batch_size"] == [({}, 3.0)]
    export.model_name = "smollm2"
    assert exported(export)["gorgon_worker_batch_size"] == [({"model_name": "smollm2"}, 3.0)]
    assert exported(export)["gorgon_worker_requests_finished_total"] == [
        ({"model_name": "smollm2", "reason": "stop"}, 2.0)
    ]
    assert not any(name.startswith("vllm:") for name in exported(export))


def test_vllm_names_are_published_once_asked_for_and_a_model_is_served() -> None:
    export = ServedModelExport(measured_registry())
    export.vllm_names = True
    assert not any(name.startswith("vllm:") for name in exported(export)), "no model: nothing to name"
    export.model_name = "smollm2"
    samples = exported(export)
    assert samples["vllm:num_requests_running"] == [({"model_name": "smollm2"}, 3.0)]
    assert samples["vllm:request_success_total"] == [
        ({"model_name": "smollm2", "finished_reason": "stop"}, 2.0)
    ]


def test_every_vllm_name_has_a_gorgon_series_behind_it() -> None:
    families = {family.name for family in metrics.MEASURED.collect()}
    assert {name.source for name in metrics.VLLM_NAMES} <= families


@pytest.mark.parametrize(("unread", "live", "share"), [(0, 3, 0.0), (9, 3, 3.0), (5, 2, 2.5), (4, 0, 4.0)])
def test_the_waiting_requests_are_shared_out_between_the_live_workers(
    unread: int, live: int, share: float
) -> None:
    assert waiting_share(unread, live) == share


def waiting() -> float | None:
    return metrics.MEASURED.get_sample_value("gorgon_worker_requests_waiting")


async def test_the_waiting_share_follows_the_stream_and_the_registry(
    redis_async: aioredis.Redis, redis_names: RedisNames
) -> None:
    stream = redis_names.request_stream("m")
    await redis_async.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    for index in range(6):
        await redis_async.xadd(stream, {"n": str(index)})
    await redis_async.xreadgroup(CONSUMER_GROUP, "w1", {stream: ">"}, count=2)  # running, not waiting
    for worker_id in ("w1", "w2"):
        await register_worker(redis_async, redis_names, "m", worker_id, {"worker_id": worker_id}, ttl_s=30)
    tracking = asyncio.create_task(track_waiting_share(redis_async, redis_names, "m", interval_s=0.01))
    try:
        for _ in range(200):
            if waiting() == 2.0:  # 4 unread entries, 2 live workers
                break
            await asyncio.sleep(0.01)
        assert waiting() == 2.0
    finally:
        tracking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tracking
        metrics.WAITING.set(0)
