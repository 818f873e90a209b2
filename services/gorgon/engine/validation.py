"""What every engine checks at `add`, so that a step never meets a parameter it cannot handle: a request that
fails here gets a 400 naming the parameter, and the batch never sees it.

Torch-free: the echo engine applies the same checks.
"""

from __future__ import annotations

import math

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.core.limits import MAX_STOP_SEQUENCE_CHARS, MAX_STOP_SEQUENCES
from gorgon.engine.interface import GenerationRequest, SamplingParams


def check_request(request: GenerationRequest, context_length: int) -> None:
    """Raise GorgonError (ContextOverflowError for the context window) for a request no step could serve."""
    if not request.prompt_ids:
        raise GorgonError("the prompt is empty", param="prompt")
    check_sampling(request.params)
    total = len(request.prompt_ids) + request.params.max_new_tokens
    if total > context_length:
        raise ContextOverflowError(
            f"this model's maximum context length is {context_length} tokens, but the prompt has "
            f"{len(request.prompt_ids)} tokens and max_tokens asks for {request.params.max_new_tokens} more "
            f"({total}); shorten the prompt or lower max_tokens",
            param="max_tokens",
        )


def check_sampling(params: SamplingParams) -> None:
    if params.max_new_tokens < 1:
        raise GorgonError("max_tokens must be at least 1", param="max_tokens")
    if not (math.isfinite(params.temperature) and params.temperature >= 0):
        raise GorgonError("temperature must be a finite number >= 0", param="temperature")
    if not (math.isfinite(params.top_p) and 0 < params.top_p <= 1):
        raise GorgonError("top_p must lie in (0, 1]", param="top_p")
    if len(params.stop) > MAX_STOP_SEQUENCES:
        raise GorgonError(f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
    if any(len(sequence) > MAX_STOP_SEQUENCE_CHARS for sequence in params.stop):
        raise GorgonError(
            f"a stop sequence may have at most {MAX_STOP_SEQUENCE_CHARS} characters", param="stop"
        )
