"""What a client is told when its request fails alone."""

from __future__ import annotations

import torch

from gorgon.api.errors import OpenAIError
from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.worker.failures import (
    MAX_DETAIL_CHARS,
    generation_error,
    is_out_of_memory,
    release_cached_device_memory,
    request_error,
    step_error,
)


def test_a_request_at_fault_gets_a_400_with_its_code() -> None:
    error = request_error(ContextOverflowError("too long", param="max_tokens"))
    assert (error.status, error.type, error.code, error.message) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "too long",
    )
    assert request_error(GorgonError("no")).code == "invalid_request_error"


def test_the_parameter_at_fault_reaches_the_client() -> None:
    error = request_error(GorgonError("token 70000 is outside the vocabulary", param="stop_token_ids"))
    assert (error.status, error.param) == (400, "stop_token_ids")
    assert OpenAIError.from_wire(error).body()["error"]["param"] == "stop_token_ids"


def test_other_failures_are_500s_with_the_cause_cut_short() -> None:
    error = request_error(ValueError("x" * 10_000))
    assert (error.status, error.type, error.code) == (500, "server_error", "request_failed")
    assert "ValueError" in error.message and len(error.message) < MAX_DETAIL_CHARS + 100
    assert generation_error("sampling failed: nan").status == 500


def test_a_failed_step_is_a_503_the_client_may_retry() -> None:
    error = step_error(RuntimeError("device lost"))
    assert (error.status, error.code) == (503, "engine_step_failed")
    assert "retry" in error.message and "device lost" in error.message


def test_a_step_out_of_device_memory_is_a_503_of_its_own() -> None:
    out_of_memory = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(out_of_memory)
    assert not is_out_of_memory(RuntimeError("device lost"))
    error = step_error(out_of_memory)
    assert (error.status, error.type, error.code) == (503, "server_error", "out_of_memory")
    assert "retry" in error.message and "2.00 GiB" in error.message


def test_releasing_device_memory_without_cuda_does_nothing() -> None:
    assert not torch.cuda.is_initialized()
    release_cached_device_memory()
    assert not torch.cuda.is_initialized()
