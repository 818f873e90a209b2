"""The API's Prometheus metrics (GET /metrics). docs/observability.md lists them with their vLLM and
OpenTelemetry GenAI equivalents.

One API process per pod (`gorgon api` runs a single uvicorn process; scale with replicas), so the default
registry is the whole truth of the process and no multiprocess collector is needed.

Requests, latency and rejections are recorded for every HTTP request by `gorgon.api.telemetry.RequestTelemetry`
(an ASGI middleware); time to first token and inter-token latency by `observed_stream`, around the chunks of a
streaming request. The latency histograms carry the served model's `model_name` (as the request resolved it, so
its values are the served models, never a client's free text; empty for requests that name none, such as
GET /v1/models); with GORGON_API_VLLM_METRICS they are also published under vLLM's names (`VLLM_NAMES`).

With GORGON_API_METRICS_PORT set, `serve_metrics_apart` serves them on that port instead of the API port.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric, start_http_server
from prometheus_client.registry import Collector

from gorgon.api.generation import Waiting
from gorgon.core.protocol import Chunk
from gorgon.core.vllm_metrics import MODEL_NAME, VllmName, vllm_families

STARTED_AT = "gorgon.started_at"
"""ASGI scope key: perf_counter() when the request arrived (set by RequestTelemetry)."""
SERVED_MODEL = "gorgon.model_name"
"""ASGI scope key: the served model the request resolved to (set by `serve_model_of`)."""
UNMATCHED_ENDPOINT = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 1, 2.5)

REQUESTS = Counter(
    "gorgon_api_requests_total",
    "HTTP requests answered, by endpoint (route template) and status",
    ["endpoint", "status"],
)
REQUEST_SECONDS = Histogram(
    "gorgon_api_request_seconds",
    "End-to-end latency: request arrival to the last byte of the response (a stream's [DONE]), by endpoint "
    "and model",
    ["endpoint", MODEL_NAME],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("gorgon_api_requests_in_flight", "HTTP requests being served, open streams included")
STREAMS_IN_FLIGHT = Gauge("gorgon_api_streams_in_flight", "Streaming (SSE) generations being relayed")
REJECTED = Counter(
    "gorgon_api_rejected_requests_total",
    "Requests refused with a 4xx or 503 before any output, by reason (the OpenAI error code)",
    ["reason"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gorgon_api_time_to_first_token_seconds",
    "Streaming requests: request arrival to the first chunk with tokens, by endpoint and model",
    ["endpoint", MODEL_NAME],
    buckets=TTFT_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "gorgon_api_inter_token_latency_seconds",
    "Streaming requests: time between consecutive output tokens (a chunk's gap spread over its tokens), by "
    "endpoint and model",
    ["endpoint", MODEL_NAME],
    buckets=TOKEN_GAP_BUCKETS,
)
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})

VLLM_NAMES = (
    VllmName("gorgon_api_time_to_first_token_seconds", "vllm:time_to_first_token_seconds"),
    VllmName("gorgon_api_inter_token_latency_seconds", "vllm:inter_token_latency_seconds"),
    VllmName("gorgon_api_inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    VllmName("gorgon_api_request_seconds", "vllm:e2e_request_latency_seconds"),
)
"""The API's histograms under vLLM's names, summed over endpoints (`time_per_output_token_seconds` is vLLM's
name before v1 for its inter-token latency, which production-stack's dashboards still read)."""

log = logging.getLogger(__name__)


def serve_metrics_apart(host: str, port: int) -> WSGIServer:
    """Serve the metrics on a port of their own (prometheus_client's server, in a daemon thread, so a scrape
    never waits for the event loop); stop it with `shutdown()` and `server_close()`."""
    server, _ = start_http_server(port, addr=host)
    log.info("API metrics on http://%s:%d/metrics", host, port)
    return server


@functools.cache
def requests_counter(endpoint: str, status: int) -> Counter:
    """The request counter of one endpoint and status (cached: label lookups cost more than the increment)."""
    return REQUESTS.labels(endpoint, str(status))


@functools.cache
def latency_histogram(endpoint: str, model_name: str) -> Histogram:
    return REQUEST_SECONDS.labels(endpoint, model_name)


@functools.cache
def first_token_histogram(endpoint: str, model_name: str) -> Histogram:
    return TIME_TO_FIRST_TOKEN.labels(endpoint, model_name)


@functools.cache
def token_gap_histogram(endpoint: str, model_name: str) -> Histogram:
    return INTER_TOKEN_LATENCY.labels(endpoint, model_name)


def serve_model_of(scope: MutableMapping[str, Any], model_name: str) -> None:
    """The request resolved to served model `model_name`: its latencies are labelled with it."""
    scope[SERVED_MODEL] = model_name


def model_of(scope: MutableMapping[str, Any]) -> str:
    """The served model of the request (empty when it named none, or was refused before naming one)."""
    return str(scope.get(SERVED_MODEL, ""))


def endpoint_of(scope: MutableMapping[str, Any]) -> str:
    """The route template that served the request (bounded label values), or `other`."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED_ENDPOINT


def is_rejection(status: int) -> bool:
    """Refused without generating: a client error (not 499, the client hanging up) or 503 (no capacity)."""
    return (400 <= status < 500 and status != 499) or status == 503


async def observed_stream(
    events: AsyncGenerator[Chunk | Waiting, None], scope: MutableMapping[str, Any]
) -> AsyncGenerator[Chunk | Waiting, None]:
    """Pass a streaming request's chunks (and `Waiting` markers) through, recording time to first token and
    inter-token latency."""
    endpoint, model_name = endpoint_of(scope), model_of(scope)
    previous = scope.get(STARTED_AT) or time.perf_counter()
    first = True
    STREAMS_IN_FLIGHT.inc()
    try:
        async for chunk in events:
            if isinstance(chunk, Chunk) and chunk.token_ids:
                now = time.perf_counter()
                _observe_gap(endpoint, model_name, now - previous, len(chunk.token_ids), first=first)
                previous, first = now, False
            yield chunk
    finally:
        STREAMS_IN_FLIGHT.dec()
        await events.aclose()


def _observe_gap(endpoint: str, model_name: str, gap_s: float, tokens: int, *, first: bool) -> None:
    """The first chunk gives the time to first token; a later chunk of n tokens after a gap g counts as n
    tokens g/n apart (a Medusa step emits several tokens at once)."""
    if first:
        first_token_histogram(endpoint, model_name).observe(gap_s)
        return
    latency = token_gap_histogram(endpoint, model_name)
    for _ in range(tokens):
        latency.observe(gap_s / tokens)


class VllmNamedLatencies(Collector):
    """The latency histograms under vLLM's names, while `enabled` (GORGON_API_VLLM_METRICS)."""

    def __init__(self) -> None:
        self.enabled = False

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        if not self.enabled:
            return []
        families = [family for histogram in LATENCY_HISTOGRAMS for family in histogram.collect()]
        return list(vllm_families(families, VLLM_NAMES))


LATENCY_HISTOGRAMS = (TIME_TO_FIRST_TOKEN, INTER_TOKEN_LATENCY, REQUEST_SECONDS)
VLLM_NAMED = VllmNamedLatencies()
REGISTRY.register(VLLM_NAMED)
