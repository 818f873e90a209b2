"""What the load test records: one RequestRecord per request, and a RunResult per load level."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Mode(StrEnum):
    """Which decoding the request asks for (`use_speculative` in the request body)."""

    STANDARD = "standard"
    SPECULATIVE = "speculative"


class ErrorType(StrEnum):
    """How a request failed. HTTP statuses are recorded as `http_<status>` besides these."""

    TIMEOUT = "timeout"
    CONNECT = "connect_error"
    TRANSPORT = "transport_error"
    STREAM_ERROR = "stream_error"
    MALFORMED = "malformed_chunk"
    INCOMPLETE = "incomplete_stream"
    TRUNCATED = "truncated_stream"
    CLIENT_OVERLOAD = "client_overload"


@dataclass(slots=True)
class StreamOutcome:
    """Timings of one streamed request, in seconds from the moment it was sent.

    `itls_s` are the gaps between consecutive chunks that carried text (one chunk may carry several tokens
    when speculation accepts more than one). `output_tokens` is the server's `usage.completion_tokens` when it
    reports usage, else the number of text chunks.
    """

    ttft_s: float | None = None
    itls_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    chunks: int = 0
    finish_reason: str | None = None
    status: int | None = None
    error_type: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (tokens - 1)."""
        if not self.ok or self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class LoadLevel:
    """One run's load: a closed loop at `concurrency`, or an open loop at `rate` requests/s, sent to the
    server named `server` (empty when the load test drives one server)."""

    mode: Mode
    concurrency: int | None = None
    rate: float | None = None
    server: str = ""

    @property
    def variant(self) -> str:
        """Server and mode: what a comparison at one load compares."""
        return f"{self.server} {self.mode}" if self.server else str(self.mode)

    @property
    def label(self) -> str:
        load = f"c{self.concurrency}" if self.rate is None else f"r{self.rate:g}"
        return f"{self.server}/{self.mode}-{load}" if self.server else f"{self.mode}-{load}"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request: which run it belonged to, when it started (seconds from the run's start), its outcome."""

    level: LoadLevel
    index: int
    start_s: float
    outcome: StreamOutcome


@dataclass(frozen=True, slots=True)
class RunResult:
    """Every request of one load level, the run's wall-clock duration, and the CPU time the load generator
    itself used meanwhile (it shares the machine with the server it measures)."""

    level: LoadLevel
    records: list[RequestRecord]
    wall_s: float
    client_cpu_s: float = 0.0
