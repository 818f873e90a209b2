"""OpenTelemetry tracing: off by default, free when off, configured by the standard OTEL_* variables.

Tracing is on when an exporter is asked for: OTEL_TRACES_EXPORTER (`otlp` or `console`) or an OTLP endpoint
(OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and OTEL_SDK_DISABLED is not `true`.
Everything else the SDK reads itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (resource),
OTEL_TRACES_SAMPLER(_ARG) (sampler), OTEL_BSP_* (batching), OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout).
OTLP goes over HTTP/protobuf (the exporter installed with gorgon).

When off, `tracer()` is None and the helpers below return at once: no span objects, no context switches.

The W3C `traceparent` of the API's request span travels in the Redis message (RequestPayload.traceparent);
the worker continues the trace from it (`context_from_traceparent`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "gorgon"
TRACEPARENT = "traceparent"
EXPORTERS = ("otlp", "console")
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer | None = None


def tracer() -> Tracer | None:
    """The process's tracer, or None when tracing is off."""
    return _tracer


def exporter_name(environ: Mapping[str, str]) -> str | None:
    """Which exporter the OTEL_* variables ask for (`otlp`, `console`), or None: tracing stays off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    chosen = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen in EXPORTERS:
        return chosen
    if chosen == "none":
        return None
    if chosen:
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (use otlp or console); tracing is off", chosen)
        return None
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return "otlp" if any(environ.get(name) for name in endpoints) else None


def configure_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on for this process if the OTEL_* variables ask for it; True when it is on."""
    environ = os.environ if environ is None else environ
    chosen = exporter_name(environ)
    if chosen is None:
        return False
    exporter: SpanExporter
    if chosen == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # only when on
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter()
    resource = Resource.create({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    use_tracer_provider(provider)
    log.info("tracing on: %s exporter, service %s", chosen, provider.resource.attributes[SERVICE_NAME])
    return True


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace into `provider` (None: tracing off). configure_tracing calls it; tests pass a provider with an
    in-memory exporter."""
    global _tracer  # noqa: PLW0603 - one tracer per process, chosen at start-up
    _tracer = provider.get_tracer(INSTRUMENTATION_NAME) if provider is not None else None


def in_memory_provider(exporter: SpanExporter) -> TracerProvider:
    """A provider that hands every span to `exporter` as it ends (for tests and local inspection)."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: INSTRUMENTATION_NAME}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def context_from_traceparent(traceparent: str | None) -> Context | None:
    """The remote parent a W3C traceparent names (None when absent or malformed)."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def traceparent_of(span: Span | None) -> str | None:
    """The W3C traceparent naming `span` (None for no span or an invalid one)."""
    if span is None or not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT)


def current_span() -> Span | None:
    """The span current in this context, or None when tracing is off or none is open."""
    if _tracer is None:
        return None
    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def current_traceparent() -> str | None:
    """The traceparent of the span current in this context (None when tracing is off or no span is open)."""
    if _tracer is None:
        return None
    return traceparent_of(trace.get_current_span())


@contextmanager
def server_span(
    name: str, traceparent: str | None, attributes: Mapping[str, str | int | float | bool]
) -> Iterator[Span | None]:
    """A SERVER span made current for the block, child of the caller's traceparent if it sent one.
    Yields None (and does nothing) when tracing is off."""
    if _tracer is None:
        yield None
        return
    parent = context_from_traceparent(traceparent)
    with _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
    ) as span:
        yield span


def start_span(
    name: str,
    parent: Context | None,
    start_time_ns: int | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Span | None:
    """A span under `parent` (not made current; the caller ends it), or None when tracing is off."""
    if _tracer is None:
        return None
    return _tracer.start_span(
        name, context=parent, start_time=start_time_ns, attributes=dict(attributes or {})
    )


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log records; None when there is none."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
