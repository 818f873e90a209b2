"""The API fuzzed with schemathesis against its own OpenAPI schema (a live API process with an echo worker):
no 5xx, and every status code, content type, header and JSON body conforms to what the schema declares."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from reliability_harness import sized
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.processes


CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = sized(ci=40, soak=1000)


@pytest.fixture(scope="module")
def api_schema(echo_api: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{echo_api}/openapi.json")


def fuzz_operation(operation: schemathesis.APIOperation) -> None:
    """Hypothesis-generated cases of one operation (schemathesis' generators), each checked against the schema."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=60)

    run()


def test_api_conforms_to_its_own_schema_under_fuzzing(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/v1/completions", "/v1/chat/completions"}
    for operation in operations:
        fuzz_operation(operation)
