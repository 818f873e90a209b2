"""API settings the chart derives from its values: the drain of open streams within the pod's grace period, and
the Redis memory guard, which needs a maxmemory on the bundled Redis to compare against."""

from __future__ import annotations

import re

import pytest
import yaml
from chart_render import CHART_DIR, Manifest, container, find, pod_spec, render_chart

from gorgon.api.config import ApiSettings

pytestmark = pytest.mark.processes

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
SHUTDOWN_MARGIN_S = 10
"""What the API keeps of its grace period for its own shutdown once the streams are done."""
REDIS_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
KUBERNETES_SIZE_UNITS = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "": 1,
}


def _api(manifests: list[Manifest]) -> Manifest:
    return find(manifests, "Deployment", "-api")


def _api_env(api: Manifest) -> dict[str, str | None]:
    return {item["name"]: item.get("value") for item in container(api, "api")["env"]}


def _redis_bytes(size: str) -> int:
    """A size as redis.conf writes it (`1gb`, `512mb`, `100000`)."""
    match = re.fullmatch(r"(\d+)([a-z]*)", size.lower())
    assert match is not None, size
    return int(match[1]) * REDIS_SIZE_UNITS[match[2]]


def _kubernetes_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    assert match is not None, quantity
    return int(match[1]) * KUBERNETES_SIZE_UNITS[match[2]]


# --- graceful rollouts


@pytest.mark.parametrize(
    "set_values",
    [
        {},
        {"api.terminationGracePeriodSeconds": "120"},
        {"api.terminationGracePeriodSeconds": "30", "api.preStopSleepSeconds": "0"},
    ],
)
def test_open_streams_get_the_grace_period_less_the_pre_stop_sleep_and_a_margin(
    set_values: dict[str, str],
) -> None:
    api = _api(render_chart(set_values=set_values))
    sleep = container(api, "api")["lifecycle"]["preStop"]["exec"]["command"]
    drain = int(_api_env(api)["GORGON_API_SHUTDOWN_GRACE_S"] or "")
    assert sleep[0] == "sleep"
    assert drain == pod_spec(api)["terminationGracePeriodSeconds"] - int(sleep[1]) - SHUTDOWN_MARGIN_S
    assert ApiSettings(shutdown_grace_s=drain).shutdown_grace_s == drain


def test_the_api_leaves_its_endpoints_before_it_stops_accepting(default_manifests: list[Manifest]) -> None:
    api = _api(default_manifests)
    assert (
        pod_spec(api)["terminationGracePeriodSeconds"] == VALUES["api"]["terminationGracePeriodSeconds"] == 60
    )
    assert container(api, "api")["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert _api_env(_api(default_manifests))["GORGON_API_SHUTDOWN_GRACE_S"] == "45"


# --- Redis memory


def test_the_memory_limit_is_the_apis_default_and_reaches_the_api(default_manifests: list[Manifest]) -> None:
    default = ApiSettings.model_fields["redis_memory_limit"].default
    assert VALUES["api"]["redisMemoryLimit"] == default
    assert float(_api_env(_api(default_manifests))["GORGON_API_REDIS_MEMORY_LIMIT"] or "") == default
    manifests = render_chart(set_values={"api.redisMemoryLimit": "0.75"})
    assert _api_env(_api(manifests))["GORGON_API_REDIS_MEMORY_LIMIT"] == "0.75"


def test_the_bundled_redis_has_a_maxmemory_below_its_container_limit_and_never_evicts(
    default_manifests: list[Manifest],
) -> None:
    config = find(default_manifests, "ConfigMap", "-redis")["data"]["redis.conf"]
    directives = dict(line.split(maxsplit=1) for line in config.splitlines() if line.strip())
    assert directives["maxmemory-policy"] == "noeviction"
    maxmemory = _redis_bytes(directives["maxmemory"])
    redis = container(find(default_manifests, "StatefulSet", "-redis"), "redis")
    assert 0 < maxmemory < _kubernetes_bytes(redis["resources"]["limits"]["memory"])
