"""Render the gorgon chart with the real `helm` binary and hand the objects to the tests as dicts."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda_v1alpha1
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "gorgon"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "gorgon"
NAMESPACE = "inference"

Manifest = dict[str, Any]

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas installed.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# prometheus-operator and KEDA kinds: checked with models generated from their CRDs.
CRD_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "ServiceMonitor": monitoring_v1.ServiceMonitor,
    "PodMonitor": monitoring_v1.PodMonitor,
    "ScaledObject": keda_v1alpha1.ScaledObject,
    "TriggerAuthentication": keda_v1alpha1.TriggerAuthentication,
}
# No offline schema for the Gateway API: test_chart_properties checks the HTTPRoute field by field.
UNCHECKED_KINDS = {"HTTPRoute"}


def find_helm() -> Path:
    """The helm in the venv (scripts/install_helm.py puts it there), else the one on PATH."""
    beside_python = Path(sys.executable).parent / "helm"
    if beside_python.exists():
        return beside_python
    on_path = shutil.which("helm")
    if on_path is None:
        pytest.fail("no helm binary: run `make helm` (scripts/install_helm.py) to put one into .venv/bin")
    return Path(on_path)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(find_helm()), *args], capture_output=True, text=True, check=False)


def render_chart(
    values_files: Iterable[Path] = (), set_values: dict[str, str] | None = None, *extra: str
) -> list[Manifest]:
    """`helm template` the chart; fails the test with helm's own message when rendering fails."""
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, *extra]
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    return [doc for doc in yaml.safe_load_all(_template_output(tuple(args))) if doc]


@functools.lru_cache(maxsize=64)
def _template_output(args: tuple[str, ...]) -> str:
    """Each distinct `helm template` runs once per session; every test parses its own fresh dicts."""
    result = run_helm(*args)
    if result.returncode != 0:
        pytest.fail(f"helm template failed: {result.stderr.strip()}")
    return result.stdout


def find(manifests: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)]
    names = [m["metadata"]["name"] for m in matches]
    assert len(matches) == 1, f"expected one {kind} named *{name_suffix}, found {names}"
    return matches[0]


def kinds(manifests: list[Manifest]) -> set[str]:
    return {m["kind"] for m in manifests}


def pod_spec(workload: Manifest) -> dict[str, Any]:
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def container(workload: Manifest, name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(workload)["containers"] if c["name"] == name)


def env_names(container_spec: dict[str, Any]) -> list[str]:
    return [item["name"] for item in container_spec.get("env", [])]


def load_crd() -> Manifest:
    return yaml.safe_load((CHART_DIR / "crds" / "workerpools.yaml").read_text())


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Evaluate a Kubernetes label selector (matchLabels + matchExpressions) against a label set."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in {"Deployment", "StatefulSet", "Pod"}]


def pod_labels(workload: Manifest) -> dict[str, str]:
    metadata = workload["metadata"] if workload["kind"] == "Pod" else workload["spec"]["template"]["metadata"]
    return metadata["labels"]


def as_json_schema(openapi: object) -> object:
    """OpenAPI v3.0 schema → JSON Schema draft 4 (same boolean exclusiveMinimum); `nullable` → a null type."""
    if isinstance(openapi, list):
        return [as_json_schema(item) for item in openapi]
    if not isinstance(openapi, dict):
        return openapi
    converted = {key: as_json_schema(value) for key, value in openapi.items() if key != "nullable"}
    if openapi.get("nullable") and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    return converted


def validate_against_crd(manifest: Manifest, crd: Manifest) -> None:
    version = manifest["apiVersion"].split("/")[1]
    schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
    jsonschema.Draft4Validator(as_json_schema(schema)).validate(manifest)


def validate_with_model(manifest: Manifest) -> None:
    """Types, patterns and required fields from the model; unknown fields show up as a lossy round trip."""
    model = CRD_MODELS[manifest["kind"]].model_validate(manifest)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == manifest


def validate_manifest(manifest: Manifest, crd: Manifest) -> None:
    """One rendered object against its schema: the WorkerPool CRD's, a CRD model's, or Kubernetes' (strict)."""
    if manifest["kind"] == crd["spec"]["names"]["kind"]:
        assert manifest["apiVersion"].split("/")[0] == crd["spec"]["group"]
        validate_against_crd(manifest, crd)
        return
    if manifest["kind"] in CRD_MODELS:
        validate_with_model(manifest)
        return
    if manifest["kind"] in UNCHECKED_KINDS:
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)
