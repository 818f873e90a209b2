"""What every engine checks at `add`, so that a step never meets a parameter it cannot handle: a request that
fails here gets a 400 naming the parameter, and the batch never sees it.

Torch-free: the echo engine applies the same checks.
"""

from __future__ import annotations

import math

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.core.limits import (
    LOGIT_BIAS_RANGE,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_STOP_TOKEN_IDS,
    PENALTY_RANGE,
)
from gorgon.engine.interface import GenerationRequest, SamplingParams


def check_request(request: GenerationRequest, context_length: int) -> None:
    """Raise GorgonError (ContextOverflowError for the context window) for a request no step could serve."""
    if not request.prompt_ids:
        raise GorgonError("the prompt is empty", param="prompt")
    check_sampling(request.params)
    if not 0 <= request.params.min_tokens <= request.params.max_new_tokens + request.resumed_tokens:
        raise GorgonError("min_tokens must lie in [0, max_tokens]", param="min_tokens")
    total = len(request.prompt_ids) + request.params.max_new_tokens
    if total > context_length:
        raise ContextOverflowError(
            f"this model's maximum context length is {context_length} tokens, but the prompt has "
            f"{len(request.prompt_ids)} tokens and max_tokens asks for {request.params.max_new_tokens} more "
            f"({total}); shorten the prompt or lower max_tokens",
            param="max_tokens",
        )


def check_sampling(params: SamplingParams) -> None:
    """Raise GorgonError naming the first parameter out of its range."""
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
    _check_penalties(params)
    _check_token_parameters(params)


def check_token_ids(params: SamplingParams, vocab_size: int) -> None:
    """Raise GorgonError when logit_bias or stop_token_ids name a token outside the model's vocabulary."""
    if any(token >= vocab_size for token, _ in params.logit_bias):
        raise GorgonError(f"logit_bias token ids must lie in [0, {vocab_size})", param="logit_bias")
    if any(token >= vocab_size for token in params.stop_token_ids):
        raise GorgonError(f"stop_token_ids must lie in [0, {vocab_size})", param="stop_token_ids")


def _check_penalties(params: SamplingParams) -> None:
    low, high = PENALTY_RANGE
    for name, value in (
        ("presence_penalty", params.presence_penalty),
        ("frequency_penalty", params.frequency_penalty),
    ):
        if not (math.isfinite(value) and low <= value <= high):
            raise GorgonError(f"{name} must lie in [{low}, {high}]", param=name)
    if not (math.isfinite(params.repetition_penalty) and params.repetition_penalty > 0):
        raise GorgonError("repetition_penalty must be a finite number > 0", param="repetition_penalty")


def _check_token_parameters(params: SamplingParams) -> None:
    if params.logprobs is not None and not 0 <= params.logprobs <= MAX_LOGPROBS:
        raise GorgonError(f"logprobs must lie in [0, {MAX_LOGPROBS}]", param="logprobs")
    low, high = LOGIT_BIAS_RANGE
    if len(params.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise GorgonError(f"logit_bias may hold at most {MAX_LOGIT_BIAS_ENTRIES} tokens", param="logit_bias")
    for token, bias in params.logit_bias:
        if token < 0 or not (math.isfinite(bias) and low <= bias <= high):
            raise GorgonError(
                f"logit_bias maps token ids >= 0 to biases in [{low}, {high}]", param="logit_bias"
            )
    if len(params.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise GorgonError(f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids", param="stop_token_ids")
    if any(token < 0 for token in params.stop_token_ids):
        raise GorgonError("stop_token_ids must be >= 0", param="stop_token_ids")
