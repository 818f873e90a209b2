"""Rollouts on configuration change: a changed Secret or ConfigMap the chart writes from values rolls the pods
that read it (checksum annotations), while a `helm template` based GitOps sync, which cannot look up the
generated passwords and key, rolls nothing."""

from __future__ import annotations

import json

import pytest
import yaml
from chart_render import CHART_DIR, CI_VALUES, Manifest, find, render_chart, run_helm, workloads

pytestmark = pytest.mark.processes

SCENARIOS = {path.name.removesuffix("-values.yaml"): path for path in CI_VALUES}
READERS_OF_THE_REDIS_URL = ("-api", "-worker", "-operator")


def _annotations(workload: Manifest) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("annotations", {})


def _checksum(manifests: list[Manifest], suffix: str, kind: str = "Deployment") -> str:
    return _annotations(find(manifests, kind, suffix))["checksum/secret"]


def test_pods_that_read_a_secret_or_config_map_of_the_chart_carry_its_checksum(
    default_manifests: list[Manifest],
) -> None:
    for suffix in READERS_OF_THE_REDIS_URL:
        assert len(_checksum(default_manifests, suffix)) == 64
    assert len(_annotations(find(default_manifests, "StatefulSet", "-redis"))["checksum/config"]) == 64


def test_a_new_external_redis_url_rolls_every_pod_that_reads_it() -> None:
    def render(url: str) -> list[Manifest]:
        return render_chart([SCENARIOS["external-redis"]], {"redis.external.url": url})

    before, after = (
        render("rediss://:one@redis.internal:6380/0"),
        render("rediss://:two@redis.internal:6380/0"),
    )
    for suffix in READERS_OF_THE_REDIS_URL:
        assert _checksum(before, suffix) != _checksum(after, suffix), suffix


def test_a_new_hugging_face_token_rolls_the_workers_only() -> None:
    def render(token: str) -> list[Manifest]:
        return render_chart([SCENARIOS["operator-off"]], {"worker.hfToken.value": token})

    before, after = render("hf_one"), render("hf_two")
    assert _checksum(before, "-worker") != _checksum(after, "-worker")
    assert _checksum(before, "-api") == _checksum(after, "-api")


def test_redis_restarts_when_its_users_change() -> None:
    def checksum(mode: str) -> str:
        redis = find(render_chart(set_values={"autoscaling.mode": mode}), "StatefulSet", "-redis")
        return _annotations(redis)["checksum/config"]

    assert checksum("operator") != checksum("keda")


def _fresh_render() -> list[Manifest]:
    """One `helm template`, as Argo CD runs it on every sync: no cluster, so `lookup` finds nothing."""
    result = run_helm("template", "gorgon", str(CHART_DIR), "--namespace", "inference")
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_repeated_helm_template_renders_roll_no_pod() -> None:
    first, second = _fresh_render(), _fresh_render()
    generated = [("Secret", "-redis"), ("Secret", "-api-key")]
    assert all(find(first, *name)["data"] != find(second, *name)["data"] for name in generated), (
        "each render generates new passwords and a new key (why GitOps needs existingSecret)"
    )
    templates = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads(first) if w["kind"] != "Pod"}
    assert templates == {
        w["metadata"]["name"]: w["spec"]["template"] for w in workloads(second) if w["kind"] != "Pod"
    }


@pytest.mark.parametrize("component", ["redis", "api"])
def test_the_values_tell_gitops_users_to_bring_their_own_secret(component: str) -> None:
    """The descriptions are the values.yaml comments (test_chart_values checks that)."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    description = schema["properties"][component]["properties"]["auth"]["properties"]["existingSecret"][
        "description"
    ]
    assert "`helm template`" in description and "Argo CD" in description
