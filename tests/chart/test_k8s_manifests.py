"""k8s/: the plain manifests are the current render of the chart, build with kustomize, are valid."""

from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from chart_render import REPO_ROOT, find_helm, load_crd, validate_against_crd

pytestmark = pytest.mark.processes

K8S_DIR = REPO_ROOT / "k8s"


def _kustomize_build() -> list[dict]:
    kubectl = find_helm().parent / "kubectl"
    result = subprocess.run(
        [str(kubectl), "kustomize", str(K8S_DIR)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_plain_manifests_are_the_current_render_of_the_chart() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "render_k8s.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_kustomization_builds_every_object_into_the_gorgon_namespace() -> None:
    objects = _kustomize_build()
    kinds = {obj["kind"] for obj in objects}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "StatefulSet", "WorkerPool"} <= kinds
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == "gorgon", obj["metadata"]["name"]


def test_plain_manifests_use_redis_and_api_key_secrets_the_user_creates() -> None:
    objects = _kustomize_build()
    assert not [obj for obj in objects if obj["kind"] == "Secret"], (
        "no generated password or key in a committed file"
    )
    redis = next(obj for obj in objects if obj["kind"] == "StatefulSet")
    env = redis["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "gorgon-redis", "key": "redis-password"}
    volumes = {volume["name"]: volume for volume in redis["spec"]["template"]["spec"]["volumes"]}
    assert volumes["passwords"]["secret"]["secretName"] == "gorgon-redis"
    api = next(
        obj for obj in objects if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "gorgon-api"
    )
    volumes = {volume["name"]: volume for volume in api["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "gorgon-api-key"


def test_the_secrets_the_plain_manifests_need_are_the_ones_their_values_file_tells_how_to_create() -> None:
    commands = (K8S_DIR / "render-values.yaml").read_text()
    for key in ("redis-password", "api-password", "worker-password", "operator-password", "api-key"):
        assert f"--from-literal={key}=" in commands


def test_every_built_object_is_valid_kubernetes() -> None:
    crd = load_crd()
    for obj in _kustomize_build():
        if obj["kind"] == crd["spec"]["names"]["kind"]:
            validate_against_crd(obj, crd)
        else:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
