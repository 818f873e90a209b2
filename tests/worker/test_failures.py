"""What a client is told when its request fails alone."""

from __future__ import annotations

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.worker.failures import MAX_DETAIL_CHARS, generation_error, request_error, step_error


def test_a_request_at_fault_gets_a_400_with_its_code() -> None:
    error = request_error(ContextOverflowError("too long", param="max_tokens"))
    assert (error.status, error.type, error.code, error.message) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "too long",
    )
    assert request_error(GorgonError("no")).code == "invalid_request_error"


def test_other_failures_are_500s_with_the_cause_cut_short() -> None:
    error = request_error(ValueError("x" * 10_000))
    assert (error.status, error.type, error.code) == (500, "server_error", "request_failed")
    assert "ValueError" in error.message and len(error.message) < MAX_DETAIL_CHARS + 100
    assert generation_error("sampling failed: nan").status == 500


def test_a_failed_step_is_a_503_the_client_may_retry() -> None:
    error = step_error(RuntimeError("device lost"))
    assert (error.status, error.code) == (503, "engine_step_failed")
    assert "retry" in error.message and "device lost" in error.message
