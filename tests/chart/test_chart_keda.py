"""autoscaling.mode: `operator` (the default), `keda` (a KEDA ScaledObject on the request stream's length, no
operator installed) or `none` (a fixed replica count). The Redis side of KEDA's access (its ACL user, the stream
length against the lag) is in test_chart_redis_acl.py."""

from __future__ import annotations

import pytest
import yaml
from chart_render import (
    CHART_DIR,
    CI_VALUES,
    REPO_ROOT,
    Manifest,
    container,
    find,
    kinds,
    pod_labels,
    render_chart,
    run_helm,
    selector_matches,
)

from gorgon.core.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MODEL_DISPLAY_NAME
from gorgon.core.redis.names import RedisNames
from gorgon_operator.policy import ScalingPolicy

pytestmark = pytest.mark.processes

KEDA_SCENARIO = next(path for path in CI_VALUES if path.name == "keda-values.yaml")
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
OPERATOR_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "WorkerPool"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


@pytest.fixture(scope="module")
def keda_manifests() -> list[Manifest]:
    return render_chart([KEDA_SCENARIO], {"metrics.podMonitor.enabled": "true"})


def _trigger(manifests: list[Manifest]) -> dict:
    (trigger,) = find(manifests, "ScaledObject")["spec"]["triggers"]
    return trigger


def _worker_env(manifests: list[Manifest]) -> dict[str, str | None]:
    return {
        item["name"]: item.get("value")
        for item in container(find(manifests, "Deployment", "-worker"), "worker")["env"]
    }


def test_the_operator_is_the_default_autoscaler(default_manifests: list[Manifest]) -> None:
    assert VALUES["autoscaling"]["mode"] == "operator"
    assert OPERATOR_KINDS - {"ClusterRole", "ClusterRoleBinding"} <= kinds(default_manifests)
    assert not KEDA_KINDS & kinds(default_manifests)


def test_keda_scales_the_worker_deployment_and_no_operator_is_installed(
    keda_manifests: list[Manifest],
) -> None:
    worker = find(keda_manifests, "Deployment", "-worker")
    scaled = find(keda_manifests, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": worker["metadata"]["name"],
    }
    assert "replicas" not in worker["spec"], "KEDA's HPA owns the count (helm/helm#7090)"
    assert not OPERATOR_KINDS & kinds(keda_manifests)
    names = {m["metadata"]["name"] for m in keda_manifests}
    assert not {name for name in names if name.endswith("-operator")}, (
        "no operator Deployment, account or monitor"
    )


def test_no_autoscaler_leaves_a_fixed_count() -> None:
    manifests = render_chart(set_values={"autoscaling.mode": "none", "worker.replicas": "2"})
    assert find(manifests, "Deployment", "-worker")["spec"]["replicas"] == 2
    assert not (OPERATOR_KINDS | KEDA_KINDS) & kinds(manifests)
    rules = find(manifests, "ConfigMap", "-redis")["data"]["acl-rules"]
    assert [line.split()[0] for line in rules.splitlines()] == ["default", "api", "worker"]


def test_the_trigger_reads_the_length_of_the_stream_the_workers_consume(
    keda_manifests: list[Manifest],
) -> None:
    trigger = _trigger(keda_manifests)
    assert trigger["type"] == "redis-streams"
    metadata = trigger["metadata"]
    model = _worker_env(keda_manifests)["GORGON_ENGINE_SERVED_MODEL_NAME"]
    assert model == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert metadata["stream"] == RedisNames(VALUES["redisNamespace"]).request_stream(model)
    assert "consumerGroup" not in metadata, (
        "no group: the scaler reads XLEN (streamLength), not lag or XPENDING"
    )
    assert metadata["streamLength"] == "16"
    service = find(keda_manifests, "Service", "-redis")
    assert (
        metadata["address"]
        == f"{service['metadata']['name']}.inference.svc:{service['spec']['ports'][0]['port']}"
    )


def test_without_a_model_the_workers_and_keda_agree_on_the_engine_default() -> None:
    manifests = render_chart(set_values={"autoscaling.mode": "keda"})
    assert _worker_env(manifests)["GORGON_ENGINE_SERVED_MODEL_NAME"] == DEFAULT_MODEL_DISPLAY_NAME
    assert _trigger(manifests)["metadata"]["stream"] == RedisNames().request_stream(
        DEFAULT_MODEL_DISPLAY_NAME
    )


def test_the_target_per_worker_is_the_operators(default_manifests: list[Manifest]) -> None:
    target = VALUES["autoscaling"]["keda"]["targetStreamLength"]
    assert target == DEFAULT_MAX_BATCH_SIZE == ScalingPolicy().target_backlog_per_replica


def test_bounds_and_behavior_reach_the_scaled_object(keda_manifests: list[Manifest]) -> None:
    spec = find(keda_manifests, "ScaledObject")["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 6)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (15, 600)
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    api = container(find(keda_manifests, "Deployment", "-api"), "api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready", "the API's /ready does not wait for a worker"


def test_keda_may_reach_the_bundled_redis_and_the_operator_may_not(keda_manifests: list[Manifest]) -> None:
    peers = [
        peer for rule in find(keda_manifests, "NetworkPolicy")["spec"]["ingress"] for peer in rule["from"]
    ]
    keda_operator = {"app": "keda-operator", "app.kubernetes.io/name": "keda-operator"}
    keda_namespace = {"kubernetes.io/metadata.name": "keda"}
    assert [
        peer
        for peer in peers
        if selector_matches(peer["podSelector"], keda_operator)
        and selector_matches(peer.get("namespaceSelector", {"matchLabels": {"none": "none"}}), keda_namespace)
    ]
    release_peers = [peer["podSelector"] for peer in peers if "namespaceSelector" not in peer]
    api_labels = pod_labels(find(keda_manifests, "Deployment", "-api"))

    def admitted(component: str) -> bool:
        labels = {**api_labels, "app.kubernetes.io/component": component}
        return any(selector_matches(selector, labels) for selector in release_peers)

    assert [component for component in ("api", "worker", "operator") if admitted(component)] == [
        "api",
        "worker",
    ]


def test_an_external_redis_takes_its_address_and_authentication_from_values() -> None:
    manifests = render_chart(
        set_values={
            "autoscaling.mode": "keda",
            "redis.enabled": "false",
            "redis.external.existingSecret": "redis-url",
            "autoscaling.keda.triggerMetadata.address": "redis.example.internal:6380",
            "autoscaling.keda.triggerMetadata.enableTLS": "true",
            "autoscaling.keda.authenticationRef": "team-redis-auth",
        }
    )
    trigger = _trigger(manifests)
    assert trigger["metadata"]["address"] == "redis.example.internal:6380"
    assert trigger["metadata"]["enableTLS"] == "true"
    assert "username" not in trigger["metadata"]
    assert trigger["authenticationRef"] == {"name": "team-redis-auth"}
    assert "TriggerAuthentication" not in kinds(manifests)


def test_the_notes_point_at_the_scaled_object() -> None:
    result = run_helm("install", "gorgon", str(CHART_DIR), "--dry-run=client", "--values", str(KEDA_SCENARIO))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "get scaledobjects,hpa" in notes and "workerpools" not in notes


@pytest.mark.parametrize("doc", ["deploy.md", "operator.md"])
def test_the_docs_tell_how_to_choose_an_autoscaler(doc: str) -> None:
    text = (REPO_ROOT / "docs" / doc).read_text()
    assert "autoscaling.mode" in text and "streamLength" in text
