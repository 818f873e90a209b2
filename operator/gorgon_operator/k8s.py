"""The Kubernetes actuator: reads the worker Deployment, the nodes' GPUs and the Redis Secret, and sets the
Deployment's scale through its scale subresource, with the official `kubernetes` client.

RBAC it needs: deployments get, deployments/scale patch, secrets get (only with spec.redis.urlSecretRef),
nodes list and pods list in all namespaces (only with `list_cluster_gpus`, which the GPU cap needs: without it
the actuator makes no cluster-wide call and the cap is off).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from kubernetes.client import ApiException, AppsV1Api, CoreV1Api, V1Deployment, V1Node, V1Pod
from kubernetes.utils import parse_quantity
from urllib3.exceptions import HTTPError

from gorgon_operator.errors import InvalidSpecError, TransientError
from gorgon_operator.spec import SecretKeyRef

log = logging.getLogger(__name__)

MISSING_OBJECT_RETRY_S = 60.0
FORBIDDEN_RETRY_S = 300.0
API_ERROR_RETRY_S = 10.0
FINISHED_POD_PHASES = "status.phase!=Succeeded,status.phase!=Failed"


@dataclass(frozen=True, slots=True)
class Workload:
    """What the operator needs to know about the worker Deployment."""

    replicas: int  # spec.replicas: ready + starting
    ready: int
    match_labels: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    gpus_per_replica: int = 0  # from the pod template, for the GPU resource asked about


class KubernetesActuator:
    """Thin, synchronous wrapper of the API calls (run them in a thread from async code). Cluster-wide lists
    (the GPU cap's) only with `list_cluster_gpus`."""

    def __init__(self, apps: AppsV1Api, core: CoreV1Api, *, list_cluster_gpus: bool = False) -> None:
        self._apps = apps
        self._core = core
        self._list_cluster_gpus = list_cluster_gpus
        self._told_cap_is_off = False

    def read_workload(self, namespace: str, name: str, gpu_resource: str) -> Workload:
        with api_errors(f"Deployment {namespace}/{name}"):
            deployment = self._apps.read_namespaced_deployment(name, namespace)
        return workload_of(deployment, gpu_resource)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        with api_errors(f"scale of Deployment {namespace}/{name}"):
            self._apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})
        log.info("scaled Deployment %s/%s to %d", namespace, name, replicas)

    def read_secret_value(self, namespace: str, ref: SecretKeyRef) -> str:
        with api_errors(f"Secret {namespace}/{ref.name}"):
            secret = self._core.read_namespaced_secret(ref.name, namespace)
        encoded = (secret.data or {}).get(ref.key)
        if encoded is None:
            raise TransientError(
                f"Secret {namespace}/{ref.name} has no key {ref.key!r}", delay_s=MISSING_OBJECT_RETRY_S
            )
        return base64.b64decode(encoded).decode()

    def gpu_capacity(
        self, namespace: str, workload: Workload, gpu_resource: str, gpus_per_replica: int
    ) -> int | None:
        """Workers the GPUs can hold in all: ours already placed plus what the free GPUs fit; None (no cap)
        when the operator may not list the cluster's nodes and pods."""
        if not self._list_cluster_gpus:
            self._tell_cap_is_off()
            return None
        label_selector = ",".join(f"{key}={value}" for key, value in sorted(workload.node_selector.items()))
        # resource_version "0": served from the API server's watch cache, not a quorum read of etcd per poll.
        with api_errors("nodes"):
            nodes = self._core.list_node(label_selector=label_selector or None, resource_version="0").items
        with api_errors("pods"):
            pods = self._core.list_pod_for_all_namespaces(
                field_selector=FINISHED_POD_PHASES, resource_version="0"
            ).items
        own = OwnPods(namespace, workload.match_labels)
        return schedulable_replicas(nodes, pods, own, gpu_resource, gpus_per_replica)

    def _tell_cap_is_off(self) -> None:
        if not self._told_cap_is_off:
            log.warning(
                "a WorkerPool asks for capToSchedulableGPUs, but listing the cluster's nodes and pods is off "
                "(GORGON_OPERATOR_LIST_CLUSTER_GPUS; chart: operator.capToSchedulableGPUs): the GPU cap is off"
            )
            self._told_cap_is_off = True


def workload_of(deployment: V1Deployment, gpu_resource: str) -> Workload:
    spec = deployment.spec
    if spec is None or spec.template.spec is None:
        raise InvalidSpecError("the worker Deployment has no pod template")
    pod_spec = spec.template.spec
    containers = pod_spec.containers or []
    return Workload(
        replicas=int(spec.replicas if spec.replicas is not None else 1),
        ready=int((deployment.status.ready_replicas if deployment.status else None) or 0),
        match_labels=dict(spec.selector.match_labels or {}),
        node_selector=dict(pod_spec.node_selector or {}),
        gpus_per_replica=sum(container_gpus(container.resources, gpu_resource) for container in containers),
    )


def container_gpus(resources: object, gpu_resource: str) -> int:
    """GPUs one container asks for (extended resources: the request defaults to the limit)."""
    if resources is None:
        return 0
    requests = getattr(resources, "requests", None) or {}
    limits = getattr(resources, "limits", None) or {}
    quantity = requests.get(gpu_resource, limits.get(gpu_resource))
    return int(parse_quantity(quantity)) if quantity is not None else 0


@dataclass(frozen=True, slots=True)
class OwnPods:
    """Which pods are this pool's workers: the Deployment's namespace and selector labels."""

    namespace: str
    match_labels: Mapping[str, str]

    def __contains__(self, pod: V1Pod) -> bool:
        if pod.metadata is None:
            return False
        labels = pod.metadata.labels or {}
        return pod.metadata.namespace == self.namespace and all(
            labels.get(key) == value for key, value in self.match_labels.items()
        )


def schedulable_replicas(
    nodes: Iterable[V1Node], pods: Iterable[V1Pod], own: OwnPods, gpu_resource: str, gpus_per_replica: int
) -> int:
    """Our workers already on usable nodes + the workers the free GPUs of those nodes fit.

    Usable: matching the workers' nodeSelector (the caller lists only those), schedulable and Ready. Taints
    and affinity are not evaluated. A terminating pod still holds its GPUs and is not counted as ours.
    """
    usable = {node.metadata.name: node for node in nodes if node.metadata is not None and _usable(node)}
    allocatable = sum(_allocatable(node, gpu_resource) for node in usable.values())
    used, own_placed = 0, 0
    for pod in pods:
        if pod.spec is None or pod.spec.node_name not in usable:
            continue
        used += sum(
            container_gpus(container.resources, gpu_resource) for container in pod.spec.containers or []
        )
        terminating = pod.metadata is not None and pod.metadata.deletion_timestamp is not None
        if not terminating and pod in own:
            own_placed += 1
    if gpus_per_replica < 1:
        raise ValueError("a GPU cap needs gpus_per_replica ≥ 1")
    free = max(0, allocatable - used)
    return own_placed + free // gpus_per_replica


def _usable(node: V1Node) -> bool:
    if node.spec is not None and node.spec.unschedulable:
        return False
    conditions = (node.status.conditions if node.status else None) or []
    return any(condition.type == "Ready" and condition.status == "True" for condition in conditions)


def _allocatable(node: V1Node, gpu_resource: str) -> int:
    allocatable = (node.status.allocatable if node.status else None) or {}
    return _quantity(allocatable.get(gpu_resource))


def _quantity(value: str | None) -> int:
    return int(parse_quantity(value)) if value is not None else 0


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    """Turn an API failure into TransientError (passes, or is fixed outside the spec) or InvalidSpecError.

    404 the object is missing (it may be created later: helm ordering) · 401/403 RBAC not (yet) granted · 409,
    429, 5xx and connection errors are transient · 400/422 the request built from the spec is invalid.
    """
    try:
        yield
    except ApiException as exc:
        raise classify_api_error(exc, what) from exc
    except (HTTPError, OSError) as exc:
        raise TransientError(
            f"cannot reach the Kubernetes API for {what}: {exc}", delay_s=API_ERROR_RETRY_S
        ) from exc


def classify_api_error(exc: ApiException, what: str) -> TransientError | InvalidSpecError:
    status = int(exc.status or 0)
    if status == 404:
        return TransientError(f"{what} not found", delay_s=MISSING_OBJECT_RETRY_S)
    if status in (401, 403):
        return TransientError(
            f"not allowed to access {what} (check the operator's RBAC)", delay_s=FORBIDDEN_RETRY_S
        )
    if status in (400, 422):
        return InvalidSpecError(f"the API rejected the request for {what}: {exc.reason}")
    return TransientError(
        f"Kubernetes API error {status} for {what}: {exc.reason}", delay_s=API_ERROR_RETRY_S
    )
