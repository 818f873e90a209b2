"""JSON log records carry the request id and the trace id of the current span; text stays for terminals."""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gorgon.core import logs, tracing

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def json_lines(log_format: str = "json") -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logs.build_handler(log_format)
    handler.setStream(stream)
    logger = logging.getLogger(f"gorgon.test.{log_format}.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, stream


def test_a_record_in_a_request_carries_its_request_and_trace_ids() -> None:
    logger, stream = json_lines()
    tracing.use_tracer_provider(tracing.in_memory_provider(InMemorySpanExporter()))
    try:

        def in_request() -> None:
            logs.bind_request_id("cmpl-123")
            with tracing.server_span("POST /v1/completions", TRACEPARENT, {}):
                logger.info("queued %d", 3)

        contextvars.copy_context().run(in_request)
    finally:
        tracing.use_tracer_provider(None)
    record = orjson.loads(stream.getvalue())
    assert record["message"] == "queued 3"
    assert record["level"] == "INFO"
    assert record["request_id"] == "cmpl-123"
    assert record["trace_id"] == TRACEPARENT.split("-")[1]
    assert len(record["span_id"]) == 16 and record["span_id"] != TRACEPARENT.split("-")[2]


def test_records_outside_a_request_leave_the_context_fields_out() -> None:
    logger, stream = json_lines()
    contextvars.Context().run(logger.warning, "idle")
    record = orjson.loads(stream.getvalue())
    assert record["message"] == "idle"
    assert not {"request_id", "trace_id", "span_id"} & set(record)


def test_an_exception_is_one_json_line_with_its_traceback() -> None:
    logger, stream = json_lines()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert "ValueError: boom" in record["exception"]


async def test_each_task_keeps_its_own_request_id() -> None:
    logger, stream = json_lines()

    async def serve(request_id: str) -> None:
        logs.bind_request_id(request_id)
        await asyncio.sleep(0.01)
        logger.info("done")

    await asyncio.gather(serve("a"), serve("b"))
    ids = sorted(orjson.loads(line)["request_id"] for line in stream.getvalue().splitlines())
    assert ids == ["a", "b"]


@pytest.mark.parametrize(
    ("requested", "terminal", "expected"),
    [
        (None, True, "text"),
        (None, False, "json"),
        ("auto", False, "json"),
        ("JSON", True, "json"),
        ("text", False, "text"),
        ("yaml", False, "json"),
    ],
)
def test_the_format_choice(requested: str | None, terminal: bool, expected: str) -> None:
    assert logs.resolve_format(requested, terminal) == expected


def test_text_format_is_the_classic_line() -> None:
    logger, stream = json_lines("text")
    logger.info("hello")
    assert stream.getvalue().rstrip().endswith(f"INFO {logger.name}: hello")
