"""The Grafana dashboard and the PrometheusRule alerts query only metrics (and labels) gorgon exports; the
rendered PrometheusRule and operator PodMonitor are valid prometheus-operator objects."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gorgon.api.metrics import TTFT_BUCKETS
from gorgon.core.vllm_metrics import MODEL_NAME
from gorgon.worker import metrics as worker_metrics

pytestmark = pytest.mark.processes


CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "gorgon"
DASHBOARD = json.loads((CHART_DIR / "dashboards" / "gorgon.json").read_text())
METRIC_MODULES = ("gorgon.api.metrics", "gorgon.worker.metrics", "gorgon_operator.metrics")
# Labels Prometheus attaches to every scraped series (target labels) and the histogram bucket label.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "container", "service", "endpoint", "le"}
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
SELECTOR = re.compile(r"\b(gorgon_[a-z0-9_]+)(?:\{([^}]*)\})?")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*"}
ALERTS = {"GorgonBacklogGrowing", "GorgonNoReadyWorkers", "GorgonHighErrorRate", "GorgonTimeToFirstTokenSLO"}


def exported_samples() -> dict[str, set[str]]:
    """Every sample name gorgon's metric modules can export, with the labels it carries."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    samples: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("gorgon_"):
            continue
        collector_labels = _declared_labels(family.name)
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
            samples[family.name + suffix] = collector_labels
    return samples


def _declared_labels(family_name: str) -> set[str]:
    """The labels a family's collector declares; the worker's families are measured in a registry of their
    own and exported with the served model's `model_name` added."""
    collector = _collector(REGISTRY, family_name)
    if collector is worker_metrics.SERVED_MODEL:
        measured = _collector(worker_metrics.MEASURED, family_name)
        return _collector_labels(measured, family_name) | {MODEL_NAME}
    return _collector_labels(collector, family_name)


def _collector(registry: CollectorRegistry, family_name: str) -> Collector | None:
    names = registry._names_to_collectors
    return names.get(family_name) or names.get(f"{family_name}_total")


def _collector_labels(collector: Collector | None, family_name: str) -> set[str]:
    if collector is None:
        return set()
    if hasattr(collector, "_labelnames"):
        return set(collector._labelnames)
    described = {family.name: family for family in collector.describe()}
    return set(getattr(described.get(family_name), "_labelnames", ()))


def render_chart() -> list[dict[str, Any]]:
    helm = Path(sys.executable).parent / "helm"
    command = [str(helm), "template", "gorgon", str(CHART_DIR), "--namespace", "inference"]
    for value in ("prometheusRule", "podMonitor", "dashboard"):
        command += ["--set", f"metrics.{value}.enabled=true"]
    command += ["--set", "metrics.prometheusRule.labels.release=monitoring"]
    command += ["--set", "metrics.prometheusRule.alertLabels.team=ml"]
    rendered = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return render_chart()


def alert_rules(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = [doc for doc in manifests if doc["kind"] == "PrometheusRule"]
    return [entry for group in rule["spec"]["groups"] for entry in group["rules"]]


def check_expression(expression: str, samples: dict[str, set[str]]) -> list[str]:
    """What in `expression` names a metric or label gorgon does not export (empty: all fine)."""
    problems = []
    used_labels: set[str] = set()
    for name, matchers in SELECTOR.findall(expression):
        if name not in samples:
            problems.append(f"unknown metric {name}")
            continue
        used_labels |= samples[name]
        for label in MATCHER_LABEL.findall(matchers):
            if label not in samples[name] | SCRAPE_LABELS:
                problems.append(f"{name} has no label {label}")
    for grouping in GROUPING.findall(expression):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            if label not in used_labels | SCRAPE_LABELS:
                problems.append(f"grouping by {label}, which no metric here has")
    return problems


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def test_the_check_catches_unknown_metrics_and_labels() -> None:
    samples = exported_samples()
    assert check_expression('sum(gorgon_api_requests_total{status="500"})', samples) == []
    assert check_expression("sum(gorgon_api_request_total)", samples) == [
        "unknown metric gorgon_api_request_total"
    ]
    assert check_expression('gorgon_api_requests_total{route="x"}', samples) == [
        "gorgon_api_requests_total has no label route"
    ]
    assert check_expression("sum by (reason) (gorgon_worker_batch_size)", samples) == [
        "grouping by reason, which no metric here has"
    ]


def parses(expression: str) -> bool:
    """True when Prometheus' grammar accepts `expression` (Grafana's variables filled in first)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    try:
        promql_parser.parse(expression)
    except ValueError:
        return False
    return True


def test_the_parser_rejects_broken_promql() -> None:
    assert parses(
        'sum by (le) (rate(gorgon_api_request_seconds_bucket{namespace=~"$namespace"}[$__rate_interval]))'
    )
    assert not parses("sum(rate(gorgon_api_requests_total[5m])")
    assert not parses("histogram_quantile(0.5, sum by le (rate(x[5m])))")


def test_every_dashboard_query_and_alert_is_valid_promql(manifests: list[dict[str, Any]]) -> None:
    expressions = dashboard_expressions() + [rule["expr"] for rule in alert_rules(manifests)]
    assert [expression for expression in expressions if not parses(expression)] == []


def test_every_dashboard_query_uses_exported_metrics_and_labels() -> None:
    samples = exported_samples()
    problems = {expr: check_expression(expr, samples) for expr in dashboard_expressions()}
    assert {expr: found for expr, found in problems.items() if found} == {}


def test_the_dashboard_shows_the_issue_metrics() -> None:
    shown = " ".join(dashboard_expressions())
    for name in (
        "gorgon_api_time_to_first_token_seconds_bucket",
        "gorgon_api_inter_token_latency_seconds_bucket",
        "gorgon_api_rejected_requests_total",
        "gorgon_worker_queue_wait_seconds_bucket",
        "gorgon_worker_speculative_accepted_tokens_total",
        "gorgon_worker_speculative_draft_tokens_total",
        "gorgon_worker_kv_cache_usage_ratio",
        "gorgon_worker_requests_waiting",
        "gorgon_worker_model_load_seconds",
        "gorgon_operator_desired_replicas",
        "gorgon_operator_scale_events_total",
    ):
        assert name in shown, name


def test_every_alert_uses_exported_metrics_and_labels(manifests: list[dict[str, Any]]) -> None:
    samples = exported_samples()
    rules = alert_rules(manifests)
    assert {rule["alert"] for rule in rules} == ALERTS
    assert all(rule["labels"]["team"] == "ml" and rule["labels"]["severity"] for rule in rules)
    for rule in rules:
        assert check_expression(rule["expr"], samples) == [], rule["alert"]
        assert 'namespace="inference"' in rule["expr"], rule["alert"]


def test_the_ttft_objective_is_a_real_bucket_of_the_histogram(manifests: list[dict[str, Any]]) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    ttft = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["ttftSlo"]
    assert ttft["properties"]["bucket"]["enum"] == [floatToGoString(bound) for bound in TTFT_BUCKETS]
    (slo,) = [rule for rule in alert_rules(manifests) if rule["alert"] == "GorgonTimeToFirstTokenSLO"]
    bucket = re.search(r'le="([^"]+)"', slo["expr"]).group(1)
    assert bucket in ttft["properties"]["bucket"]["enum"]


@pytest.mark.parametrize("kind", ["PrometheusRule", "PodMonitor"])
def test_rendered_monitoring_objects_are_valid(manifests: list[dict[str, Any]], kind: str) -> None:
    model = getattr(monitoring_v1, kind)
    for manifest in (doc for doc in manifests if doc["kind"] == kind):
        validated = model.model_validate(manifest)
        assert validated.model_dump(by_alias=True, exclude_unset=True, mode="json") == manifest


def test_the_operator_pod_exposes_the_port_its_podmonitor_scrapes(manifests: list[dict[str, Any]]) -> None:
    monitors = {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == "PodMonitor"}
    deployments = {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == "Deployment"}
    operator = next(name for name in monitors if name.endswith("-operator"))
    (container,) = deployments[operator]["spec"]["template"]["spec"]["containers"]
    port_names = {port["name"] for port in container["ports"]}
    assert monitors[operator]["spec"]["podMetricsEndpoints"][0]["port"] in port_names
    env = {item["name"]: item.get("value") for item in container["env"]}
    metrics_port = next(port for port in container["ports"] if port["name"] == "metrics")["containerPort"]
    assert env["GORGON_OPERATOR_METRICS_PORT"] == str(metrics_port)
