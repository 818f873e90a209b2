"""The WorkerPool CRD (charts/gorgon/crds/workerpools.yaml) against what the operator reads and writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gorgon_operator.handlers import GROUP, PLURAL, VERSION
from gorgon_operator.policy import ScalingPolicy
from gorgon_operator.spec import DEFAULT_GPU_RESOURCE_NAME, DEFAULT_POLL_INTERVAL_S, parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "charts/gorgon/crds/workerpools.yaml").read_text())
EXAMPLE = yaml.safe_load((ROOT / "k8s/examples/workerpool.yaml").read_text())


def version_schema() -> dict[str, Any]:
    (version,) = [v for v in CRD["spec"]["versions"] if v["name"] == VERSION]
    return version


def openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 → JSON Schema draft 4 for the parts the CRD uses (nullable, x-kubernetes-* dropped)."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if converted.pop("nullable", False) and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    if "properties" in converted:
        converted["properties"] = {k: openapi_to_jsonschema(v) for k, v in node["properties"].items()}
    return converted


def undeclared_keys(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys the API server would prune (structural schema, no preserve-unknown-fields)."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        missing = [f"{path}.{key}" for key in value if key not in properties]
        return missing + [
            problem
            for key, item in value.items()
            if key in properties
            for problem in undeclared_keys(item, properties[key], f"{path}.{key}")
        ]
    if isinstance(value, list) and "items" in schema:
        return [problem for item in value for problem in undeclared_keys(item, schema["items"], f"{path}[]")]
    return []


def test_crd_names_match_the_handlers() -> None:
    assert CRD["spec"]["group"] == GROUP
    assert CRD["spec"]["names"]["plural"] == PLURAL
    assert version_schema()["subresources"] == {"status": {}}


def test_the_example_is_valid_against_the_crd_schema_and_parses() -> None:
    schema = openapi_to_jsonschema(version_schema()["schema"]["openAPIV3Schema"])
    jsonschema.validate({"spec": EXAMPLE["spec"]}, schema, cls=jsonschema.Draft4Validator)
    pool = parse_spec(EXAMPLE["spec"])
    assert pool.deployment == "gorgon-worker"
    assert pool.redis_url_secret is not None


def test_the_example_spells_out_the_operator_defaults() -> None:
    pool = parse_spec(EXAMPLE["spec"])
    assert pool.policy == ScalingPolicy()
    assert pool.poll_interval_s == DEFAULT_POLL_INTERVAL_S
    assert pool.gpu_resource_name == DEFAULT_GPU_RESOURCE_NAME


def test_the_schema_rejects_a_pool_without_deployment() -> None:
    schema = openapi_to_jsonschema(version_schema()["schema"]["openAPIV3Schema"])
    with pytest.raises(jsonschema.ValidationError, match="deployment"):
        jsonschema.validate({"spec": {"maxReplicas": 2}}, schema, cls=jsonschema.Draft4Validator)


def test_every_status_field_the_operator_writes_is_declared(sample_status: dict[str, Any]) -> None:
    schema = version_schema()["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert undeclared_keys(sample_status, schema) == []
    jsonschema.validate(sample_status, openapi_to_jsonschema(schema), cls=jsonschema.Draft4Validator)


def test_printer_columns_point_at_declared_fields(sample_status: dict[str, Any]) -> None:
    for column in version_schema()["additionalPrinterColumns"]:
        section, *rest = column["jsonPath"].lstrip(".").split(".")
        if section == "status":
            node: Any = sample_status
            for key in rest:
                node = node[key]
        elif section == "spec":
            node = EXAMPLE["spec"]
            for key in rest:
                node = node[key]
