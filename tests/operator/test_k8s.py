from __future__ import annotations

import pytest
from kubernetes.client import ApiException
from operator_objects import (
    GPU,
    GPU_NODES,
    WORKER_LABELS,
    api_mocks,
    deployment,
    node,
    pod,
    scaled_to,
    secret,
)
from urllib3.exceptions import MaxRetryError

from gorgon_operator.errors import InvalidSpecError, TransientError
from gorgon_operator.k8s import (
    FORBIDDEN_RETRY_S,
    MISSING_OBJECT_RETRY_S,
    KubernetesActuator,
    OwnPods,
    schedulable_replicas,
    workload_of,
)
from gorgon_operator.spec import SecretKeyRef

OWN = OwnPods("ml", WORKER_LABELS)


def test_workload_reads_replicas_ready_selector_and_gpus_per_pod() -> None:
    workload = workload_of(deployment(3, 1, gpus=2, node_selector=GPU_NODES), GPU)
    assert (workload.replicas, workload.ready, workload.gpus_per_replica) == (3, 1, 2)
    assert workload.node_selector == GPU_NODES
    assert workload.match_labels == WORKER_LABELS


def test_workload_without_gpu_limit_needs_no_gpus() -> None:
    assert workload_of(deployment(1, 1, gpus=0), GPU).gpus_per_replica == 0


def test_schedulable_replicas_counts_our_placed_pods_plus_what_free_gpus_fit() -> None:
    nodes = [node("a", 4), node("b", 4)]
    pods = [
        pod("other-1", "a", 2, namespace="research"),
        pod("other-2", "b", 1, namespace="research"),
        pod("w-1", "a", 1, labels=WORKER_LABELS),
        pod("w-2", "b", 1, labels=WORKER_LABELS),
        pod("w-pending", None, 1, labels=WORKER_LABELS),
    ]
    assert schedulable_replicas(nodes, pods, OWN, GPU, 1) == 2 + 3  # 8 GPUs - 5 used = 3 free
    assert schedulable_replicas(nodes, pods, OWN, GPU, 2) == 2 + 1


def test_unready_and_cordoned_nodes_hold_no_capacity() -> None:
    nodes = [node("a", 4), node("down", 8, ready=False), node("cordoned", 8, unschedulable=True)]
    assert schedulable_replicas(nodes, [], OWN, GPU, 1) == 4


def test_a_terminating_worker_still_holds_its_gpu_but_is_not_ours() -> None:
    pods = [pod("w-old", "a", 1, labels=WORKER_LABELS, terminating=True)]
    assert schedulable_replicas([node("a", 2)], pods, OWN, GPU, 1) == 1


def test_a_same_labelled_pod_in_another_namespace_is_not_ours() -> None:
    pods = [pod("w-elsewhere", "a", 1, labels=WORKER_LABELS, namespace="other")]
    assert schedulable_replicas([node("a", 2)], pods, OWN, GPU, 1) == 1


def test_actuator_lists_nodes_by_the_worker_node_selector() -> None:
    apps, core = api_mocks(deployment(1, 1, node_selector=GPU_NODES), [node("a", 4)])
    actuator = KubernetesActuator(apps, core, list_cluster_gpus=True)
    workload = actuator.read_workload("ml", "workers", GPU)
    assert actuator.gpu_capacity("ml", workload, GPU, 1) == 4
    assert core.list_node.call_args.kwargs["label_selector"] == "pool=gpu"
    assert "status.phase!=Succeeded" in core.list_pod_for_all_namespaces.call_args.kwargs["field_selector"]
    assert (
        core.list_pod_for_all_namespaces.call_args.kwargs["resource_version"] == "0"
    )  # from the watch cache


def test_by_default_the_actuator_lists_nothing_cluster_wide_and_says_once_that_the_cap_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    apps, core = api_mocks(deployment(1, 1, node_selector=GPU_NODES), [node("a", 4)])
    actuator = KubernetesActuator(apps, core)
    workload = actuator.read_workload("ml", "workers", GPU)
    with caplog.at_level("WARNING", logger="gorgon_operator.k8s"):
        assert actuator.gpu_capacity("ml", workload, GPU, 1) is None
        assert actuator.gpu_capacity("ml", workload, GPU, 1) is None
    core.list_node.assert_not_called()
    core.list_pod_for_all_namespaces.assert_not_called()
    warnings = [record.message for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "the GPU cap is off" in warnings[0]


def test_actuator_scales_through_the_scale_subresource() -> None:
    apps, core = api_mocks(deployment(1, 1))
    KubernetesActuator(apps, core).scale("ml", "workers", 3)
    assert apps.patch_namespaced_deployment_scale.call_args.args[:2] == ("workers", "ml")
    assert scaled_to(apps) == [3]
    apps.patch_namespaced_deployment.assert_not_called()


def test_actuator_reads_a_secret_key() -> None:
    apps, core = api_mocks(deployment(1, 1))
    core.read_namespaced_secret.return_value = secret("url", "redis://:pw@redis:6379/0")
    assert (
        KubernetesActuator(apps, core).read_secret_value("ml", SecretKeyRef("r", "url"))
        == "redis://:pw@redis:6379/0"
    )
    with pytest.raises(TransientError, match="no key 'other'"):
        KubernetesActuator(apps, core).read_secret_value("ml", SecretKeyRef("r", "other"))


@pytest.mark.parametrize(
    ("status", "error", "delay"),
    [
        (404, TransientError, MISSING_OBJECT_RETRY_S),
        (403, TransientError, FORBIDDEN_RETRY_S),
        (409, TransientError, None),
        (429, TransientError, None),
        (503, TransientError, None),
        (422, InvalidSpecError, None),
        (400, InvalidSpecError, None),
    ],
)
def test_api_errors_are_classified_as_transient_or_permanent(
    status: int, error: type[Exception], delay: float | None
) -> None:
    apps, core = api_mocks(deployment(1, 1))
    apps.read_namespaced_deployment.side_effect = ApiException(status=status, reason="test")
    with pytest.raises(error) as caught:
        KubernetesActuator(apps, core).read_workload("ml", "workers", GPU)
    if delay is not None:
        assert caught.value.delay_s == delay
    assert "ml/workers" in str(caught.value)


def test_an_unreachable_api_server_is_transient() -> None:
    apps, core = api_mocks(deployment(1, 1))
    apps.patch_namespaced_deployment_scale.side_effect = MaxRetryError(None, "/apis", "connection refused")
    with pytest.raises(TransientError, match="cannot reach"):
        KubernetesActuator(apps, core).scale("ml", "workers", 2)
