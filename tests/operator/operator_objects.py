"""Kubernetes API objects (the official client's models) and client mocks for the operator tests.

The operator is tested at the client boundary: AppsV1Api / CoreV1Api are mocks with the real classes as spec,
returning real model objects or raising real ApiExceptions. No API server runs here.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from unittest.mock import MagicMock

from kubernetes.client import (
    AppsV1Api,
    CoreV1Api,
    V1Container,
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1LabelSelector,
    V1Node,
    V1NodeCondition,
    V1NodeList,
    V1NodeSpec,
    V1NodeStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodList,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1Secret,
)

GPU = "nvidia.com/gpu"
WORKER_LABELS = {"app.kubernetes.io/component": "worker", "app.kubernetes.io/instance": "t"}
GPU_NODES = {"pool": "gpu"}


def deployment(
    replicas: int, ready: int, *, gpus: int = 1, node_selector: dict[str, str] | None = None
) -> V1Deployment:
    limits = {GPU: str(gpus)} if gpus else {}
    container = V1Container(name="worker", resources=V1ResourceRequirements(limits=limits))
    template = V1PodTemplateSpec(
        metadata=V1ObjectMeta(labels=WORKER_LABELS),
        spec=V1PodSpec(containers=[container], node_selector=node_selector),
    )
    return V1Deployment(
        metadata=V1ObjectMeta(name="workers", namespace="ml"),
        spec=V1DeploymentSpec(
            replicas=replicas, selector=V1LabelSelector(match_labels=WORKER_LABELS), template=template
        ),
        status=V1DeploymentStatus(ready_replicas=ready or None),
    )


def node(name: str, gpus: int, *, ready: bool = True, unschedulable: bool = False) -> V1Node:
    return V1Node(
        metadata=V1ObjectMeta(name=name, labels=GPU_NODES),
        spec=V1NodeSpec(unschedulable=unschedulable or None),
        status=V1NodeStatus(
            allocatable={GPU: str(gpus), "cpu": "8"},
            conditions=[V1NodeCondition(type="Ready", status="True" if ready else "False")],
        ),
    )


def pod(
    name: str,
    node_name: str | None,
    gpus: int,
    *,
    labels: dict[str, str] | None = None,
    namespace: str = "ml",
    terminating: bool = False,
) -> V1Pod:
    container = V1Container(
        name="c", resources=V1ResourceRequirements(requests={GPU: str(gpus)} if gpus else {})
    )
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=labels or {},
            deletion_timestamp=datetime.now(UTC) if terminating else None,
        ),
        spec=V1PodSpec(containers=[container], node_name=node_name),
    )


def secret(key: str, value: str) -> V1Secret:
    return V1Secret(data={key: base64.b64encode(value.encode()).decode()})


def api_mocks(
    workload: V1Deployment, nodes: list[V1Node] | None = None, pods: list[V1Pod] | None = None
) -> tuple[MagicMock, MagicMock]:
    apps = MagicMock(spec=AppsV1Api)
    apps.read_namespaced_deployment.return_value = workload
    core = MagicMock(spec=CoreV1Api)
    core.list_node.return_value = V1NodeList(items=nodes or [])
    core.list_pod_for_all_namespaces.return_value = V1PodList(items=pods or [])
    return apps, core


def scaled_to(apps: MagicMock) -> list[int]:
    """The replica counts the operator patched into the scale subresource, in order."""
    return [
        call.args[2]["spec"]["replicas"] for call in apps.patch_namespaced_deployment_scale.call_args_list
    ]
