"""The echo engine: deterministic tokens without a model, for fast tests and for measuring the platform's own
overhead (`gorgon worker --engine echo`). It is only ever used when asked for by name.

What it generates: tokens are bytes (id = byte value). Each new token is the character after the sequence's
last character in the cycle "abcdefghijklmnopqrstuvwxyz " (any other character is followed by "a"), so a
prompt ending in "x" continues "yz abc...". The next token depends only on the text so far, which makes a
request resumed from its published tokens continue exactly as the first attempt would have.
With `use_speculative` a step yields up to SPECULATIVE_TOKENS_PER_STEP tokens (like an accepted Medusa draft),
otherwise one. `step_delay_s` sleeps once per step so cancellation and crash tests have time to act.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gorgon.core.errors import ContextOverflowError, GorgonError
from gorgon.engine.interface import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    KVCacheUsage,
    ModelInfo,
    TokenEvent,
)
from gorgon.engine.scheduler import fits_token_budget

ECHO_MODEL_NAME = "echo"
ECHO_CONTEXT_LENGTH = 4096
ECHO_MAX_BATCH_SIZE = 64
CYCLE = "abcdefghijklmnopqrstuvwxyz "
SPECULATIVE_TOKENS_PER_STEP = 3


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


def chat_prompt(messages: Sequence[ChatMessage]) -> str:
    """The echo engine's chat template: one `role: content` line per message, then `assistant:`."""
    return "".join(f"{message.role}: {message.content}\n" for message in messages) + "assistant:"


def held_back_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


@dataclass
class _Row:
    request: GenerationRequest
    text: str
    generated: str = ""
    emitted: int = 0

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
        total = len(request.prompt_ids) + request.params.max_new_tokens
        if total > self.info.context_length:
            raise ContextOverflowError(
                f"this model's maximum context length is {self.info.context_length} tokens; the prompt has "
                f"{len(request.prompt_ids)} and max_tokens asks for {request.params.max_new_tokens} more",
                param="max_tokens",
            )
        if len(self._rows) >= self.info.max_batch_size:
            raise GorgonError(f"the batch is full ({self.info.max_batch_size} requests)", code="batch_full")
        text = bytes(request.prompt_ids).decode(errors="replace")
        self._rows[request.request_id] = _Row(request=request, text=text)

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
        count = min(count, params.max_new_tokens - len(row.generated))
        new = continuation(row.text + row.generated, count)
        row.generated += new
        finish = FinishReason.LENGTH if len(row.generated) >= params.max_new_tokens else None
        visible_end = len(row.generated)
        stop_at = _first_stop(row.generated, params.stop)
        if stop_at is not None:
            visible_end, finish = stop_at, FinishReason.STOP
        elif finish is None:
            visible_end -= held_back_length(row.generated, params.stop)
        delta = row.generated[row.emitted : visible_end]
        row.emitted = max(row.emitted, visible_end)
        return TokenEvent(
            request_id=row.request.request_id,
            token_ids=tuple(new.encode()),
            text=delta,
            finish_reason=finish,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=len(row.generated),
            drafted_tokens=count - 1 if params.use_speculative else 0,
            accepted_tokens=count - 1 if params.use_speculative else 0,
        )


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return min(positions) if positions else None
