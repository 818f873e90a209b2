"""Values every component takes, named as in other charts (bitnami, vLLM production-stack, KubeAI):
serviceAccount.{create,name,annotations}, podLabels, priorityClassName, initContainers, extraVolumes,
extraVolumeMounts and an extra environment (`env`)."""

from __future__ import annotations

import json

import pytest
from chart_render import (
    CHART_DIR,
    CI_VALUES,
    Manifest,
    container,
    env_names,
    find,
    pod_labels,
    pod_spec,
    render_chart,
    selector_matches,
)

pytestmark = pytest.mark.processes

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
COMMON_SCENARIO = next(path for path in CI_VALUES if path.name == "common-values.yaml")
COMPONENTS = {"api": "Deployment", "worker": "Deployment", "operator": "Deployment", "redis": "StatefulSet"}
COMMON_VALUES = {
    "serviceAccount",
    "podLabels",
    "priorityClassName",
    "initContainers",
    "extraVolumes",
    "extraVolumeMounts",
    "env",
}


@pytest.fixture(scope="module")
def common_manifests() -> list[Manifest]:
    return render_chart([COMMON_SCENARIO])


def _workload(manifests: list[Manifest], component: str) -> Manifest:
    return find(manifests, COMPONENTS[component], f"-{component}")


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_component_takes_the_common_values(component: str) -> None:
    values = SCHEMA["properties"][component]["properties"]
    assert set(values) >= COMMON_VALUES
    assert set(values["serviceAccount"]["properties"]) == {"create", "name", "annotations"}


@pytest.mark.parametrize(
    ("component", "labels", "priority"),
    [
        ("api", {"team": "ml", "cost-center": "inference"}, "inference-critical"),
        ("worker", {"team": "ml"}, "gpu-batch"),
        ("operator", {"team": "platform"}, "system-cluster-critical"),
        ("redis", {"team": "ml"}, "inference-critical"),
    ],
)
def test_pod_labels_and_priority_class_reach_the_pods(
    common_manifests: list[Manifest], component: str, labels: dict[str, str], priority: str
) -> None:
    workload = _workload(common_manifests, component)
    assert labels.items() <= pod_labels(workload).items()
    assert selector_matches(workload["spec"]["selector"], pod_labels(workload))
    assert pod_spec(workload)["priorityClassName"] == priority


def test_pod_labels_cannot_change_the_labels_the_selectors_use() -> None:
    manifests = render_chart(set_values={"api.podLabels.app\\.kubernetes\\.io/component": "worker"})
    api = find(manifests, "Deployment", "-api")
    assert pod_labels(api)["app.kubernetes.io/component"] == "api"
    assert selector_matches(api["spec"]["selector"], pod_labels(api))


@pytest.mark.parametrize(
    ("component", "account", "created", "annotations"),
    [
        (
            "api",
            "gorgon-api",
            True,
            {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/gorgon-api"},
        ),
        (
            "worker",
            "gpu-worker",
            True,
            {"iam.gke.io/gcp-service-account": "gorgon-worker@project.iam.gserviceaccount.com"},
        ),
        ("operator", "platform-gorgon-operator", False, None),
        ("redis", "gorgon-redis", True, {"example.com/owner": "platform"}),
    ],
)
def test_service_accounts_are_made_named_and_annotated_as_asked(
    common_manifests: list[Manifest], component: str, account: str, created: bool, annotations: dict | None
) -> None:
    assert pod_spec(_workload(common_manifests, component))["serviceAccountName"] == account
    accounts = {m["metadata"]["name"]: m for m in common_manifests if m["kind"] == "ServiceAccount"}
    assert (account in accounts) is created
    if created:
        assert accounts[account]["metadata"].get("annotations") == annotations


def test_the_operator_role_is_bound_to_the_service_account_it_runs_as(
    common_manifests: list[Manifest],
) -> None:
    binding = find(common_manifests, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "platform-gorgon-operator", "namespace": "inference"}
    ]


def test_a_service_account_not_created_and_not_named_is_the_namespace_default() -> None:
    manifests = render_chart(set_values={"api.serviceAccount.create": "false"})
    assert pod_spec(find(manifests, "Deployment", "-api"))["serviceAccountName"] == "default"
    assert not [
        m for m in manifests if m["kind"] == "ServiceAccount" and m["metadata"]["name"] == "gorgon-api"
    ]


def test_every_component_has_a_service_account_of_its_own_by_default(
    default_manifests: list[Manifest],
) -> None:
    for component in COMPONENTS:
        account = pod_spec(_workload(default_manifests, component))["serviceAccountName"]
        assert account == f"gorgon-{component}"
        assert find(default_manifests, "ServiceAccount", account)["metadata"]["name"] == account


@pytest.mark.parametrize(
    ("component", "volume", "mount_path", "own_volume"),
    [
        ("api", "corporate-ca", "/etc/ssl/corporate", "tmp"),
        ("worker", "heads", "/opt/gorgon/heads", "model-cache"),
        ("redis", "tls", "/etc/redis/tls", "data"),
    ],
)
def test_extra_volumes_are_mounted_into_the_main_container_beside_the_charts_own(
    common_manifests: list[Manifest], component: str, volume: str, mount_path: str, own_volume: str
) -> None:
    workload = _workload(common_manifests, component)
    assert {volume, own_volume} <= {v["name"] for v in pod_spec(workload)["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container(workload, component)["volumeMounts"]}
    assert mounts[volume] == mount_path
    assert own_volume in mounts


def test_init_containers_run_before_the_main_container(common_manifests: list[Manifest]) -> None:
    worker = pod_spec(_workload(common_manifests, "worker"))
    assert [c["name"] for c in worker["initContainers"]] == ["wait-for-model-cache"]
    redis = render_chart(
        set_values={"redis.initContainers[0].name": "sysctl", "redis.initContainers[0].image": "busybox"}
    )
    names = [c["name"] for c in pod_spec(find(redis, "StatefulSet", "-redis"))["initContainers"]]
    assert names == ["acl", "sysctl"], "the chart's ACL writer stays first"


@pytest.mark.parametrize(("component", "variable"), [("api", "SSL_CERT_FILE"), ("redis", "TZ")])
def test_extra_environment_reaches_the_container(
    common_manifests: list[Manifest], component: str, variable: str
) -> None:
    names = env_names(container(_workload(common_manifests, component), component))
    assert variable in names
    assert names[-1] == variable, "the component's own environment comes last, after the chart's"
