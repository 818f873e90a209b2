"""OpenAI response objects built from gorgon's chunks: completions and chat, whole and streamed, with a choice
index on every choice and logprobs in OpenAI's two shapes (completions: parallel lists; chat: one object per
token)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gorgon.core.protocol import WireLogprob

Kind = Literal["completion", "chat"]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_logprobs(entries: Sequence[WireLogprob], text_offset: int = 0) -> dict[str, list[Any]]:
    """The completions shape. `text_offset`: where the first token starts in the text generated so far (as vLLM
    counts it: a stream's offsets start at the length of the text already sent). `top_logprobs` holds the
    alternatives and the chosen token, so up to `logprobs` + 1 entries, as OpenAI documents."""
    offsets: list[int] = []
    for entry in entries:
        offsets.append(text_offset)
        text_offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [_top_with_chosen(entry) for entry in entries],
        "text_offset": offsets,
    }


def _top_with_chosen(entry: WireLogprob) -> dict[str, float]:
    top = {entry.token: entry.logprob}
    for alternative in entry.top:
        top.setdefault(alternative.token, alternative.logprob)
    return top


def chat_logprobs(entries: Sequence[WireLogprob]) -> dict[str, list[dict[str, Any]]]:
    """The chat shape: `top_logprobs` holds the `top_logprobs` alternatives asked for (chosen or not)."""
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "bytes": list(entry.token_bytes),
                "top_logprobs": [
                    {"token": top.token, "logprob": top.logprob, "bytes": list(top.token_bytes)}
                    for top in entry.top
                ],
            }
            for entry in entries
        ]
    }


@dataclass(frozen=True, slots=True)
class ChoiceResult:
    """One choice of a whole reply."""

    index: int
    text: str
    finish_reason: str | None
    logprobs: tuple[WireLogprob, ...] | None


@dataclass(frozen=True, slots=True)
class ReplyShape:
    """Everything a response object needs besides the generated text. `logprobs`: whether the client asked for
    them (a reply carries them only then, whatever the chunks hold). `usage_in_chunks`: `stream_options.
    include_usage` was set, so every chunk carries `"usage": null` and the last one the totals, as at OpenAI."""

    kind: Kind
    request_id: str
    model: str
    created: int
    logprobs: bool = False
    usage_in_chunks: bool = False

    @classmethod
    def new(
        cls, kind: Kind, request_id: str, model: str, *, logprobs: bool = False, usage_in_chunks: bool = False
    ) -> ReplyShape:
        return cls(kind, request_id, model, int(time.time()), logprobs, usage_in_chunks)

    def whole(self, choices: Sequence[ChoiceResult], prompt_tokens: int, completion_tokens: int) -> dict:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {
            **self._envelope(obj, [self._whole_choice(choice) for choice in choices]),
            "usage": usage(prompt_tokens, completion_tokens),
        }

    def _whole_choice(self, choice: ChoiceResult) -> dict[str, Any]:
        logprobs = self._logprobs(choice.logprobs, 0)
        if self.kind == "chat":
            return {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason,
            }
        return {
            "index": choice.index,
            "text": choice.text,
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
        }

    def delta(
        self,
        index: int,
        text: str,
        finish_reason: str | None,
        *,
        first: bool = False,
        logprobs: Sequence[WireLogprob] | None = None,
        text_offset: int = 0,
    ) -> dict:
        """One stream chunk of choice `index`; `logprobs` are this chunk's tokens' (`text_offset`: the length
        of the choice's text sent before this chunk)."""
        chosen = self._logprobs(logprobs, text_offset)
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            if finish_reason is not None and not text:
                delta = {}
            choice: dict[str, Any] = {
                "index": index,
                "delta": delta,
                "logprobs": chosen,
                "finish_reason": finish_reason,
            }
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text, "logprobs": chosen, "finish_reason": finish_reason}
            obj = "text_completion"
        chunk = self._envelope(obj, [choice])
        if self.usage_in_chunks:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._envelope(obj, []), "usage": usage(prompt_tokens, completion_tokens)}

    def _logprobs(self, entries: Sequence[WireLogprob] | None, text_offset: int) -> dict | None:
        if not self.logprobs:
            return None
        if self.kind == "chat":
            return chat_logprobs(entries or ())
        return completion_logprobs(entries or (), text_offset)

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """The fields every OpenAI completion object and chunk carries."""
        return {
            "id": self.request_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
