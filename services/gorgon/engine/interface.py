"""The contract between the worker and any engine (the Medusa engine, the echo engine).

The worker owns a single engine object and drives it step by step:

    engine.encode(prompt)                 # token ids; on another thread than the rest, concurrently with steps
    engine.admits(request, token_budget)  # whether the request may join now (else it waits for a later step)
    engine.add(request)                   # at a step boundary; raises GorgonError subclasses for bad requests
    events = engine.step()                # one forward over the running batch; one event per request with output
    engine.cancel(request_id)             # the row leaves the batch before the next step

One request's failure is that request's alone: `encode` and `add` raise for it (GorgonError when the request is
at fault), and a row that fails inside a step ends with an event carrying `error` while the other rows go on.
An exception out of `step` means the step failed as a whole; the caller then cancels every request it added.

Everything here is plain data so it can cross threads and be serialised by the worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class FinishReason(StrEnum):
    """Why a sequence stopped. OpenAI's `finish_reason` is `stop` for EOS and stop sequences, `length` otherwise."""

    LENGTH = "length"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request decoding parameters. A temperature below 1e-5 (0 included) means greedy
    (core/limits.py, GREEDY_BELOW_TEMPERATURE); a seed is any int64."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    use_speculative: bool = True
    logprobs: int | None = None
    """Log-probabilities of each emitted token plus this many top alternatives (0..MAX_LOGPROBS); None: none."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    """vLLM's: logits of tokens in the prompt or the output divided by it where positive, multiplied where not."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias added to its logit) pairs."""
    min_tokens: int = 0
    """EOS and stop_token_ids are masked until this many tokens have been generated."""
    ignore_eos: bool = False
    """EOS does not end the request (it runs to max_new_tokens, a stop sequence or a stop token)."""
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end the request like EOS does (finish_reason stop; the token itself is not in the text)."""
    response_format: str | None = None
    """Structured output: the request's `response_format` object as JSON text ({"type": "json_object"} or
    {"type": "json_schema", "json_schema": {...}}); None: free text."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    resumed_tokens: int = 0
    """The last `resumed_tokens` of prompt_ids are output an earlier attempt generated (a request resumed after
    a failure): penalties, min_tokens and a response_format grammar count them as output, not prompt."""

    @property
    def original_prompt_ids(self) -> tuple[int, ...]:
        return self.prompt_ids[: len(self.prompt_ids) - self.resumed_tokens]

    @property
    def resumed_ids(self) -> tuple[int, ...]:
        return self.prompt_ids[len(self.prompt_ids) - self.resumed_tokens :]


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One alternative at a position: its text (the token as the tokenizer spells it, decoded to text), its
    log-probability, and the UTF-8 bytes of that text (what OpenAI's `bytes` carries)."""

    token: str
    logprob: float
    token_bytes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """An emitted token's log-probability under the model (log-softmax of its raw logits at that position, before
    penalties, bias, grammar or temperature) and the `top` most likely alternatives, most likely first."""

    token: str
    logprob: float
    token_bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """What one step produced for one request.

    `token_ids` are the tokens accepted this step (1..k+1 with Medusa); `text` is the matching text delta
    (incremental detokenisation, never a split UTF-8 character, text that may begin a stop sequence held back
    until it is decided). `finish_reason` is set on the request's last event.
    `drafted_tokens` / `accepted_tokens` count speculative proposals and the accepted ones this step.
    `error` is set instead of a finish reason when the engine gave up on this request alone (its sampling or
    detokenising failed); that is its last event, and it carries no tokens.
    """

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    """With SamplingParams.logprobs set: one entry per token in `token_ids`, in order."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a worker publishes about its model (the API validates requests against it)."""

    name: str
    context_length: int
    max_batch_size: int
    speculative: bool


@dataclass(frozen=True, slots=True)
class KVCacheUsage:
    """The running batch's KV cache: bytes allocated, and the fraction of its slots holding tokens."""

    allocated_bytes: int
    used_fraction: float


@runtime_checkable
class Engine(Protocol):
    info: ModelInfo

    @property
    def runs_inline(self) -> bool:
        """Whether a step takes microseconds: the worker then calls the engine on its event loop, where a hand-off
        to its engine thread would cost more than the step."""
        ...

    def encode(self, prompt: str | Sequence[ChatMessage]) -> list[int]:
        """Token ids for a completion prompt (str) or a chat (messages, through the chat template). Safe to call
        from another thread while a step runs. Raises GorgonError for a prompt the model cannot take."""
        ...

    def admits(self, request: GenerationRequest, token_budget: int | None) -> bool:
        """Whether `request` may join the batch now: its prompt + max_new_tokens fit `token_budget` beside the
        requests admitted and not finished (an empty batch always takes one); None: no budget. An engine may
        also refuse by its own limits (the Medusa engine's KV memory budget, engine/memory_budget.py)."""
        ...

    def add(self, request: GenerationRequest) -> None:
        """Admit a request into the running batch (takes effect at the next step).

        Raises ContextOverflowError when prompt + max_new_tokens exceed the context window, GorgonError for
        other parameters no step could serve (engine/validation.py).
        """
        ...

    def cancel(self, request_id: str) -> None:
        """Drop a request; it produces no further events and frees its slot. Unknown ids are ignored."""
        ...

    def step(self) -> list[TokenEvent]:
        """Advance every running request by one engine step; finished and failed requests leave the batch."""
        ...

    @property
    def num_active(self) -> int:
        """Requests currently admitted and not finished."""
        ...

    def kv_cache_usage(self) -> KVCacheUsage | None:
        """The running batch's KV cache; None with no batch running, or for an engine without a KV cache."""
        ...
