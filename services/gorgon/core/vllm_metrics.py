"""gorgon's series under vLLM's metric names, for dashboards and autoscalers built for vLLM (production-stack's
Grafana dashboards, KEDA triggers on `vllm:num_requests_waiting`), behind GORGON_API_VLLM_METRICS and
GORGON_WORKER_VLLM_METRICS.

Nothing is measured twice: when Prometheus scrapes, a chosen gorgon family is copied under vLLM's name with
vLLM's labels (`model_name`, and renamed ones such as `reason` → `finished_reason`), summed over the labels vLLM
does not have (the API's `endpoint`). Series without a model (the API's requests for /v1/models) are left out.
docs/observability.md lists the pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import Metric

MODEL_NAME = "model_name"
"""The label vLLM puts on every series: the served model."""
CREATED_SUFFIX = "_created"
"""prometheus-client's creation-time samples: a sum of them means nothing, so copies go without."""


@dataclass(frozen=True)
class VllmName:
    source: str
    """The gorgon family, as its registry collects it (a counter without `_total`)."""
    target: str
    """vLLM's name for it (a counter without `_total`)."""
    labels: tuple[tuple[str, str], ...] = ()
    """(gorgon label, vLLM label) pairs kept besides `model_name` (and a histogram's `le`)."""


def vllm_families(families: Iterable[Metric], names: Sequence[VllmName]) -> Iterator[Metric]:
    """The copies under vLLM's names of those `families` that `names` lists."""
    by_name = {family.name: family for family in families}
    for name in names:
        family = by_name.get(name.source)
        if family is not None:
            yield renamed(family, name)


def renamed(family: Metric, name: VllmName) -> Metric:
    """`family` as vLLM names it: samples with equal vLLM labels summed, series without a model left out."""
    kept = {MODEL_NAME: MODEL_NAME, "le": "le", **dict(name.labels)}
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in family.samples:
        suffix = sample.name.removeprefix(family.name)
        if suffix == CREATED_SUFFIX or not sample.labels.get(MODEL_NAME):
            continue
        labels = tuple((kept[label], value) for label, value in sample.labels.items() if label in kept)
        key = (name.target + suffix, labels)
        totals[key] = totals.get(key, 0.0) + sample.value
    copy = Metric(name.target, family.documentation, family.type)
    for (sample_name, labels), value in totals.items():
        copy.add_sample(sample_name, dict(labels), value)
    return copy


def with_labels(family: Metric, labels: dict[str, str]) -> Metric:
    """`family` with `labels` added to every sample (put first, as the labels of the whole process)."""
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    for sample in family.samples:
        copy.add_sample(
            sample.name, {**labels, **sample.labels}, sample.value, sample.timestamp, sample.exemplar
        )
    return copy
