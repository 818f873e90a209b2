"""The operator's Prometheus metrics, served on GORGON_OPERATOR_METRICS_PORT at /metrics.

Labelled by the worker Deployment a WorkerPool scales (`worker_namespace`, `deployment`) and the model whose
stream it measures. `worker_namespace` rather than `namespace`: Prometheus adds the operator pod's own
`namespace` to every series it scrapes.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server

from gorgon_operator.errors import InvalidSpecError, PoolError
from gorgon_operator.policy import Decision, Observation
from gorgon_operator.spec import WorkerPoolSpec

log = logging.getLogger(__name__)

POOL_LABELS = ("worker_namespace", "deployment", "model")

BACKLOG = Gauge(
    "gorgon_queue_backlog",
    "Requests in a model's stream not yet finished (waiting + in flight), as the operator last measured",
    POOL_LABELS,
)
REPLICAS = Gauge(
    "gorgon_operator_replicas", "Worker replicas the Deployment asks for (spec.replicas)", POOL_LABELS
)
READY_REPLICAS = Gauge("gorgon_operator_ready_replicas", "Worker replicas ready", POOL_LABELS)
DESIRED_REPLICAS = Gauge(
    "gorgon_operator_desired_replicas", "Worker replicas the scaling policy wants", POOL_LABELS
)
SCALE_EVENTS = Counter(
    "gorgon_operator_scale_events_total",
    "Times the operator changed a worker Deployment's replicas, by direction and policy reason",
    (*POOL_LABELS, "direction", "reason"),
)
POLL_ERRORS = Counter(
    "gorgon_operator_poll_errors_total",
    "WorkerPool polls that failed, by kind: `transient` (Redis or the API server unreachable; retried) or "
    "`invalid_spec` (not retried until the spec changes)",
    ("worker_namespace", "kind"),
)


def record_poll(namespace: str, pool: WorkerPoolSpec, observation: Observation, decision: Decision) -> None:
    """One poll of a WorkerPool measured `observation` and decided `decision`."""
    labels = (namespace, pool.deployment, pool.model)
    BACKLOG.labels(*labels).set(observation.backlog)
    REPLICAS.labels(*labels).set(observation.current)
    READY_REPLICAS.labels(*labels).set(observation.ready)
    DESIRED_REPLICAS.labels(*labels).set(decision.desired)
    if decision.desired != observation.current:
        direction = "up" if decision.desired > observation.current else "down"
        SCALE_EVENTS.labels(*labels, direction, str(decision.reason)).inc()


def record_poll_error(namespace: str, error: PoolError) -> None:
    """A poll of a WorkerPool in `namespace` failed with `error`."""
    kind = "invalid_spec" if isinstance(error, InvalidSpecError) else "transient"
    POLL_ERRORS.labels(namespace, kind).inc()


def serve_metrics(port: int) -> None:
    """Serve /metrics on `port` from a daemon thread (kopf owns the event loop). A port that cannot be bound
    is logged, not fatal: scaling matters more than its metrics."""
    try:
        start_http_server(port)
    except OSError as exc:
        log.error("operator metrics not served: cannot listen on port %d: %s", port, exc)
        return
    log.info("operator metrics on :%d/metrics", port)
