"""values.yaml is documented and typed; templates follow the chart's conventions."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
from typing import Any

import jsonschema
import pytest
import yaml
from chart_render import CHART_DIR, CI_VALUES, REPO_ROOT, run_helm

pytestmark = pytest.mark.processes


VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z][\w.-]*):(?P<rest>.*)$")


def undocumented_keys(text: str) -> list[str]:
    """Keys without a `# --` comment. A documented key covers its whole subtree; an undocumented key is
    allowed only as a pure grouping map, whose children are then checked one by one."""
    lines = text.splitlines()
    missing: list[str] = []
    covered_below: int | None = None
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        if covered_below is not None and indent > covered_below:
            continue
        covered_below = None
        previous = next((p.strip() for p in reversed(lines[:number]) if p.strip()), "")
        documented = previous.startswith("# --") or _continues_a_doc_comment(lines, number)
        if documented:
            covered_below = indent
        elif match["rest"].strip():
            missing.append(f"line {number + 1}: {match['key']}")
    return missing


def _continues_a_doc_comment(lines: list[str], number: int) -> bool:
    """True when the comment block right above the key starts with `# --` (a multi-line description)."""
    above = number - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        if lines[above].strip().startswith("# --"):
            return True
        above -= 1
    return False


def schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        paths.add(prefix + key)
        paths |= schema_paths(sub, f"{prefix}{key}.")
    return paths


def value_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Paths of values.yaml down to where the schema stops describing children (free-form Kubernetes maps)."""
    paths = set()
    for key, value in values.items():
        paths.add(prefix + key)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            paths |= value_paths(value, sub, f"{prefix}{key}.")
    return paths


def test_every_value_has_a_doc_comment() -> None:
    assert undocumented_keys(VALUES_TEXT) == []


def test_the_doc_comment_check_catches_an_undocumented_value() -> None:
    text = "api:\n  # -- documented\n  port: 8000\n  replicas: 2\n"
    assert undocumented_keys(text) == ["line 4: replicas"]


def test_schema_describes_every_value_and_nothing_else() -> None:
    values = yaml.safe_load(VALUES_TEXT)
    assert value_paths(values, SCHEMA) == schema_paths(SCHEMA)


def test_defaults_and_every_ci_scenario_satisfy_the_schema() -> None:
    jsonschema.validate(yaml.safe_load(VALUES_TEXT), SCHEMA)
    for path in CI_VALUES:
        merged = _deep_merge(yaml.safe_load(VALUES_TEXT), yaml.safe_load(path.read_text()) or {})
        jsonschema.validate(merged, SCHEMA)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def test_helpers_are_prefixed_with_the_chart_name() -> None:
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    names = re.findall(r'define "([^"]+)"', helpers)
    assert names
    assert [name for name in names if not name.startswith("gorgon.")] == []


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_each_template_file_renders_at_most_one_object(values) -> None:
    result = run_helm("template", "gorgon", str(CHART_DIR), "--values", str(values))
    assert result.returncode == 0, result.stderr
    sources = re.findall(r"^# Source: (.+)$", result.stdout, flags=re.MULTILINE)
    assert len(sources) == len(set(sources)), sorted(s for s in sources if sources.count(s) > 1)
    blank_with_spaces = re.findall(r"^[ \t]+$", result.stdout, flags=re.MULTILINE)
    assert blank_with_spaces == [], "a template leaves whitespace-only lines"


def _notes(*set_values: str) -> str:
    args = ["install", "gorgon", str(CHART_DIR), "--dry-run=client", "--namespace", "inference"]
    for value in set_values:
        args += ["--set", value]
    result = run_helm(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_show_how_to_call_the_api() -> None:
    notes = _notes()
    assert "port-forward service/gorgon-api 8000:80" in notes
    assert "curl -s $GORGON_URL/v1/completions" in notes
    assert "curl -sN $GORGON_URL/v1/chat/completions" in notes
    assert "helm test gorgon" in notes


def test_request_bodies_in_the_notes_are_valid_api_requests() -> None:
    from gorgon.api.schemas import ChatCompletionRequest, CompletionRequest

    notes = _notes()
    bodies = [
        json.loads(body.replace("'\"$MODEL\"'", "SmolLM2-135M-Instruct"))
        for body in re.findall(r"-d '(\{.*?\})'$", notes, flags=re.MULTILINE | re.DOTALL)
    ]
    assert len(bodies) == 2
    CompletionRequest.model_validate(bodies[0])
    chat = ChatCompletionRequest.model_validate(bodies[1])
    assert chat.stream is True
    assert chat.use_speculative is True


def test_notes_tell_how_to_read_the_api_key_and_send_it() -> None:
    notes = _notes()
    assert (
        "kubectl --namespace inference get secret gorgon-api-key \\\n"
        "    -o jsonpath='{.data.api-key}' | base64 -d | head -n 1)"
    ) in notes
    calls = [line for line in notes.splitlines() if "curl" in line and "/v1/" in line]
    assert len(calls) == 3
    assert all('-H "Authorization: Bearer $GORGON_API_KEY"' in line for line in calls)
    assert "helm template" in notes and "api.auth.existingSecret" in notes
    assert "WARNING" not in notes


def test_notes_warn_when_api_keys_are_off() -> None:
    notes = _notes("api.auth.enabled=false")
    assert "WARNING: API keys are off" in notes
    assert "GORGON_API_KEY" not in notes


def test_notes_name_an_existing_key_secret() -> None:
    notes = _notes("api.auth.existingSecret=team-keys", "api.auth.secretKey=token.txt")
    assert "get secret team-keys" in notes and "{.data.token\\.txt}" in notes
    assert "helm template" not in notes


def test_notes_point_at_the_ingress_host_when_there_is_one() -> None:
    notes = _notes(
        "ingress.enabled=true",
        "ingress.hosts[0].host=llm.example.org",
        "ingress.hosts[0].paths[0].path=/",
        "ingress.hosts[0].paths[0].pathType=Prefix",
    )
    assert "export GORGON_URL=http://llm.example.org" in notes
    assert "port-forward" not in notes


def test_packaged_chart_carries_crd_dashboard_and_schema(tmp_path) -> None:
    result = run_helm("package", str(CHART_DIR), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    archive = next(tmp_path.glob("gorgon-*.tgz"))
    with tarfile.open(archive) as package:
        names = set(package.getnames())
    for required in (
        "crds/workerpools.yaml",
        "dashboards/gorgon.json",
        "values.schema.json",
        "templates/NOTES.txt",
    ):
        assert f"gorgon/{required}" in names


def test_chart_refuses_kubernetes_older_than_its_minimum() -> None:
    result = run_helm("template", "gorgon", str(CHART_DIR), "--kube-version", "1.28.0")
    assert result.returncode != 0
    assert "chart requires kubeVersion: >=1.29.0-0" in result.stderr


def test_chart_readme_is_current_and_lists_every_documented_value() -> None:
    script = REPO_ROOT / "scripts" / "chart_readme.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    readme = (CHART_DIR / "README.md").read_text()
    assert "| `worker.gpus` | `1` |" in readme
    assert "| `operator.workerPool.maxReplicas` | `4` |" in readme


def _documented_values() -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location("chart_readme", REPO_ROOT / "scripts" / "chart_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.documented_values(VALUES_TEXT))


def test_schema_descriptions_are_the_values_comments() -> None:
    documented = _documented_values()
    assert len(documented) > 100
    for key, comment in documented:
        node = SCHEMA
        for part in key.split("."):
            node = node["properties"][part]
        assert node.get("description") == comment, key
