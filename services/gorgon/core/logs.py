"""Process-wide logging setup. Every entry point calls `configure_logging` once.

Two formats (GORGON_LOG_FORMAT): `text` for people, `json` for log pipelines (one object per line with
time, level, logger, message, request_id, trace_id, span_id and the exception if any). The default, `auto`,
writes text to a terminal and JSON otherwise (a container's stderr). Records carry the request id bound with
`bind_request_id` in the current context and the trace/span id of the current OpenTelemetry span.

Nothing here logs request contents: prompts, completions and API keys never go into a record unless a
caller puts them in its message, and no gorgon code does (DEBUG included).
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

DEFAULT_LEVEL = "INFO"
DEFAULT_FORMAT = "auto"
LOG_FORMATS = ("auto", "text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACING_MODULE = "gorgon.core.tracing"

_request_id: ContextVar[str | None] = ContextVar("gorgon_request_id", default=None)


def bind_request_id(request_id: str | None) -> None:
    """Tag every record logged from this context (this task and the tasks it starts) with `request_id`."""
    _request_id.set(request_id)


class RequestContextFilter(logging.Filter):
    """Adds `request_id`, `trace_id` and `span_id` (None when unknown) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        ids = _trace_ids()
        record.trace_id, record.span_id = ids if ids is not None else (None, None)
        return True


def _trace_ids() -> tuple[str, str] | None:
    """The current span's ids, if this process has loaded tracing at all (else there can be no span)."""
    tracing = sys.modules.get(TRACING_MODULE)
    return tracing.current_trace_ids() if tracing is not None else None


class JsonFormatter(logging.Formatter):
    """One JSON object per record; context fields are left out when they are unknown."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id", "span_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def resolve_format(chosen: str | None, is_terminal: bool) -> str:
    """`text` or `json` for a GORGON_LOG_FORMAT value (None or an unknown value: the default)."""
    value = (chosen or DEFAULT_FORMAT).strip().lower()
    if value not in LOG_FORMATS:
        value = DEFAULT_FORMAT
    if value == "auto":
        return "text" if is_terminal else "json"
    return value


def build_handler(log_format: str) -> logging.Handler:
    """A stderr handler in `log_format` (`text` or `json`) that adds the request context to records."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestContextFilter())
    return handler


def configure_logging(level: str | None = None, log_format: str | None = None) -> None:
    """Log to stderr at `level` (default: $GORGON_LOG_LEVEL or INFO) in `log_format` (default:
    $GORGON_LOG_FORMAT or auto)."""
    chosen = (level or os.environ.get("GORGON_LOG_LEVEL") or DEFAULT_LEVEL).upper()
    requested = log_format or os.environ.get("GORGON_LOG_FORMAT")
    logging.basicConfig(
        level=chosen, handlers=[build_handler(resolve_format(requested, sys.stderr.isatty()))]
    )
    if requested and requested.strip().lower() not in LOG_FORMATS:
        logging.getLogger(__name__).warning(
            "GORGON_LOG_FORMAT=%s is not one of %s; using %s",
            requested,
            ", ".join(LOG_FORMATS),
            DEFAULT_FORMAT,
        )
