"""The chart as a dependency of an umbrella chart: `global` values are accepted (and read where they are gorgon's),
every object still renders valid, and the schema stays strict everywhere else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_render import (
    CHART_DIR,
    CI_VALUES,
    Manifest,
    container,
    find,
    load_crd,
    pod_spec,
    render_chart,
    run_helm,
    validate_manifest,
    workloads,
)

pytestmark = pytest.mark.processes

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
GLOBAL_SCENARIO = next(path for path in CI_VALUES if path.name == "global-values.yaml")
UMBRELLA_VALUES = {
    "global": {
        "imageRegistry": "registry.example.com",
        "imagePullSecrets": ["platform-pull"],
        "storageClass": "fast-ssd",
        "postgresql": {"auth": {"existingSecret": "platform-db"}},
    },
    "gorgon": {"api": {"replicas": 3}, "worker": {"gpus": 0}},
}


@pytest.fixture(scope="module")
def umbrella(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away umbrella chart with gorgon copied into its charts/ (no `helm dependency build` needed)."""
    root = tmp_path_factory.mktemp("umbrella") / "platform"
    shutil.copytree(CHART_DIR, root / "charts" / "gorgon")
    gorgon_version = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["version"]
    chart = {
        "apiVersion": "v2",
        "name": "platform",
        "version": "1.0.0",
        "dependencies": [{"name": "gorgon", "version": gorgon_version}],
    }
    (root / "Chart.yaml").write_text(yaml.safe_dump(chart))
    (root / "values.yaml").write_text(yaml.safe_dump(UMBRELLA_VALUES))
    (root / "templates").mkdir()
    return root


@pytest.fixture(scope="module")
def umbrella_manifests(umbrella: Path) -> list[Manifest]:
    result = run_helm("template", "platform", str(umbrella), "--namespace", "inference", "--include-crds")
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_umbrella_chart_lints(umbrella: Path) -> None:
    result = run_helm("lint", str(umbrella), "--strict", "--with-subcharts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_object_rendered_through_the_umbrella_chart_is_valid(
    umbrella_manifests: list[Manifest],
) -> None:
    crd = load_crd()
    assert {"Deployment", "StatefulSet", "WorkerPool", "CustomResourceDefinition"} <= {
        manifest["kind"] for manifest in umbrella_manifests
    }
    for manifest in umbrella_manifests:
        validate_manifest(manifest, crd)


def test_the_umbrella_charts_values_and_globals_reach_gorgon(umbrella_manifests: list[Manifest]) -> None:
    assert find(umbrella_manifests, "Deployment", "-api")["spec"]["replicas"] == 3
    for workload in workloads(umbrella_manifests):
        spec = pod_spec(workload)
        assert spec["imagePullSecrets"] == [{"name": "platform-pull"}], workload["metadata"]["name"]
        for image in [c["image"] for c in spec["containers"] + spec.get("initContainers", [])]:
            assert image.startswith("registry.example.com/"), image


def test_the_schema_accepts_any_global_and_stays_strict_elsewhere() -> None:
    jsonschema.validate({**DEFAULTS, "global": UMBRELLA_VALUES["global"]}, SCHEMA)
    misspellings: list[dict[str, Any]] = [{"globals": {}}, {"api": {**DEFAULTS["api"], "replica": 3}}]
    for misspelt in misspellings:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**DEFAULTS, **misspelt}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**DEFAULTS, "global": {"imageRegistry": 5}}, SCHEMA)


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ("ghcr.io/gorgon-ai/gorgon-api", "mirror.internal/gorgon-ai/gorgon-api"),
        ("docker.io/library/redis", "mirror.internal/library/redis"),
        ("localhost:5000/team/gorgon-api", "mirror.internal/team/gorgon-api"),
        ("localhost/gorgon-api", "mirror.internal/gorgon-api"),
        ("gorgon-ai/gorgon-api", "mirror.internal/gorgon-ai/gorgon-api"),
        ("gorgon-api", "mirror.internal/gorgon-api"),
    ],
)
def test_the_global_registry_replaces_the_registry_of_an_image(repository: str, expected: str) -> None:
    manifests = render_chart(
        set_values={"global.imageRegistry": "mirror.internal/", "api.image.repository": repository}
    )
    assert container(find(manifests, "Deployment", "-api"), "api")["image"] == f"{expected}:0.1.0"


def test_without_a_global_registry_the_images_are_as_given(default_manifests: list[Manifest]) -> None:
    images = {c["image"] for w in workloads(default_manifests) for c in pod_spec(w)["containers"]}
    assert "ghcr.io/gorgon-ai/gorgon-worker:0.1.0" in images
    assert "docker.io/library/redis:7.2.7-alpine" in images
    assert not [w for w in workloads(default_manifests) if "imagePullSecrets" in pod_spec(w)]


def _pull_secrets(manifests: list[Manifest]) -> dict[str, Any]:
    return {w["metadata"]["name"]: pod_spec(w).get("imagePullSecrets") for w in workloads(manifests)}


def test_global_and_chart_pull_secrets_reach_every_pod() -> None:
    pulled = _pull_secrets(render_chart([GLOBAL_SCENARIO]))
    assert set(pulled) == {"gorgon-api", "gorgon-worker", "gorgon-operator", "gorgon-redis", "gorgon-test"}
    assert all(secrets == [{"name": "mirror-pull"}, {"name": "regcred"}] for secrets in pulled.values()), (
        pulled
    )


def test_a_pull_secret_named_twice_is_listed_once() -> None:
    manifests = render_chart(
        set_values={"global.imagePullSecrets[0]": "regcred", "imagePullSecrets[0].name": "regcred"}
    )
    assert set(map(json.dumps, _pull_secrets(manifests).values())) == {json.dumps([{"name": "regcred"}])}
