from __future__ import annotations

import pytest

from gorgon.core.defaults import DEFAULT_MODEL_DISPLAY_NAME
from gorgon.core.redis.names import RedisNames
from gorgon_operator.errors import InvalidSpecError
from gorgon_operator.policy import ScalingPolicy
from gorgon_operator.spec import DEFAULT_POLL_INTERVAL_S, SecretKeyRef, parse_spec, policy_from_spec


def test_a_minimal_spec_gets_the_defaults() -> None:
    pool = parse_spec({"deployment": "workers"})
    assert pool.model == DEFAULT_MODEL_DISPLAY_NAME  # what a worker with default settings queues under
    assert pool.poll_interval_s == DEFAULT_POLL_INTERVAL_S
    assert pool.redis_url_secret is None
    assert pool.gpus_per_replica is None  # read from the Deployment
    assert pool.cap_to_schedulable_gpus is True
    assert pool.redis_names("gorgon") == RedisNames("gorgon")


def test_the_redis_namespace_of_the_spec_names_the_stream() -> None:
    pool = parse_spec({"deployment": "w", "model": "m", "redis": {"namespace": "team-a"}})
    assert pool.redis_names("gorgon").request_stream(pool.model) == "team-a:requests:m"


def test_the_chart_rendered_spec_parses() -> None:
    pool = parse_spec({"deployment": "rel-gorgon-worker", "minReplicas": 1, "maxReplicas": 4, "model": "x"})
    assert (pool.policy.min_replicas, pool.policy.max_replicas) == (1, 4)


def test_secret_ref_is_read() -> None:
    pool = parse_spec({"deployment": "w", "redis": {"urlSecretRef": {"name": "r", "key": "url"}}})
    assert pool.redis_url_secret == SecretKeyRef("r", "url")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "spec.deployment"),
        ({"deployment": "w", "pollIntervalSeconds": 0}, "pollIntervalSeconds"),
        ({"deployment": "w", "gpusPerReplica": -1}, "gpusPerReplica"),
        ({"deployment": "w", "redis": {"urlSecretRef": {"name": "r"}}}, "urlSecretRef"),
        ({"deployment": "w", "maxReplicas": 0}, "maxReplicas"),
        ({"deployment": "w", "model": 3}, "model"),
        ({"deployment": "w", "capToSchedulableGPUs": "no"}, "capToSchedulableGPUs"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        parse_spec(spec)


def test_policy_from_spec_reads_camel_case_fields_and_keeps_other_defaults() -> None:
    policy = policy_from_spec(
        {"minReplicas": 1, "maxReplicas": 6, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}
    )
    assert (policy.min_replicas, policy.max_replicas, policy.scale_down_window_s) == (1, 6, 60.0)
    assert policy.target_backlog_per_replica == ScalingPolicy().target_backlog_per_replica


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"minReplicas": 5, "maxReplicas": 2}, "maxReplicas"),
        ({"targetBacklogPerReplica": 0}, "targetBacklogPerReplica"),
        ({"maxReplicas": "4"}, "must be a number"),
        ({"maxReplicas": 2.5}, "whole number"),
        ({"behavior": {"scaleUp": {"maxStepPods": 2}}}, "behavior.scaleUp.maxStepPods"),
        ({"maxReplica": 3}, "maxReplica"),
    ],
)
def test_policy_from_spec_rejects_bad_values_by_name(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy_from_spec(spec, ignore_unknown=False)
