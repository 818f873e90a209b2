"""OpenAI response objects built from gorgon's chunks: completions and chat, whole and streamed, with a choice
index on every choice and logprobs in OpenAI's two shapes (completions: parallel lists; chat: one object per
token)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gorgon.api.tool_calls import ToolCalling, ToolCallReader, read_reply
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
    include_usage` was set, so every chunk carries `"usage": null` and the last one the totals, as at OpenAI.
    `tool_calling`: a chat's replies are read for a tool call (tool_calls.py)."""

    kind: Kind
    request_id: str
    model: str
    created: int
    logprobs: bool = False
    usage_in_chunks: bool = False
    tool_calling: ToolCalling | None = None

    @classmethod
    def new(
        cls,
        kind: Kind,
        request_id: str,
        model: str,
        *,
        logprobs: bool = False,
        usage_in_chunks: bool = False,
        tool_calling: ToolCalling | None = None,
    ) -> ReplyShape:
        return cls(kind, request_id, model, int(time.time()), logprobs, usage_in_chunks, tool_calling)

    def reader(self) -> ToolCallReader | None:
        """A reader of one choice's tool call; None where replies are not read for one."""
        return self.tool_calling.reader() if self.tool_calling is not None else None

    def whole(self, choices: Sequence[ChoiceResult], prompt_tokens: int, completion_tokens: int) -> dict:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {
            **self._envelope(obj, [self._whole_choice(choice) for choice in choices]),
            "usage": usage(prompt_tokens, completion_tokens),
        }

    def _whole_choice(self, choice: ChoiceResult) -> dict[str, Any]:
        logprobs = self._logprobs(choice.logprobs, 0)
        if self.kind == "chat":
            message, finish_reason = self._message(choice)
            return {
                "index": choice.index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        return {
            "index": choice.index,
            "text": choice.text,
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
        }

    def _message(self, choice: ChoiceResult) -> tuple[dict[str, Any], str | None]:
        """A chat choice's message and finish_reason: its text, or the tool call the text makes."""
        reader = self.reader()
        if reader is None:
            return {"role": "assistant", "content": choice.text}, choice.finish_reason
        reply = read_reply(reader, choice.text, choice.finish_reason)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls is not None:
            message["tool_calls"] = reply.tool_calls
        return message, reply.finish_reason

    def delta(
        self,
        index: int,
        text: str,
        finish_reason: str | None,
        *,
        first: bool = False,
        logprobs: Sequence[WireLogprob] | None = None,
        text_offset: int = 0,
        tool_call: dict[str, Any] | None = None,
    ) -> dict:
        """One stream chunk of choice `index`; `logprobs` are this chunk's tokens' (`text_offset`: the length
        of the choice's text sent before this chunk); `tool_call`: a piece of a chat choice's tool call (an
        entry of `delta.tool_calls`), sent instead of text."""
        chosen = self._logprobs(logprobs, text_offset)
        if self.kind == "chat":
            delta = _chat_delta(text, finish_reason, first=first, tool_call=tool_call)
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


def _chat_delta(
    text: str, finish_reason: str | None, *, first: bool, tool_call: dict[str, Any] | None
) -> dict[str, Any]:
    """A chat chunk's `delta`: the role in the first; text, or a piece of the tool call (content null); empty in
    a final chunk with nothing more to say."""
    if tool_call is not None:
        calls = {"tool_calls": [tool_call]}
        return {"role": "assistant", "content": None, **calls} if first else calls
    if finish_reason is not None and not text:
        return {}
    return {"role": "assistant", "content": text} if first else {"content": text}
