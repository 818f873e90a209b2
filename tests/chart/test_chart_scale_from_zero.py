"""Scale from zero: the worker pool may default to zero, because the API is ready without workers and queues the
requests for the models it is told it serves (GORGON_API_SERVED_MODELS), so the first request wakes a worker."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from chart_render import CHART_DIR, CI_VALUES, REPO_ROOT, Manifest, container, find, render_chart, run_helm

from gorgon.api.config import ApiSettings
from gorgon.core.defaults import DEFAULT_MODEL_DISPLAY_NAME
from gorgon.engine.config import DEFAULT_GGUF_FILE, DEFAULT_GGUF_PACKAGE

pytestmark = pytest.mark.processes

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
CUSTOM_MODEL = "lmsys/vicuna-7b-v1.3"
SCALES_TO_ZERO = {
    "operator": {},
    "keda": {"autoscaling.mode": "keda"},
    "operator-extra-spec": {
        "operator.workerPool.minReplicas": "1",
        "operator.workerPool.extraSpec.minReplicas": "0",
    },
}


def _env(manifests: list[Manifest], component: str) -> dict[str, str | None]:
    spec = container(find(manifests, "Deployment", f"-{component}"), component)
    return {item["name"]: item.get("value") for item in spec["env"]}


def _served_models(manifests: list[Manifest]) -> dict[str, int]:
    """The API's served models as the API itself parses the variable the chart sets."""
    value = _env(manifests, "api").get("GORGON_API_SERVED_MODELS")
    return {} if value is None else ApiSettings(served_models=value).served_models


def _pool_minimums(manifests: list[Manifest]) -> list[int]:
    """The fewest workers of each autoscaler object the chart renders."""
    minimums = [m["spec"]["minReplicas"] for m in manifests if m["kind"] == "WorkerPool"]
    return minimums + [m["spec"]["minReplicaCount"] for m in manifests if m["kind"] == "ScaledObject"]


def _workers_model(manifests: list[Manifest]) -> str:
    return _env(manifests, "worker").get("GORGON_ENGINE_SERVED_MODEL_NAME") or DEFAULT_MODEL_DISPLAY_NAME


def _default_model_context_length() -> int:
    """The context window of the engine's default model, from its GGUF file (the engine reads it as
    max_position_embeddings)."""
    from gguf import GGUFReader

    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        pytest.skip(f"needs the default model ({DEFAULT_GGUF_PACKAGE})")
    reader = GGUFReader(Path(spec.origin).parent / DEFAULT_GGUF_FILE)
    architecture = reader.get_field("general.architecture").contents()
    return int(reader.get_field(f"{architecture}.context_length").contents())


def _render_error(set_values: dict[str, str]) -> str:
    args = ["template", "gorgon", str(CHART_DIR)]
    for key, value in set_values.items():
        args += ["--set", f"{key}={value}"]
    result = run_helm(*args)
    assert result.returncode != 0, "the chart rendered"
    return result.stderr


def _notes(*set_values: str) -> str:
    args = ["install", "gorgon", str(CHART_DIR), "--dry-run=client", "--namespace", "inference"]
    for value in set_values:
        args += ["--set", value]
    result = run_helm(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


# --- the pool starts at zero, the API is ready without it


def test_both_autoscalers_default_to_a_pool_of_zero(default_manifests: list[Manifest]) -> None:
    assert VALUES["operator"]["workerPool"]["minReplicas"] == 0
    assert VALUES["autoscaling"]["keda"]["minReplicaCount"] == 0
    assert find(default_manifests, "WorkerPool")["spec"]["minReplicas"] == 0
    keda = render_chart(set_values={"autoscaling.mode": "keda"})
    assert find(keda, "ScaledObject")["spec"]["minReplicaCount"] == 0


@pytest.mark.parametrize("autoscaler", sorted(SCALES_TO_ZERO))
def test_a_pool_of_zero_keeps_the_api_readiness_on_ready(autoscaler: str) -> None:
    """/ready depends on Redis only (api/routes/health.py): a pool at zero no longer needs it moved to /health."""
    manifests = render_chart(set_values=SCALES_TO_ZERO[autoscaler])
    assert 0 in _pool_minimums(manifests)
    api = container(find(manifests, "Deployment", "-api"), "api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"


# --- the API serves the workers' model before a worker is up


def test_the_default_install_serves_the_default_model_with_no_worker(
    default_manifests: list[Manifest],
) -> None:
    assert _served_models(default_manifests) == {DEFAULT_MODEL_DISPLAY_NAME: _default_model_context_length()}
    assert _workers_model(default_manifests) == DEFAULT_MODEL_DISPLAY_NAME


def test_the_charts_default_model_is_the_engines() -> None:
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    (name, context_length) = re.findall(
        r'dict "name" "([^"]+)" "contextLength" (\d+)',
        helpers[helpers.index('define "gorgon.defaultModel"') :],
    )[0]
    assert (name, int(context_length)) == (DEFAULT_MODEL_DISPLAY_NAME, _default_model_context_length())


@pytest.mark.parametrize(
    ("set_values", "served"),
    [
        ({"worker.model.servedName": "smol"}, "smol"),
        ({"worker.model.name": DEFAULT_MODEL_DISPLAY_NAME}, DEFAULT_MODEL_DISPLAY_NAME),
        ({"autoscaling.mode": "keda"}, DEFAULT_MODEL_DISPLAY_NAME),
    ],
)
def test_the_default_model_is_served_under_the_workers_name(set_values: dict[str, str], served: str) -> None:
    manifests = render_chart(set_values=set_values)
    assert _served_models(manifests) == {served: _default_model_context_length()}
    assert _workers_model(manifests) == served


def test_served_models_from_values_reach_the_api() -> None:
    manifests = render_chart(
        set_values={
            "worker.model.name": CUSTOM_MODEL,
            "api.servedModels[0].name": CUSTOM_MODEL,
            "api.servedModels[0].contextLength": "4096",
            "api.servedModels[1].name": "team:adapter",
            "api.servedModels[1].contextLength": "2048",
        }
    )
    assert _env(manifests, "api")["GORGON_API_SERVED_MODELS"] == f"{CUSTOM_MODEL}:4096,team:adapter:2048"
    assert _served_models(manifests) == {CUSTOM_MODEL: 4096, "team:adapter": 2048}


def test_a_model_of_your_own_with_a_worker_always_up_needs_no_served_models() -> None:
    manifests = render_chart(
        set_values={"worker.model.name": CUSTOM_MODEL, "operator.workerPool.minReplicas": "1"}
    )
    assert "GORGON_API_SERVED_MODELS" not in _env(manifests, "api")


@pytest.mark.parametrize("autoscaler", sorted(SCALES_TO_ZERO))
def test_a_model_of_your_own_at_zero_needs_served_models(autoscaler: str) -> None:
    error = _render_error({**SCALES_TO_ZERO[autoscaler], "worker.model.name": CUSTOM_MODEL})
    minimum = {
        "operator": "operator.workerPool.minReplicas=0",
        "keda": "autoscaling.keda.minReplicaCount=0",
        "operator-extra-spec": "operator.workerPool.extraSpec.minReplicas=0",
    }[autoscaler]
    assert f"{minimum} (scale to zero) needs the workers' model in api.servedModels" in error
    assert f'[{{name: "{CUSTOM_MODEL}", contextLength:' in error
    assert "503 no_workers" in error


def test_served_models_without_the_workers_model_are_refused_at_zero() -> None:
    error = _render_error(
        {
            "worker.model.name": CUSTOM_MODEL,
            "api.servedModels[0].name": "vicuna",
            "api.servedModels[0].contextLength": "4096",
        }
    )
    assert f'needs the workers\' model in api.servedModels: [{{name: "{CUSTOM_MODEL}"' in error


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a b", "contextLength": "8"}, "/api/servedModels/0/name"),
        ({"name": "m", "contextLength": "0"}, "/api/servedModels/0/contextLength"),
        ({"name": "m"}, "missing property 'contextLength'"),
    ],
)
def test_served_models_are_checked_by_the_schema(entry: dict[str, str], message: str) -> None:
    error = _render_error({f"api.servedModels[0].{key}": value for key, value in entry.items()})
    assert message in error


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_in_every_scenario_a_pool_at_zero_can_be_woken(values: Path) -> None:
    manifests = render_chart([values])
    if 0 in _pool_minimums(manifests):
        assert _workers_model(manifests) in _served_models(manifests)


# --- what users read


def test_the_notes_say_the_first_request_wakes_a_worker() -> None:
    notes = _notes()
    assert "The first request waits in the queue while a" in notes
    assert "helm test gorgon --namespace inference --timeout 10m" in notes
    always_up = _notes("operator.workerPool.minReplicas=1")
    assert "Workers load the model before they take requests" in always_up
    assert "--timeout" not in always_up


def test_the_helm_test_waits_longer_than_the_apis_request_deadline(default_manifests: list[Manifest]) -> None:
    script = container(find(default_manifests, "Pod", "-test"), "smoke")["args"][0]
    (timeout,) = re.findall(r"timeout=(\d+)", script)
    assert int(timeout) > ApiSettings().request_timeout_s


def test_the_deploy_guide_tells_how_to_scale_from_zero() -> None:
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    assert "api.servedModels" in text
    assert "readiness.httpGet.path=/health" not in text
