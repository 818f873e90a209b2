"""The echo engine: deterministic tokens without a model, for fast tests and for measuring the platform's own
overhead (`gorgon worker --engine echo`). It is only ever used when asked for by name.

What it generates: tokens are bytes (id = byte value). Each new token is the character after the sequence's
last character in the cycle "abcdefghijklmnopqrstuvwxyz " (any other character is followed by "a"), so a
prompt ending in "x" continues "yz abc...". The next token depends only on the text so far, which makes a
request resumed from its published tokens continue exactly as the first attempt would have.
With `use_speculative` a step yields up to SPECULATIVE_TOKENS_PER_STEP tokens (like an accepted Medusa draft),
otherwise one. `step_delay_s` sleeps once per step so cancellation and crash tests have time to act.

It has no end-of-sequence token, so ignore_eos, min_tokens and stop_token_ids change nothing (they are validated,
stop token ids against its byte vocabulary); penalties and logit_bias change nothing either, its next character
being fixed. Its log-probabilities say what it is, certain of every token: each token has logprob 0.0, and the
top alternatives are the token itself (0.0) followed by the characters after it in the cycle at
ECHO_IMPOSSIBLE_LOGPROB, so clients see as many alternatives as they asked for, most likely first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gorgon.core.errors import GorgonError
from gorgon.engine.detok import StopSequenceFilter
from gorgon.engine.interface import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    KVCacheUsage,
    ModelInfo,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
)
from gorgon.engine.scheduler import fits_token_budget
from gorgon.engine.validation import check_request, check_token_ids

ECHO_MODEL_NAME = "echo"
ECHO_CONTEXT_LENGTH = 4096
ECHO_MAX_BATCH_SIZE = 64
CYCLE = "abcdefghijklmnopqrstuvwxyz "
SPECULATIVE_TOKENS_PER_STEP = 3
BYTE_VOCABULARY = 256
ECHO_IMPOSSIBLE_LOGPROB = -9999.0
"""The log-probability of a token the echo engine never emits there: a finite stand-in for -inf (which JSON cannot
carry), the value vLLM's OpenAI server reports for such tokens."""


def next_character(text: str) -> str:
    """The character the echo engine emits after `text`."""
    if not text:
        return CYCLE[0]
    position = CYCLE.find(text[-1])
    return CYCLE[(position + 1) % len(CYCLE)] if position >= 0 else CYCLE[0]


def continuation(text: str, count: int) -> str:
    """The `count` characters the echo engine generates after `text` (with no stop sequence)."""
    generated = ""
    for _ in range(count):
        generated += next_character(text + generated)
    return generated


def echo_logprobs(text: str, top: int) -> tuple[TokenLogprob, ...]:
    """The log-probabilities of the tokens of `text` (ASCII, one token per character) with `top` alternatives."""
    return tuple(
        TokenLogprob(
            token=character,
            logprob=0.0,
            token_bytes=tuple(character.encode()),
            top=_alternatives(character, top),
        )
        for character in text
    )


def _alternatives(character: str, top: int) -> tuple[TopLogprob, ...]:
    ranked = (character + continuation(character, top - 1))[:top]  # distinct: MAX_LOGPROBS < len(CYCLE)
    return tuple(
        TopLogprob(
            token=other,
            logprob=0.0 if rank == 0 else ECHO_IMPOSSIBLE_LOGPROB,
            token_bytes=tuple(other.encode()),
        )
        for rank, other in enumerate(ranked)
    )


def chat_prompt(messages: Sequence[ChatMessage]) -> str:
    """The echo engine's chat template: one `role: content` line per message, then `assistant:`."""
    return "".join(f"{message.role}: {message.content}\n" for message in messages) + "assistant:"


@dataclass
class _Row:
    request: GenerationRequest
    stop_filter: StopSequenceFilter
    last_character: str
    generated: int = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)


class EchoEngine:
    """An Engine (see engine/interface.py) that needs no model."""

    def __init__(
        self,
        step_delay_s: float = 0.0,
        context_length: int = ECHO_CONTEXT_LENGTH,
        max_batch_size: int = ECHO_MAX_BATCH_SIZE,
        model_name: str = ECHO_MODEL_NAME,
    ) -> None:
        self.info = ModelInfo(
            name=model_name, context_length=context_length, max_batch_size=max_batch_size, speculative=True
        )
        self._step_delay_s = step_delay_s
        self._rows: dict[str, _Row] = {}
        # Steps take microseconds unless a delay is simulated: the worker then calls them on its event loop.
        self.runs_inline = step_delay_s == 0

    def encode(self, prompt: str | Sequence[ChatMessage]) -> list[int]:
        text = prompt if isinstance(prompt, str) else chat_prompt(prompt)
        return list(text.encode())

    def admits(self, request: GenerationRequest, token_budget: int | None) -> bool:
        return fits_token_budget(request, [row.request for row in self._rows.values()], token_budget)

    def add(self, request: GenerationRequest) -> None:
        check_request(request, self.info.context_length)
        check_token_ids(request.params, BYTE_VOCABULARY)
        if len(self._rows) >= self.info.max_batch_size:
            raise GorgonError(f"the batch is full ({self.info.max_batch_size} requests)", code="batch_full")
        if not all(0 <= token < BYTE_VOCABULARY for token in request.prompt_ids):
            raise GorgonError("echo token ids are bytes: each must lie in [0, 256)", param="prompt")
        text = bytes(request.prompt_ids[-4:]).decode(errors="replace")  # a character has at most 4 bytes
        self._rows[request.request_id] = _Row(request, StopSequenceFilter(request.params.stop), text[-1:])

    def cancel(self, request_id: str) -> None:
        self._rows.pop(request_id, None)

    @property
    def num_active(self) -> int:
        return len(self._rows)

    def kv_cache_usage(self) -> KVCacheUsage | None:
        return None  # no model, no KV cache

    def step(self) -> list[TokenEvent]:
        if self._step_delay_s > 0 and self._rows:
            time.sleep(self._step_delay_s)
        events = [self._advance(row) for row in list(self._rows.values())]
        for event in events:
            if event.finish_reason is not None:
                del self._rows[event.request_id]
        return events

    def _advance(self, row: _Row) -> TokenEvent:
        params = row.request.params
        count = SPECULATIVE_TOKENS_PER_STEP if params.use_speculative else 1
        count = min(count, params.max_new_tokens - row.generated)
        new = continuation(row.last_character, count)
        row.generated += count
        row.last_character = new[-1]
        text, hit_stop = row.stop_filter.push(new)
        finish = FinishReason.LENGTH if row.generated >= params.max_new_tokens else None
        if hit_stop:
            finish = FinishReason.STOP
        elif finish is not None:
            text += row.stop_filter.flush()
        return TokenEvent(
            request_id=row.request.request_id,
            token_ids=tuple(new.encode()),
            text=text,
            finish_reason=finish,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.generated,
            drafted_tokens=count - 1 if params.use_speculative else 0,
            accepted_tokens=count - 1 if params.use_speculative else 0,
            logprobs=echo_logprobs(new, params.logprobs) if params.logprobs is not None else None,
        )
