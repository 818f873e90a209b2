"""The kopf handlers of WorkerPools. Thin: kopf plumbing only; the work is in reconcile.PoolReconciler.

A timer ticks every TICK_S per WorkerPool and polls when the pool's own pollIntervalSeconds has passed, so
each pool measures real state on its own schedule, not only on change events. Errors: TransientError →
kopf.TemporaryError(delay), retried after the delay; InvalidSpecError → kopf.PermanentError, not retried
until the spec changes. The PoolReconciler comes in the operator's memo (`gorgon_operator.cli`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

from gorgon_operator import metrics
from gorgon_operator.errors import InvalidSpecError, TransientError
from gorgon_operator.reconcile import CONDITION_READY, Outcome, PoolReconciler, set_condition
from gorgon_operator.spec import parse_spec

GROUP = "gorgon.ai"
VERSION = "v1alpha1"
PLURAL = "workerpools"
TICK_S = 1.0

log = logging.getLogger(__name__)


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's own bookkeeping in annotations (the status schema holds only our fields), and post only
    kopf's warnings and errors as Kubernetes events: the timer succeeds every tick; our decisions are posted
    explicitly (Scaled, GPUShortfall)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING


@kopf.on.cleanup()
async def close(*, memo: kopf.Memo, **_: Any) -> None:
    reconciler: PoolReconciler | None = memo.get("reconciler")
    if reconciler is not None:
        await reconciler.close()


@kopf.on.probe(id="pools")
def pools_probe(*, memo: kopf.Memo, **_: Any) -> bool:
    return "reconciler" in memo


@kopf.on.create(GROUP, VERSION, PLURAL, id="check-spec-on-create")
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="check-spec-on-update")
@kopf.on.resume(GROUP, VERSION, PLURAL, id="check-spec-on-resume")
def spec_changed(
    *, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Check the spec at once (a bad one is reported before the first poll) and make the timer poll now."""
    memo.next_poll = 0.0
    memo.blocked_generation = None
    try:
        parse_spec(spec)
    except InvalidSpecError as exc:
        conditions = set_condition(
            status.get("conditions") or [], CONDITION_READY, "False", "InvalidSpec", str(exc), now=time.time()
        )
        patch.status["conditions"] = conditions
        raise kopf.PermanentError(f"invalid WorkerPool spec: {exc}") from exc


# kopf types `namespace` as optional for cluster-scoped resources; a WorkerPool is namespaced.
@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_S)  # type: ignore[arg-type]
async def poll(
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    if not _due(memo, meta.get("generation")):
        return
    reconciler: PoolReconciler = memo.reconciler
    previous = _latest_status(memo, status)
    try:
        outcome = await reconciler.poll(namespace, spec, previous)
    except TransientError as exc:
        metrics.record_poll_error(namespace, exc)
        memo.next_poll = time.monotonic() + exc.delay_s
        _write_status(patch, memo, reconciler.failed_status(previous, exc))
        raise kopf.TemporaryError(str(exc), delay=exc.delay_s) from exc
    except InvalidSpecError as exc:
        metrics.record_poll_error(namespace, exc)
        memo.blocked_generation = meta.get("generation")
        _write_status(patch, memo, reconciler.failed_status(previous, exc))
        raise kopf.PermanentError(str(exc)) from exc
    memo.next_poll = time.monotonic() + _interval(spec)
    _write_status(patch, memo, outcome.status)
    _post_events(body, outcome)


def _due(memo: kopf.Memo, generation: int | None) -> bool:
    if memo.get("blocked_generation") is not None and memo.blocked_generation == generation:
        return False
    return time.monotonic() >= memo.get("next_poll", 0.0)


def _latest_status(memo: kopf.Memo, status: kopf.Status) -> dict[str, Any]:
    """Our last written status, unless the object shows a newer poll (another replica worked meanwhile)."""
    ours: dict[str, Any] | None = memo.get("last_status")
    if ours is None or str(status.get("lastPollTime") or "") > str(ours.get("lastPollTime") or ""):
        return dict(status)
    return ours


def _interval(spec: kopf.Spec) -> float:
    return parse_spec(spec).poll_interval_s


def _write_status(patch: kopf.Patch, memo: kopf.Memo, status: dict[str, Any]) -> None:
    """Patch the status and remember it: the next tick may come before the watch shows our own patch."""
    memo.last_status = status
    patch.status.update(status)


def _post_events(body: kopf.Body, outcome: Outcome) -> None:
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
