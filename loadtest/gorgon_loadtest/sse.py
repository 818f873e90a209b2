"""Server-sent events as OpenAI streams them: `data: {json}` events separated by blank lines, ending with
`data: [DONE]`, read from lines (the load test's httpx client) or from timed byte pieces (the lean HTTP/1.1
connection of `gorgon bench platform`). Pure functions over text, so the parsing is tested without a server."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gorgon_loadtest.target import Endpoint

DONE = "[DONE]"


class SseDecoder:
    """Turns a stream of lines into event payloads (the joined `data:` lines of one event)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Consume one line (without its newline); return the event's payload when a blank line ends it."""
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        """The pending event's payload, if any (a stream may end without a final blank line)."""
        if not self._data:
            return None
        payload = "\n".join(self._data)
        self._data = []
        return payload


def timed_payloads(pieces: Iterable[tuple[float, bytes]]) -> Iterator[tuple[float, str]]:
    """The event payloads of a stream read as (time, bytes) pieces, each with the time of the piece that
    completed its event. A piece may end anywhere, even inside a character; an event the pieces leave open is
    not yielded (nothing says when it would have completed)."""
    decoder = SseDecoder()
    partial_line = b""
    for received, piece in pieces:
        *lines, partial_line = (partial_line + piece).split(b"\n")
        for line in lines:
            payload = decoder.feed(line.decode())
            if payload is not None:
                yield received, payload


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one streamed chunk says: the text it adds, and what the last chunks carry."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None


class MalformedChunkError(ValueError):
    """A `data:` payload that is not an OpenAI completion chunk."""


def parse_chunk(payload: str, endpoint: Endpoint) -> Chunk:
    """Read one JSON chunk of a /v1/completions or /v1/chat/completions stream."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise MalformedChunkError(f"chunk is not JSON: {payload[:80]!r}") from exc
    if not isinstance(body, dict):
        raise MalformedChunkError(f"chunk is not a JSON object: {payload[:80]!r}")
    if "error" in body:
        return Chunk(error=_error_message(body["error"]))
    text, finish_reason = _choice_text(body.get("choices") or [], endpoint)
    usage = body.get("usage") or {}
    return Chunk(
        text=text,
        finish_reason=finish_reason,
        completion_tokens=usage.get("completion_tokens"),
        prompt_tokens=usage.get("prompt_tokens"),
    )


def _choice_text(choices: list[dict], endpoint: Endpoint) -> tuple[str, str | None]:
    if not choices:
        return "", None
    choice = choices[0]
    if endpoint is Endpoint.CHAT:
        text = (choice.get("delta") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    return text, choice.get("finish_reason")


def _error_message(error: object) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
