"""`gorgon operator`: run the kopf operator that scales worker Deployments on their queue backlog.

Liveness: GET http://<pod>:8080/healthz (GORGON_OPERATOR_HEALTH_PORT / _HEALTH_PATH). Runs standalone (one
replica) unless --peering names a kopf peering object, which lets several replicas run with one active.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from gorgon.core.errors import ConfigurationError

if TYPE_CHECKING:
    from gorgon_operator.reconcile import PoolReconciler

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace", help="serve WorkerPools of this namespace only (default: every namespace)"
    )
    parser.add_argument("--health-port", type=int, help="port of the liveness endpoint (default 8080)")
    parser.add_argument(
        "--peering", help="kopf peering name, for more than one replica (default: standalone)"
    )


def run(args: argparse.Namespace) -> int:
    import kopf  # heavy, only for this command

    import gorgon_operator.handlers  # noqa: F401 - registers the handlers with kopf
    from gorgon_operator.config import OperatorSettings
    from gorgon_operator.metrics import serve_metrics

    settings = OperatorSettings()
    namespace = args.namespace or settings.namespace
    port = args.health_port or settings.health_port
    peering = args.peering or settings.peering
    reconciler = build_reconciler()
    if settings.metrics_port:
        serve_metrics(settings.metrics_port)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # "Timer 'poll' succeeded." every tick
    log.info(
        "operator serving %s; liveness on :%d%s", namespace or "all namespaces", port, settings.health_path
    )
    kopf.run(
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else [],
        standalone=peering is None,
        peering_name=peering,
        liveness_endpoint=f"http://0.0.0.0:{port}{settings.health_path}",
        memo=kopf.Memo(reconciler=reconciler),
    )
    return 0


def build_reconciler() -> PoolReconciler:
    """A PoolReconciler talking to the cluster this process runs in (or the current kubeconfig context)."""
    from kubernetes import client, config

    from gorgon.core.config import get_redis_settings
    from gorgon_operator.config import OperatorSettings
    from gorgon_operator.k8s import KubernetesActuator
    from gorgon_operator.reconcile import PoolReconciler

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise ConfigurationError(f"no Kubernetes credentials (in-cluster or kubeconfig): {exc}") from exc
    redis = get_redis_settings()
    actuator = KubernetesActuator(
        client.AppsV1Api(), client.CoreV1Api(), list_cluster_gpus=OperatorSettings().list_cluster_gpus
    )
    return PoolReconciler(actuator, default_redis_url=redis.url, default_redis_namespace=redis.namespace)
