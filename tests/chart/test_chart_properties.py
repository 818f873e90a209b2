"""Properties users and operators rely on, asserted on the rendered objects."""

from __future__ import annotations

import base64
import json

import pytest
from chart_render import (
    CHART_DIR,
    CI_VALUES,
    Manifest,
    container,
    env_names,
    find,
    load_crd,
    pod_labels,
    pod_spec,
    render_chart,
    run_helm,
    selector_matches,
    workloads,
)

pytestmark = pytest.mark.processes


SCENARIOS = {path.name.removesuffix("-values.yaml"): path for path in CI_VALUES}
ALL_SCENARIOS = pytest.mark.parametrize("scenario", sorted(SCENARIOS))


def _render(scenario: str, **set_values: str) -> list[Manifest]:
    return render_chart([SCENARIOS[scenario]], set_values)


def _worker(manifests: list[Manifest]) -> Manifest:
    return find(manifests, "Deployment", "-worker")


# --- GPUs and scheduling


def test_worker_asks_for_one_gpu_by_default(default_manifests: list[Manifest]) -> None:
    limits = container(_worker(default_manifests), "worker")["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_gpu_scenario_sets_gpus_tolerations_node_selector_and_runtime_class() -> None:
    worker = _worker(_render("gpu"))
    spec = pod_spec(worker)
    assert container(worker, "worker")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_a_worker_takes_at_most_one_gpu() -> None:
    """A worker is one process on one GPU: two GPUs in one pod would sit idle, so the schema refuses them."""
    result = run_helm("template", "gorgon", str(CHART_DIR), "--set", "worker.gpus=2")
    assert result.returncode != 0
    assert "gpus" in result.stderr


def test_vicuna_scenario_serves_vicuna_with_its_heads_on_one_gpu() -> None:
    worker = _worker(_render("vicuna-medusa"))
    env = {item["name"]: item.get("value") for item in container(worker, "worker")["env"]}
    assert env["GORGON_ENGINE_MODEL"] == "lmsys/vicuna-7b-v1.3"
    assert env["GORGON_ENGINE_HEADS_PATH"] == "FasterDecoding/medusa-vicuna-7b-v1.3"
    assert env["GORGON_ENGINE_SERVED_MODEL_NAME"] == "vicuna-7b-v1.3"
    assert env["GORGON_ENGINE_DEVICE"] == "cuda"
    assert container(worker, "worker")["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize(
    ("set_values", "heads"),
    [
        ({"worker.model.heads": "org/heads"}, "org/heads"),
        ({"worker.model.headsPath": "/models/heads"}, "/models/heads"),
        ({"worker.model.heads": "org/heads", "worker.model.headsPath": "/models/heads"}, "org/heads"),
    ],
)
def test_heads_come_from_heads_or_its_older_name(set_values: dict[str, str], heads: str) -> None:
    worker = _worker(render_chart(set_values=set_values))
    env = {item["name"]: item.get("value") for item in container(worker, "worker")["env"]}
    assert env["GORGON_ENGINE_HEADS_PATH"] == heads


def test_cpu_only_worker_has_no_gpu_limit() -> None:
    worker = _worker(render_chart(set_values={"worker.gpus": "0"}))
    assert "nvidia.com/gpu" not in container(worker, "worker")["resources"].get("limits", {})


def test_gpu_limit_keeps_the_memory_limit(default_manifests: list[Manifest]) -> None:
    limits = container(_worker(default_manifests), "worker")["resources"]["limits"]
    assert limits["memory"] == "16Gi"


# --- Replicas: Helm must not fight the operator (helm/helm#7090)


@pytest.mark.parametrize("scenario", ["default", "gpu", "gateway-api", "external-redis"])
def test_worker_deployment_has_no_replicas_when_the_operator_manages_it(scenario: str) -> None:
    assert "replicas" not in _worker(_render(scenario))["spec"]


def test_worker_deployment_has_replicas_when_the_operator_is_off() -> None:
    assert _worker(_render("operator-off"))["spec"]["replicas"] == 3


def test_api_has_no_replicas_under_its_autoscaler() -> None:
    manifests = _render("external-redis")
    hpa = find(manifests, "HorizontalPodAutoscaler")
    api = find(manifests, "Deployment", "-api")
    assert "replicas" not in api["spec"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == api["metadata"]["name"]
    metric_types = {metric["type"] for metric in hpa["spec"]["metrics"]}
    assert metric_types == {"Resource", "Pods"}


def test_workerpool_startup_grace_is_the_worker_startup_budget(default_manifests: list[Manifest]) -> None:
    startup = container(_worker(default_manifests), "worker")["startupProbe"]
    pool = find(default_manifests, "WorkerPool")
    assert pool["spec"]["startupGraceSeconds"] == _probe_seconds(startup) == 1800


@pytest.mark.parametrize(
    ("set_values", "served"),
    [
        ({"worker.model.name": "lmsys/vicuna-7b-v1.3"}, "lmsys/vicuna-7b-v1.3"),
        ({"worker.model.name": "/opt/gorgon/model", "worker.model.servedName": "vicuna-7b"}, "vicuna-7b"),
    ],
)
def test_workers_and_operator_agree_on_the_model_stream(set_values: dict[str, str], served: str) -> None:
    manifests = render_chart(set_values={**set_values, "operator.workerPool.minReplicas": "1"})
    worker_env = {item["name"]: item.get("value") for item in container(_worker(manifests), "worker")["env"]}
    assert worker_env["GORGON_ENGINE_SERVED_MODEL_NAME"] == served
    assert find(manifests, "WorkerPool")["spec"]["model"] == served


def test_workerpool_bounds_come_from_values() -> None:
    pool = find(_render("gpu"), load_crd()["spec"]["names"]["kind"])
    assert (pool["spec"]["minReplicas"], pool["spec"]["maxReplicas"]) == (1, 8)


# --- Probes, drain


def _probe_seconds(probe: dict) -> int:
    return probe["periodSeconds"] * probe["failureThreshold"]


def test_worker_startup_probe_waits_for_the_model_for_minutes(default_manifests: list[Manifest]) -> None:
    worker = container(_worker(default_manifests), "worker")
    assert worker["startupProbe"]["httpGet"]["path"] == "/ready"
    assert _probe_seconds(worker["startupProbe"]) >= 600
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"


@ALL_SCENARIOS
def test_every_http_probe_targets_a_declared_port(scenario: str) -> None:
    for workload in workloads(_render(scenario)):
        for spec in pod_spec(workload)["containers"]:
            port_names = {port["name"] for port in spec.get("ports", [])}
            for probe_key in ("startupProbe", "readinessProbe", "livenessProbe"):
                http = spec.get(probe_key, {}).get("httpGet")
                if http:
                    assert http["port"] in port_names, (workload["metadata"]["name"], probe_key)


def test_api_probes_use_health_and_ready(default_manifests: list[Manifest]) -> None:
    api = container(find(default_manifests, "Deployment", "-api"), "api")
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_worker_drain_fits_in_the_grace_period(default_manifests: list[Manifest]) -> None:
    worker = _worker(default_manifests)
    spec = container(worker, "worker")
    drain = next(
        float(item["value"]) for item in spec["env"] if item["name"] == "GORGON_WORKER_SHUTDOWN_GRACE_S"
    )
    pre_stop = int(spec["lifecycle"]["preStop"]["exec"]["command"][1])
    assert 30 < drain + pre_stop < pod_spec(worker)["terminationGracePeriodSeconds"]


def test_worker_id_is_the_pod_name(default_manifests: list[Manifest]) -> None:
    spec = container(_worker(default_manifests), "worker")
    worker_id = next(item for item in spec["env"] if item["name"] == "GORGON_WORKER_WORKER_ID")
    assert worker_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize(("suffix", "name"), [("-worker", "worker"), ("-api", "api")])
def test_grace_period_leaves_time_to_drain_after_pre_stop(
    default_manifests: list[Manifest], suffix: str, name: str
) -> None:
    workload = find(default_manifests, "Deployment", suffix)
    pre_stop = container(workload, name)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod_spec(workload)["terminationGracePeriodSeconds"] > int(pre_stop[1]) + 30


# --- Security


@ALL_SCENARIOS
def test_every_pod_runs_as_non_root_without_privileges(scenario: str) -> None:
    for workload in workloads(render_chart([SCENARIOS[scenario]])):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for spec in pod["containers"]:
            security = spec["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert security["readOnlyRootFilesystem"] is True


def test_only_the_operator_gets_a_kubernetes_api_token(default_manifests: list[Manifest]) -> None:
    for workload in workloads(default_manifests):
        mounts_token = pod_spec(workload).get("automountServiceAccountToken", True)
        assert mounts_token == (workload["metadata"]["name"].endswith("-operator"))


@ALL_SCENARIOS
def test_no_secret_is_rendered_into_a_plain_environment_value(scenario: str) -> None:
    manifests = _render(scenario, **{"worker.hfToken.value": "hf_secret_value"})
    for workload in workloads(manifests):
        for spec in pod_spec(workload)["containers"]:
            for item in spec.get("env", []):
                value = str(item.get("value", ""))
                assert "hf_secret_value" not in value
                assert "change-me" not in value


def test_hf_token_given_as_a_value_is_stored_in_a_secret_of_the_chart() -> None:
    manifests = _render("operator-off")
    worker = container(_worker(manifests), "worker")
    ref = next(item for item in worker["env"] if item["name"] == "HF_TOKEN")["valueFrom"]["secretKeyRef"]
    secret = find(manifests, "Secret", ref["name"])
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == "hf_example_token_for_ci"


def test_hf_token_reaches_the_worker_from_a_secret() -> None:
    worker = container(_worker(_render("gpu")), "worker")
    token = next(item for item in worker["env"] if item["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}


# --- API keys: on by default


def _api_keys_volume(manifests: list[Manifest]) -> tuple[dict, dict | None]:
    """The API container and the Secret volume its keys file comes from (None when there is none)."""
    api = find(manifests, "Deployment", "-api")
    spec = container(api, "api")
    volumes = {volume["name"]: volume for volume in pod_spec(api)["volumes"]}
    return spec, volumes.get("api-keys")


def test_api_keys_are_on_by_default_with_a_generated_key_read_from_a_file(
    default_manifests: list[Manifest],
) -> None:
    spec, volume = _api_keys_volume(default_manifests)
    assert volume is not None
    secret = find(default_manifests, "Secret", volume["secret"]["secretName"])
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    assert key.startswith("gorgon-") and len(key) >= 40
    assert volume["secret"]["items"] == [{"key": "api-key", "path": "keys"}]
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "api-keys")
    keys_file = next(item["value"] for item in spec["env"] if item["name"] == "GORGON_API_KEYS_FILE")
    assert keys_file == f"{mount['mountPath']}/keys" and mount["readOnly"] is True
    assert not [item for item in spec["env"] if key in str(item)], "the key never becomes an env value"


def test_a_generated_key_is_looked_up_before_a_new_one_is_made() -> None:
    template = (CHART_DIR / "templates" / "api-key-secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert "randAlphaNum" in template


def test_an_existing_secret_replaces_the_generated_key() -> None:
    manifests = render_chart(
        set_values={"api.auth.existingSecret": "my-keys", "api.auth.secretKey": "tokens"}
    )
    _, volume = _api_keys_volume(manifests)
    assert volume is not None
    assert volume["secret"]["secretName"] == "my-keys"
    assert volume["secret"]["items"] == [{"key": "tokens", "path": "keys"}]
    assert not [m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"].endswith("-api-key")]


def test_turning_keys_off_is_explicit_and_leaves_no_key_behind() -> None:
    manifests = render_chart(set_values={"api.auth.enabled": "false"})
    spec, volume = _api_keys_volume(manifests)
    assert volume is None
    assert "GORGON_API_KEYS_FILE" not in env_names(spec)
    assert not [m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"].endswith("-api-key")]


def test_trusted_proxies_reach_the_api_as_one_setting() -> None:
    manifests = render_chart(set_values={"api.trustedProxies": "{10.0.0.0/8,192.168.0.7}"})
    spec, _ = _api_keys_volume(manifests)
    proxies = next(item["value"] for item in spec["env"] if item["name"] == "GORGON_API_TRUSTED_PROXIES")
    assert proxies == "10.0.0.0/8,192.168.0.7"
    assert "GORGON_API_TRUSTED_PROXIES" not in env_names(_api_keys_volume(render_chart())[0])


# --- Redis


def test_redis_network_policy_admits_only_api_worker_and_operator(default_manifests: list[Manifest]) -> None:
    policy = find(default_manifests, "NetworkPolicy")
    redis = find(default_manifests, "StatefulSet", "-redis")
    assert selector_matches(policy["spec"]["podSelector"], pod_labels(redis))
    peers = [peer["podSelector"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    admitted = {
        w["metadata"]["name"].removeprefix("gorgon-")
        for w in workloads(default_manifests)
        if any(selector_matches(peer, pod_labels(w)) for peer in peers)
    }
    assert admitted == {"api", "worker", "operator"}
    ports = [port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]]
    assert ports == [6379]


def test_network_policy_does_not_admit_another_release() -> None:
    policy = find(render_chart(), "NetworkPolicy")
    other_release = {
        "app.kubernetes.io/name": "gorgon",
        "app.kubernetes.io/instance": "someone-else",
        "app.kubernetes.io/component": "api",
    }
    peers = [peer["podSelector"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert not any(selector_matches(peer, other_release) for peer in peers)


@ALL_SCENARIOS
def test_every_gorgon_process_gets_redis_url_and_namespace(scenario: str) -> None:
    for workload in workloads(_render(scenario)):
        for spec in pod_spec(workload)["containers"]:
            if spec.get("args", [""])[0] in {"api", "worker", "operator"}:
                assert {"REDIS_URL", "GORGON_REDIS_NAMESPACE"} <= set(env_names(spec))


@pytest.mark.parametrize("component", ["api", "worker", "operator"])
def test_each_component_reaches_the_bundled_redis_as_its_own_user(
    default_manifests: list[Manifest], component: str
) -> None:
    spec = container(find(default_manifests, "Deployment", f"-{component}"), component)
    names = env_names(spec)
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
    url = next(item["value"] for item in spec["env"] if item["name"] == "REDIS_URL")
    assert url == f"redis://{component}:$(REDIS_PASSWORD)@gorgon-redis:6379/0"
    password = next(item for item in spec["env"] if item["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "gorgon-redis", "key": f"{component}-password"}
    redis_service = find(default_manifests, "Service", "-redis")
    assert redis_service["metadata"]["name"] == "gorgon-redis"


def test_the_redis_secret_holds_a_password_per_user_and_the_acl_a_rule_per_user(
    default_manifests: list[Manifest],
) -> None:
    secret = find(default_manifests, "Secret", "-redis")
    assert sorted(secret["data"]) == [
        "api-password",
        "operator-password",
        "redis-password",
        "worker-password",
    ]
    assert len({base64.b64decode(value) for value in secret["data"].values()}) == 4
    rules = find(default_manifests, "ConfigMap", "-redis")["data"]["acl-rules"].splitlines()
    assert [line.split()[0] for line in rules] == ["default", "api", "worker", "operator"]
    for line in rules[1:]:
        assert "-@all" in line.split() and "~*" not in line.split(), line
        patterns = [word for word in line.split() if "~" in word or word.startswith("&")]
        assert all(word.split("~")[-1].lstrip("&").startswith("gorgon:") for word in patterns), line


def test_redis_acl_rules_follow_the_namespace() -> None:
    rules = find(render_chart(set_values={"redisNamespace": "team-a"}), "ConfigMap", "-redis")["data"][
        "acl-rules"
    ]
    assert "~team-a:requests:*" in rules and "gorgon:" not in rules


def test_redis_restarts_when_its_rules_change() -> None:
    def checksum(namespace: str) -> str:
        redis = find(render_chart(set_values={"redisNamespace": namespace}), "StatefulSet", "-redis")
        return redis["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum("team-a") != checksum("team-b")


def test_external_redis_url_comes_from_a_secret_the_chart_writes() -> None:
    manifests = _render("external-redis")
    api = container(find(manifests, "Deployment", "-api"), "api")
    ref = next(item for item in api["env"] if item["name"] == "REDIS_URL")["valueFrom"]["secretKeyRef"]
    secret = find(manifests, "Secret", ref["name"])
    assert ref["key"] in secret["data"]


def test_redis_persistence_uses_a_volume_claim_template() -> None:
    manifests = _render("operator-off")
    redis = find(manifests, "StatefulSet", "-redis")
    claims = redis["spec"]["volumeClaimTemplates"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "4Gi"
    config = find(manifests, "ConfigMap", "-redis")["data"]["redis.conf"].splitlines()
    assert "appendonly yes" in config and "dir /data" in config
    mounts = {mount["name"]: mount["mountPath"] for mount in container(redis, "redis")["volumeMounts"]}
    assert mounts["data"] == "/data"


# --- RBAC


def _rules(role: Manifest) -> set[tuple[str, str, tuple[str, ...]]]:
    return {
        (group, resource, tuple(sorted(rule["verbs"])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_operator_role_grants_exactly_what_the_operator_does(default_manifests: list[Manifest]) -> None:
    crd = load_crd()
    group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
    assert _rules(find(default_manifests, "Role")) == {
        (group, plural, ("list", "patch", "watch")),
        (group, f"{plural}/status", ("patch",)),
        ("apps", "deployments", ("get",)),
        ("apps", "deployments/scale", ("patch",)),
        ("", "events", ("create",)),
    }


def test_by_default_the_operator_is_confined_to_its_namespace(default_manifests: list[Manifest]) -> None:
    assert not [m for m in default_manifests if m["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    assert find(default_manifests, "WorkerPool")["spec"]["capToSchedulableGPUs"] is False
    operator = container(find(default_manifests, "Deployment", "-operator"), "operator")
    assert "GORGON_OPERATOR_LIST_CLUSTER_GPUS" not in env_names(operator)


def test_the_gpu_cap_is_opt_in_with_a_cluster_role_to_list_nodes_and_pods() -> None:
    manifests = render_chart(set_values={"operator.capToSchedulableGPUs": "true"})
    # The GPU cap: allocatable GPUs of the nodes minus those requested by pods of every namespace.
    assert _rules(find(manifests, "ClusterRole")) == {("", "nodes", ("list",)), ("", "pods", ("list",))}
    assert find(manifests, "WorkerPool")["spec"]["capToSchedulableGPUs"] is True
    operator = container(find(manifests, "Deployment", "-operator"), "operator")
    listing = next(item for item in operator["env"] if item["name"] == "GORGON_OPERATOR_LIST_CLUSTER_GPUS")
    assert listing["value"] == "true"


def test_operator_reads_only_the_secrets_it_is_given() -> None:
    manifests = render_chart(set_values={"operator.redisUrlSecrets[0]": "pool-redis"})
    secret_rules = [rule for rule in find(manifests, "Role")["rules"] if "secrets" in rule["resources"]]
    assert secret_rules == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["pool-redis"], "verbs": ["get"]}
    ]


def test_operator_serves_only_its_own_namespace(default_manifests: list[Manifest]) -> None:
    operator = container(find(default_manifests, "Deployment", "-operator"), "operator")
    namespace = next(item for item in operator["env"] if item["name"] == "GORGON_OPERATOR_NAMESPACE")
    assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_role_bindings_bind_the_operator_service_account() -> None:
    manifests = render_chart(set_values={"operator.capToSchedulableGPUs": "true"})
    operator = find(manifests, "Deployment", "-operator")
    account = pod_spec(operator)["serviceAccountName"]
    for kind, role_kind in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        binding = find(manifests, kind)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "inference"}]
        assert binding["roleRef"]["name"] == find(manifests, role_kind)["metadata"]["name"]


# --- Traffic: Service, Ingress, HTTPRoute, monitors


@ALL_SCENARIOS
def test_services_and_budgets_select_their_pods(scenario: str) -> None:
    manifests = _render(scenario)
    pods = {w["metadata"]["name"]: pod_labels(w) for w in workloads(manifests) if w["kind"] != "Pod"}
    for manifest in manifests:
        if manifest["kind"] == "Service":
            selector = {"matchLabels": manifest["spec"]["selector"]}
        elif manifest["kind"] == "PodDisruptionBudget":
            selector = manifest["spec"]["selector"]
        else:
            continue
        selected = [name for name, labels in pods.items() if selector_matches(selector, labels)]
        assert selected == [manifest["metadata"]["name"]]


def test_ingress_is_safe_for_server_sent_events() -> None:
    manifests = _render("external-redis")
    ingress = find(manifests, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = find(manifests, "Service", "-api")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}


def test_ingress_annotations_from_values_win_over_the_defaults() -> None:
    read_timeout = "ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/proxy-read-timeout"
    manifests = _render("external-redis", **{read_timeout: "7200"})
    annotations = find(manifests, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_http_route_sends_traffic_to_the_api_with_a_stream_long_timeout() -> None:
    manifests = _render("gateway-api")
    route = find(manifests, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    gateway = {"name": "public", "namespace": "gateway-system", "sectionName": "https"}
    assert route["spec"]["parentRefs"] == [gateway]
    assert route["spec"]["hostnames"] == ["gorgon.example.com"]
    rule = route["spec"]["rules"][0]
    service = find(manifests, "Service", "-api")
    assert rule["backendRefs"] == [
        {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}
    ]
    assert rule["timeouts"]["request"] == "3600s"


@pytest.mark.parametrize("scenario", ["external-redis", "gateway-api"])
def test_metrics_are_served_apart_from_the_port_the_edge_exposes(scenario: str) -> None:
    manifests = _render(scenario)
    api = container(find(manifests, "Deployment", "-api"), "api")
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    env = {item["name"]: item.get("value") for item in api["env"]}
    assert int(env["GORGON_API_METRICS_PORT"]) == ports["metrics"] != ports["http"]
    assert int(env["GORGON_API_PORT"]) == ports["http"]
    service = find(manifests, "Service", "-api")
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert service_ports["metrics"]["targetPort"] == "metrics"
    if scenario == "external-redis":
        for rule in find(manifests, "Ingress")["spec"]["rules"]:
            assert {path["backend"]["service"]["port"]["name"] for path in rule["http"]["paths"]} == {"http"}
    else:
        backends = find(manifests, "HTTPRoute")["spec"]["rules"][0]["backendRefs"]
        assert [ref["port"] for ref in backends] == [service_ports["http"]["port"]]


def test_monitors_scrape_the_api_service_and_the_worker_pods() -> None:
    manifests = _render("operator-off")
    api_service = find(manifests, "Service", "-api")
    service_monitor = find(manifests, "ServiceMonitor")
    assert service_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selector_matches(service_monitor["spec"]["selector"], api_service["metadata"]["labels"])
    service_ports = {port["name"] for port in api_service["spec"]["ports"]}
    assert service_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert "metrics" in service_ports
    worker = _worker(manifests)
    pod_monitor = find(manifests, "PodMonitor")
    assert selector_matches(pod_monitor["spec"]["selector"], pod_labels(worker))
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in container(worker, "worker")["ports"]}


def test_dashboard_config_map_ships_the_dashboard_file() -> None:
    config_map = find(_render("operator-off"), "ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(config_map["data"]["gorgon.json"])
    assert shipped == json.loads((CHART_DIR / "dashboards" / "gorgon.json").read_text())
    assert shipped["panels"]


# --- Model cache


def test_model_cache_defaults_to_an_empty_dir(default_manifests: list[Manifest]) -> None:
    volumes = {v["name"]: v for v in pod_spec(_worker(default_manifests))["volumes"]}
    assert "emptyDir" in volumes["model-cache"]
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_model_cache_on_a_pvc_is_mounted_where_hf_home_points() -> None:
    manifests = _render("operator-off")
    worker = _worker(manifests)
    claim = find(manifests, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod_spec(worker)["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    spec = container(worker, "worker")
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "model-cache")
    hf_home = next(item["value"] for item in spec["env"] if item["name"] == "HF_HOME")
    assert hf_home.startswith(mount["mountPath"] + "/")


def test_engine_settings_are_passed_only_when_set(default_manifests: list[Manifest]) -> None:
    default_env = set(env_names(container(_worker(default_manifests), "worker")))
    assert not {"GORGON_ENGINE_MODEL", "GORGON_ENGINE_DEVICE", "GORGON_ENGINE_DTYPE"} & default_env
    gpu_env = {
        item["name"]: item.get("value") for item in container(_worker(_render("gpu")), "worker")["env"]
    }
    assert gpu_env["GORGON_ENGINE_MODEL"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert gpu_env["GORGON_ENGINE_DEVICE"] == "cuda"
    assert gpu_env["GORGON_ENGINE_DTYPE"] == "bfloat16"


def _threads_env(manifests: list[Manifest]) -> list[dict]:
    return [
        item
        for item in container(_worker(manifests), "worker")["env"]
        if item["name"] == "GORGON_ENGINE_THREADS"
    ]


def test_worker_threads_follow_the_pods_cpu_limit_else_its_request(default_manifests: list[Manifest]) -> None:
    (requested,) = _threads_env(default_manifests)
    assert requested["valueFrom"]["resourceFieldRef"] == {
        "containerName": "worker",
        "resource": "requests.cpu",
        "divisor": "1",
    }
    (limited,) = _threads_env(_render("default", **{"worker.resources.limits.cpu": "3"}))
    assert limited["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    chosen = _render("default", **{"worker.env[0].name": "GORGON_ENGINE_THREADS", "worker.env[0].value": "5"})
    assert [str(item.get("value")) for item in _threads_env(chosen)] == ["5"]  # the user's word, alone


# --- Commands


def _gorgon_containers(manifests: list[Manifest]) -> list[dict]:
    return [
        spec
        for workload in workloads(manifests)
        for spec in pod_spec(workload)["containers"]
        if spec["image"].rsplit("/", 1)[-1].startswith("gorgon-") and "command" not in spec
    ]


@ALL_SCENARIOS
def test_every_gorgon_container_runs_a_real_gorgon_command(scenario: str) -> None:
    from gorgon.cli import COMMANDS, build_parser

    containers = _gorgon_containers(_render(scenario))
    assert containers
    command_words = {words for words, _, _ in COMMANDS}
    parser = build_parser()
    for spec in containers:
        assert (spec["args"][0],) in command_words
        parsed = parser.parse_args(spec["args"])
        assert callable(parsed.run), spec["args"]


def test_worker_http_port_matches_the_declared_container_port(default_manifests: list[Manifest]) -> None:
    spec = container(_worker(default_manifests), "worker")
    port_env = next(item["value"] for item in spec["env"] if item["name"] == "GORGON_WORKER_HTTP_PORT")
    assert int(port_env) == spec["ports"][0]["containerPort"]


def _settings_env_names() -> set[str]:
    """Every environment variable the gorgon settings classes read (prefix + field name, or the field's aliases)."""
    from pydantic import AliasChoices

    from gorgon.api.config import ApiSettings
    from gorgon.core.config import RedisSettings
    from gorgon.engine.config import EngineSettings
    from gorgon.worker.config import WorkerSettings
    from gorgon_operator.config import OperatorSettings

    names = set()
    for settings in (ApiSettings, RedisSettings, EngineSettings, WorkerSettings, OperatorSettings):
        prefix = settings.model_config.get("env_prefix", "")
        for field_name, field in settings.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
            else:
                names.add(f"{prefix}{field_name}".upper())
    return names


@ALL_SCENARIOS
def test_every_gorgon_variable_the_chart_sets_is_read_by_a_settings_class(scenario: str) -> None:
    known = _settings_env_names()
    for spec in _gorgon_containers(_render(scenario)):
        for name in env_names(spec):
            if name.startswith("GORGON_") or name == "REDIS_URL":
                assert name in known, f"{spec['name']}: {name} is read by no settings class"


def test_settings_env_names_tell_real_variables_from_misspelt_ones() -> None:
    known = _settings_env_names()
    assert {"GORGON_WORKER_HTTP_PORT", "GORGON_REDIS_NAMESPACE", "REDIS_URL", "GORGON_ENGINE_MODEL"} <= known
    assert "GORGON_WORKER_PORT" not in known
