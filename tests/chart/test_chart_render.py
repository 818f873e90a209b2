"""The chart lints, renders for every scenario in ci/, and every object it renders is valid Kubernetes."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_render import (
    CHART_DIR,
    CI_VALUES,
    REPO_ROOT,
    Manifest,
    kinds,
    load_crd,
    render_chart,
    run_helm,
    validate_against_crd,
)
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

pytestmark = pytest.mark.processes


# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas installed.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# prometheus-operator kinds: checked with models generated from its CRDs.
MONITORING_MODELS = {"ServiceMonitor": monitoring_v1.ServiceMonitor, "PodMonitor": monitoring_v1.PodMonitor}
# No offline schema for the Gateway API: test_chart_properties checks the HTTPRoute field by field.
UNCHECKED_KINDS = {"HTTPRoute"}
SCENARIOS = {path.name.removesuffix("-values.yaml"): path for path in CI_VALUES}


def test_ci_holds_every_required_scenario() -> None:
    assert {"default", "external-redis", "operator-off", "gateway-api", "gpu", "existing-secrets"} <= set(
        SCENARIOS
    )


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_strict_passes(values: Path) -> None:
    result = run_helm("lint", str(CHART_DIR), "--strict", "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


def _validate_monitor(manifest: Manifest) -> None:
    """Types, patterns and required fields from the model; unknown fields show up as a lossy round trip."""
    model = MONITORING_MODELS[manifest["kind"]].model_validate(manifest)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == manifest


def test_monitor_check_rejects_an_unknown_field() -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "http", "scrapeEvery": "15s"}]},
    }
    with pytest.raises(AssertionError):
        _validate_monitor(monitor)


def _validate(manifest: Manifest, crd: Manifest) -> None:
    if manifest["kind"] == crd["spec"]["names"]["kind"]:
        assert manifest["apiVersion"].split("/")[0] == crd["spec"]["group"]
        validate_against_crd(manifest, crd)
        return
    if manifest["kind"] in MONITORING_MODELS:
        _validate_monitor(manifest)
        return
    if manifest["kind"] in UNCHECKED_KINDS:
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_rendered_object_is_valid(values: Path) -> None:
    manifests = render_chart([values], None, "--include-crds")
    crd = load_crd()
    for manifest in manifests:
        _validate(manifest, crd)


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
            {"Role", "ClusterRole", "WorkerPool"},
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
        ({"operator.workerPool.minReplicas": "0"}, "needs api.probes.readiness.httpGet.path=/health"),
        ({"api.metricsPort": "8000"}, "api.metricsPort must differ from api.port"),
        ({"redis.auth.secretKey": "pw"}, "additional properties 'secretKey' not allowed"),
        ({"redisNamespace": "team*"}, "/redisNamespace"),
        ({"api.trustedProxies[0]": "ingress-nginx"}, "/api/trustedProxies/0"),
    ],
)
def test_bad_values_fail_with_a_clear_message(set_values: dict[str, str], message: str) -> None:
    args = ["template", "gorgon", str(CHART_DIR)]
    for key, value in set_values.items():
        args += ["--set", f"{key}={value}"]
    result = run_helm(*args)
    assert result.returncode != 0
    assert message in result.stderr
