"""The chart lints, renders for every scenario in ci/, and every object it renders is valid Kubernetes."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml
from chart_render import (
    CHART_DIR,
    CI_VALUES,
    KUBE_VERSIONS,
    REPO_ROOT,
    Manifest,
    kinds,
    load_crd,
    render_chart,
    run_helm,
    validate_against_crd,
    validate_manifest,
    validate_with_model,
)

pytestmark = pytest.mark.processes


SCENARIOS = {path.name.removesuffix("-values.yaml"): path for path in CI_VALUES}


def test_ci_holds_every_required_scenario() -> None:
    required = {"default", "external-redis", "operator-off", "gateway-api", "gpu", "existing-secrets"}
    assert required | {"keda", "global", "common"} <= set(SCENARIOS)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_strict_passes(values: Path) -> None:
    result = run_helm("lint", str(CHART_DIR), "--strict", "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


def test_monitor_check_rejects_an_unknown_field() -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "http", "scrapeEvery": "15s"}]},
    }
    with pytest.raises(AssertionError):
        validate_with_model(monitor)


@pytest.mark.parametrize(
    "spec",
    [
        {
            "scaleTargetRef": {"name": "w"},
            "minReplicas": 0,
            "triggers": [{"type": "redis-streams", "metadata": {}}],
        },
        {
            "scaleTargetRef": {"name": "w"},
            "triggers": [{"type": "redis-streams", "metadata": {"streamLength": 16}}],
        },
        {"triggers": [{"type": "redis-streams", "metadata": {}}]},
    ],
    ids=["unknown field", "metadata not a string", "no scale target"],
)
def test_scaled_object_check_rejects_what_keda_would(spec: dict) -> None:
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "s"},
        "spec": spec,
    }
    with pytest.raises((AssertionError, pydantic.ValidationError)):
        validate_with_model(scaled_object)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_rendered_object_is_valid(values: Path) -> None:
    manifests = render_chart([values], None, "--include-crds")
    crd = load_crd()
    for manifest in manifests:
        validate_manifest(manifest, crd)


def test_crd_is_a_valid_custom_resource_definition() -> None:
    crd = load_crd()
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)
    assert crd["spec"]["scope"] == "Namespaced"


def test_workerpool_of_the_chart_refers_to_the_worker_deployment(default_manifests: list[Manifest]) -> None:
    crd = load_crd()
    pool = next(m for m in default_manifests if m["kind"] == crd["spec"]["names"]["kind"])
    deployment_names = {m["metadata"]["name"] for m in default_manifests if m["kind"] == "Deployment"}
    assert pool["spec"]["deployment"] in deployment_names
    assert pool["spec"]["deployment"].endswith("-worker")


def test_crd_schema_rejects_a_workerpool_without_its_required_fields() -> None:
    crd = load_crd()
    version = next(v["name"] for v in crd["spec"]["versions"] if v["storage"])
    broken = {
        "apiVersion": f"{crd['spec']['group']}/{version}",
        "kind": crd["spec"]["names"]["kind"],
        "metadata": {"name": "broken"},
        "spec": {"minReplicas": "three"},
    }
    with pytest.raises(jsonschema.ValidationError):
        validate_against_crd(broken, crd)


def test_example_workerpool_matches_the_crd() -> None:
    example = yaml.safe_load((REPO_ROOT / "k8s" / "examples" / "workerpool.yaml").read_text())
    validate_against_crd(example, load_crd())


@pytest.mark.parametrize(
    ("scenario", "present", "absent"),
    [
        (
            "default",
            {"StatefulSet", "NetworkPolicy", "Role", "WorkerPool", "ConfigMap"},
            {"Ingress", "ClusterRole"},
        ),
        ("external-redis", {"Ingress", "HorizontalPodAutoscaler", "Secret"}, {"StatefulSet"}),
        (
            "operator-off",
            {"PersistentVolumeClaim", "ServiceMonitor", "PodMonitor", "ConfigMap"},
            {"Role", "ClusterRole", "WorkerPool", "ScaledObject"},
        ),
        (
            "keda",
            {"ScaledObject", "TriggerAuthentication", "NetworkPolicy"},
            {"Role", "RoleBinding", "ClusterRole", "WorkerPool"},
        ),
        ("gateway-api", {"HTTPRoute"}, {"Ingress"}),
        ("gpu", {"WorkerPool"}, {"PersistentVolumeClaim"}),
        ("existing-secrets", {"ClusterRole", "ClusterRoleBinding"}, {"Secret"}),
    ],
)
def test_scenario_renders_its_objects(scenario: str, present: set[str], absent: set[str]) -> None:
    rendered = kinds(render_chart([SCENARIOS[scenario]]))
    assert present <= rendered
    assert not absent & rendered


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"worker.gpuz": "1"}, "additional properties 'gpuz' not allowed"),
        ({"worker.modelCache.type": "hostPath"}, "value must be one of"),
        ({"redis.enabled": "false"}, "set redis.external.url or redis.external.existingSecret"),
        ({"gatewayAPI.enabled": "true"}, "gatewayAPI.parentRefs"),
        ({"operator.workerPool.minReplicas": "5"}, "must not exceed operator.workerPool.maxReplicas"),
        ({"redis.external.url": "http://not-redis"}, "/redis/external/url"),
        (
            {"worker.model.name": "lmsys/vicuna-7b-v1.3"},
            "operator.workerPool.minReplicas=0 (scale to zero) needs the workers' model in api.servedModels",
        ),
        (
            {"api.terminationGracePeriodSeconds": "14"},
            "api.terminationGracePeriodSeconds must exceed api.preStopSleepSeconds by more than 10 seconds",
        ),
        ({"api.redisMemoryLimit": "1.5"}, "/api/redisMemoryLimit"),
        ({"api.metricsPort": "8000"}, "api.metricsPort must differ from api.port"),
        ({"redis.auth.secretKey": "pw"}, "additional properties 'secretKey' not allowed"),
        ({"redisNamespace": "team*"}, "/redisNamespace"),
        ({"api.trustedProxies[0]": "ingress-nginx"}, "/api/trustedProxies/0"),
        ({"operator.enabled": "false"}, "additional properties 'enabled' not allowed"),
        ({"autoscaling.mode": "hpa"}, "value must be one of 'operator', 'keda', 'none'"),
        ({"autoscalling.mode": "keda"}, "additional properties 'autoscalling' not allowed"),
        (
            {"autoscaling.mode": "keda", "worker.model.name": "lmsys/vicuna-7b-v1.3"},
            "autoscaling.keda.minReplicaCount=0 (scale to zero) needs the workers' model in api.servedModels",
        ),
        (
            {"autoscaling.mode": "keda", "autoscaling.keda.minReplicaCount": "5"},
            "autoscaling.keda.minReplicaCount must not exceed autoscaling.keda.maxReplicaCount",
        ),
        (
            {"autoscaling.mode": "keda", "redis.enabled": "false", "redis.external.url": "redis://r:6379/0"},
            "needs autoscaling.keda.triggerMetadata.address",
        ),
        (
            {"autoscaling.mode": "keda", "autoscaling.keda.authenticationRef": "mine"},
            "autoscaling.keda.authenticationRef is for an external Redis",
        ),
        ({"global.imageRegistry": "1"}, "/global/imageRegistry"),
    ],
)
def test_bad_values_fail_with_a_clear_message(set_values: dict[str, str], message: str) -> None:
    args = ["template", "gorgon", str(CHART_DIR)]
    for key, value in set_values.items():
        args += ["--set", f"{key}={value}"]
    result = run_helm(*args)
    assert result.returncode != 0
    assert message in result.stderr
