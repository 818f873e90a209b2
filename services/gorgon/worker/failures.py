"""The errors a worker reports when it fails one request alone, in the client's terms (OpenAI `type` and `code`,
HTTP status). None of them is retried on another worker: the entry is acknowledged with the error, since what
failed here would fail there too; only a worker's death leads to redelivery."""

from __future__ import annotations

import sys

from gorgon.core.errors import GorgonError
from gorgon.core.protocol import WireError

MAX_DETAIL_CHARS = 300
"""An exception's text in a client's error message is cut to this: it may quote a whole input."""


def request_error(exc: Exception) -> WireError:
    """A request that could not be prepared or admitted: 400 when it asks for what cannot be done, else 500."""
    if isinstance(exc, GorgonError):
        return WireError(str(exc), "invalid_request_error", exc.code, 400, param=exc.param)
    return WireError(
        f"the worker could not start this request ({_detail(exc)})", "server_error", "request_failed", 500
    )


def generation_error(reason: str) -> WireError:
    """A request the engine gave up on alone, in the middle of its generation."""
    return WireError(
        f"generation failed for this request ({reason[:MAX_DETAIL_CHARS]})",
        "server_error",
        "generation_failed",
        500,
    )


def step_error(exc: Exception) -> WireError:
    """A request whose batch's engine step failed as a whole: nothing points at it, so the client may retry."""
    if is_out_of_memory(exc):
        return WireError(
            f"the engine ran out of device memory on this request alone ({_detail(exc)}); retry the request "
            "when the worker is less busy",
            "server_error",
            "out_of_memory",
            503,
        )
    return WireError(
        f"the engine failed a step of the batch this request was in ({_detail(exc)}); retry the request",
        "server_error",
        "engine_step_failed",
        503,
    )


def _detail(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_DETAIL_CHARS]


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether the device ran out of memory. torch is looked up, not imported: an engine that never imported it
    (echo) cannot have raised its error, and the worker stays importable without it."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def release_cached_device_memory() -> None:
    """Return the CUDA caching allocator's free blocks after an out-of-memory step, so that the next step (and
    other processes on the GPU) can use them."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
