"""The real `gorgon api` and `gorgon worker` processes, configured only by environment variables: tracing from
OTEL_* (console exporter) puts the API's and the worker's spans into the caller's trace across processes, both
/metrics endpoints move, the worker reports its model load time, and logs are JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gorgon.local.processes import api_command, free_port, service_env, stop_all, wait_until_ready

pytestmark = pytest.mark.processes


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@dataclass
class Services:
    api_url: str
    worker_url: str
    api: subprocess.Popen[str]
    worker: subprocess.Popen[str]


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def services(redis_url: str) -> Iterator[Services]:
    namespace = f"gorgon-test-{uuid.uuid4().hex[:12]}"
    extra = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "GORGON_LOG_FORMAT": "json",
        "GORGON_WORKER_READ_BLOCK_MS": "20",
    }
    env = service_env(redis_url, namespace, extra)
    worker_port, api_port = free_port(), free_port()
    worker_command = [sys.executable, "-m", "gorgon.cli", "worker", "--engine", "echo"]
    worker = start([*worker_command, "--http-port", str(worker_port)], env)
    api = start(api_command(api_port), env)
    running = Services(f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{worker_port}", api, worker)
    try:
        wait_until_ready(running.api_url, 60, alive=api)
        yield running
    finally:
        stop_all([api, worker], grace_s=15)


def outputs(process: subprocess.Popen[str]) -> tuple[str, str]:
    stdout, stderr = process.communicate(timeout=15)
    return stdout, stderr


def console_spans(stdout: str) -> list[dict[str, Any]]:
    """The spans the console exporter printed (indented JSON objects, one after another)."""
    decoder, spans, position = json.JSONDecoder(), [], 0
    while (start_at := stdout.find("{", position)) >= 0:
        span, position = decoder.raw_decode(stdout, start_at)
        spans.append(span)
    return spans


def samples(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def test_one_trace_across_processes_metrics_and_json_logs(services: Services) -> None:
    body = {"prompt": "abc", "max_tokens": 6, "stream": True}
    headers = {"traceparent": TRACEPARENT}
    reply = httpx.post(f"{services.api_url}/v1/completions", json=body, headers=headers, timeout=30)
    assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]")
    time.sleep(0.3)  # the worker ends its decode span just after publishing the final chunk
    api_metrics, worker_metrics = samples(services.api_url), samples(services.worker_url)
    assert api_metrics["gorgon_api_time_to_first_token_seconds_count"] == 1
    assert worker_metrics["gorgon_worker_generated_tokens_total"] == 6
    assert worker_metrics["gorgon_worker_model_load_seconds"] > 0

    stop_all([services.api, services.worker], grace_s=15)
    api_out, api_err = outputs(services.api)
    worker_out, _ = outputs(services.worker)
    api_spans, worker_spans = console_spans(api_out), console_spans(worker_out)
    assert {span["name"] for span in api_spans} == {"POST /v1/completions"}  # probes and scrapes: no spans
    (request_span,) = api_spans
    assert request_span["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert request_span["resource"]["attributes"]["service.name"] == "gorgon-api"
    worker_names = {span["name"] for span in worker_spans}
    assert worker_names == {"gorgon.queue_wait", "gorgon.prefill", "gorgon.decode"}
    for span in worker_spans:
        assert span["context"]["trace_id"] == f"0x{TRACE_ID}"
        assert span["parent_id"] == request_span["context"]["span_id"]
        assert span["resource"]["attributes"]["service.name"] == "gorgon-worker"

    records = [json.loads(line) for line in api_err.splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= set(record) for record in records)
    assert any(record["message"].startswith("tracing on: console exporter") for record in records)
