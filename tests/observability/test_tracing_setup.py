"""Tracing is off unless the OTEL_* variables ask for an exporter, and costs nothing when off; the
traceparent helpers round-trip W3C trace context."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gorgon.core import tracing

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "api"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ],
)
def test_the_exporter_follows_the_standard_variables(environ: dict[str, str], expected: str | None) -> None:
    assert tracing.exporter_name(environ) == expected


def test_without_otel_variables_tracing_stays_off_and_helpers_do_nothing() -> None:
    assert tracing.configure_tracing("gorgon-test", environ={}) is False
    assert tracing.tracer() is None
    with tracing.server_span("GET /", VALID, {}) as span:
        assert span is None
        assert tracing.current_traceparent() is None
    assert tracing.start_span("gorgon.prefill", None) is None


def test_traceparent_round_trips_through_a_child_span() -> None:
    exporter = InMemorySpanExporter()
    tracing.use_tracer_provider(tracing.in_memory_provider(exporter))
    try:
        with tracing.server_span("GET /", VALID, {}) as span:
            carried = tracing.current_traceparent()
        child = tracing.start_span("gorgon.decode", tracing.context_from_traceparent(carried))
        child.end()
    finally:
        tracing.use_tracer_provider(None)
    assert carried is not None and carried.split("-")[1] == VALID.split("-")[1]
    assert child.parent.span_id == span.get_span_context().span_id


@pytest.mark.parametrize("header", [None, "", "garbage", "00-0000-00-01", f"{VALID}-extra-fields-"])
def test_a_missing_or_malformed_traceparent_gives_no_parent(header: str | None) -> None:
    assert tracing.context_from_traceparent(header) is None
