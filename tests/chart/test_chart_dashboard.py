"""The Grafana dashboard shipped with the chart queries the metrics gorgon really exports."""

from __future__ import annotations

import importlib
import json
import re

from chart_render import CHART_DIR
from prometheus_client import REGISTRY

DASHBOARD = json.loads((CHART_DIR / "dashboards" / "gorgon.json").read_text())
METRIC_MODULES = ("gorgon.api.metrics", "gorgon.worker.metrics", "gorgon_operator.metrics")
# Named in the dashboard before their code exists. A name here that the code defines is reported, so this
# list only shrinks; every planned metric is exported now (tests/observability covers the alerts too).
PLANNED_METRICS: set[str] = set()
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _expressions() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def _dashboard_metrics(prefix: str) -> set[str]:
    names = set()
    for expression in _expressions():
        for name in re.findall(rf"\b{prefix}[a-z0-9_]*", expression):
            names.add(next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name))
    return names


def _exported_metrics() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return set(REGISTRY._names_to_collectors)


def test_dashboard_queries_exported_or_planned_gorgon_metrics() -> None:
    exported = _exported_metrics()
    used = _dashboard_metrics("gorgon_")
    assert used - exported - PLANNED_METRICS == set()
    assert PLANNED_METRICS & exported == set(), "now exported: drop them from PLANNED_METRICS"
    assert used & exported, "the dashboard shows at least the metrics that exist today"


def test_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    assert DASHBOARD["uid"] == "gorgon-overview"
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panel_ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]


def test_every_query_filters_on_the_namespace_variable() -> None:
    for expression in _expressions():
        assert 'namespace=~"$namespace"' in expression, expression
