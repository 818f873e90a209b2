"""Typed, versioned messages that cross Redis between the API and the workers.

    RequestPayload   API → worker, one request-stream entry (field `p`, JSON)
    Chunk            worker → API, on the reply channel of the API process: one JSON array of chunks per worker
                     step and API process (`decode_chunks`; a single chunk object is read too)

Both carry `v` = PROTOCOL_VERSION; a reader refuses any other version with ProtocolError, so a mixed rollout
fails loudly instead of misreading fields. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

PROTOCOL_VERSION = 2
PAYLOAD_FIELD = b"p"
TOOL_CALL_FORMAT = "tool_call"
"""The wire `response_format` type of a tool-call grammar: sent by the API (api/tool_calls.py), which refuses it
from clients, and compiled by the workers (engine/grammar.py)."""
TOOL_DEFINITIONS_ROLE = "tool_definitions"
"""The role of the message that carries a chat's tool definitions (the JSON text of OpenAI's `tools` list), first
in `messages` when the model is to be shown them: the worker hands them to the chat template, or describes them
in a system message where the template has no place for them (engine/chat.py)."""


class ProtocolError(ValueError):
    """A message that is not a valid gorgon message of this protocol version."""


@dataclass(frozen=True, slots=True)
class WireSampling:
    """Decoding parameters as they travel; mirrors engine.interface.SamplingParams."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    use_speculative: bool = True
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    response_format: str | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> WireSampling:
        """From its decoded JSON object: JSON arrays back to the tuples the fields hold."""
        return cls(
            **{
                **body,
                "stop": tuple(body.get("stop", ())),
                "logit_bias": tuple((int(token), float(bias)) for token, bias in body.get("logit_bias", ())),
                "stop_token_ids": tuple(body.get("stop_token_ids", ())),
            }
        )


@dataclass(frozen=True, slots=True)
class RequestPayload:
    """One generation request. Exactly one of `prompt` (completion) and `messages` (chat) is set.

    `deadline` is a Unix time (seconds): past it the worker drops the job and reports a timeout.
    `reply_to` is the pub/sub channel of the API process waiting for the chunks.
    `stream` tells the worker whether the client wants every step (else only the final result is published).
    `messages` are (role, content) pairs: OpenAI's roles, `tool` for a tool's result, an assistant's tool calls as
    the JSON text the model writes for them (api/tool_calls.py), and TOOL_DEFINITIONS_ROLE for the tools.
    """

    request_id: str
    model: str
    sampling: WireSampling
    deadline: float
    stream: bool
    reply_to: str
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    traceparent: str | None = None
    v: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes | str) -> RequestPayload:
        body = _load_versioned(raw)
        try:
            raw_sampling = body.pop("sampling")
            sampling = WireSampling.from_body(raw_sampling)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"bad sampling parameters: {exc}") from exc
        messages = body.pop("messages", None)
        try:
            return cls(
                sampling=sampling,
                messages=tuple((role, content) for role, content in messages) if messages else None,
                **body,
            )
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad request payload: {exc}") from exc


@dataclass(frozen=True, slots=True)
class WireError:
    """An error for the client, in OpenAI's vocabulary (`type`, `code`) plus the HTTP status to answer with."""

    message: str
    type: str
    code: str
    status: int
    param: str | None = None
    """The request parameter at fault, as OpenAI's `param` names it."""


LOGPROB_FLOOR = -9999.0
"""The least log-probability a chunk carries: -inf (a token masked out) has no JSON spelling, and OpenAI and vLLM
report it as this."""


@dataclass(frozen=True, slots=True)
class WireTopLogprob:
    """One likely alternative at a position: its text, log-probability and UTF-8 bytes."""

    token: str
    logprob: float
    token_bytes: tuple[int, ...]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> WireTopLogprob:
        return cls(body["token"], float(body["logprob"]), tuple(body["token_bytes"]))


@dataclass(frozen=True, slots=True)
class WireLogprob:
    """An emitted token's log-probability, with the `top` most likely alternatives at its position (most likely
    first); mirrors engine.interface.TokenLogprob."""

    token: str
    logprob: float
    token_bytes: tuple[int, ...]
    top: tuple[WireTopLogprob, ...] = ()

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> WireLogprob:
        top = tuple(WireTopLogprob.from_body(alternative) for alternative in body.get("top", ()))
        return cls(body["token"], float(body["logprob"]), tuple(body["token_bytes"]), top)


@dataclass(frozen=True, slots=True)
class Chunk:
    """What a worker publishes for one request.

    `attempt` fences redeliveries: the API ignores chunks of an attempt older than the newest it has seen, and
    the worker's publish script refuses chunks from a superseded attempt. `seq` numbers chunks from 0 across
    attempts (a resumed attempt continues the count). The last chunk has `final` set; for a non-streaming
    request it is the only chunk and carries the whole text. `published_at` is the worker's Unix time.
    `logprobs` (when the request asked for them) has one entry per token of `token_ids`, or, in the final chunk of
    a non-streaming request, one per token generated; None when the request asked for none.
    """

    request_id: str
    attempt: int
    seq: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    final: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: WireError | None = None
    published_at: float = 0.0
    logprobs: tuple[WireLogprob, ...] | None = None
    v: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes | str) -> Chunk:
        return cls.from_body(_load_versioned(raw))

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Chunk:
        """A chunk from its decoded JSON object (version already checked and removed)."""
        error = body.pop("error", None)
        logprobs = body.pop("logprobs", None)
        try:
            return cls(
                error=WireError(**error) if error else None,
                token_ids=tuple(body.pop("token_ids", ())),
                logprobs=None
                if logprobs is None
                else tuple(WireLogprob.from_body(entry) for entry in logprobs),
                **body,
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ProtocolError(f"bad chunk: {exc}") from exc


def decode_chunks(raw: bytes | str) -> list[Chunk]:
    """The chunks of one reply-channel message: a JSON array of chunks (a worker publishes one array per step
    and API process), or a single chunk object."""
    message = _load_json(raw)
    bodies = message if isinstance(message, list) else [message]
    return [Chunk.from_body(_versioned(body)) for body in bodies]


def _load_json(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc


def _load_versioned(raw: bytes | str) -> dict[str, Any]:
    return _versioned(_load_json(raw))


def _versioned(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProtocolError("message is not a JSON object")
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, this process speaks {PROTOCOL_VERSION}")
    return body
