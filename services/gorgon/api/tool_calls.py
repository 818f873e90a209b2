"""Tool calls, schema-guided: what a chat's `tools` and `tool_choice` ask of the reply, and the reply read back.

A tool call is written as one JSON object, `{"name": <a tool's name>, "arguments": <its arguments>}`, in
json.dumps' layout. The workers show the model the tools (engine/chat.py) and hold its reply to that object with
a grammar (engine/grammar.py; this module builds the grammar's schema, sent in the `response_format` wire field):
- `required`, or a named function: the reply is such an object (for a named function, of that function);
- `auto`: the reply is such an object, or free text that does not start with `{`.
The model is not trained for tool use: it calls a tool because it is shown the tools and the JSON to write, and
the grammar keeps the call well formed. One call per reply, whatever `parallel_tool_calls` says.

Reading a reply back (`ToolCallReader`): text starting with `{` is a tool call. Its name is sent once the JSON has
named it; its arguments are the text of the `arguments` value exactly as the model wrote it, streamed as it comes
(the closing braces held back until the reply ends, since the last one closes the call, not the arguments). A
whole reply is read by the same reader, so a streamed call adds up to the whole one. A call that parses and names
one of the functions ends the choice with finish_reason `tool_calls`; one cut short (max_tokens, a stop sequence)
keeps the worker's finish_reason and the arguments written so far.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gorgon.core.protocol import TOOL_CALL_FORMAT

NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
"""The arguments of a function defined without `parameters`, as OpenAI reads it: none."""
DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
"""Schema keywords whose values are data, not schemas: a `$ref` in them is not a reference."""
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
"""Schema keywords whose values map names to schemas: the names are not keywords (a property may be `enum`)."""
CALL_HEAD = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\S)')
"""The start of a tool call up to its arguments, `{"name": "...", "arguments": `, once their first character is
written (whitespace before it is not theirs)."""
HELD_AT_THE_END = "} \t\r\n"
"""What the reader holds back at the end of a call's text so far: the call's own closing brace may be among it."""
CALL_ID_HEX_DIGITS = 24


@dataclass(frozen=True, slots=True)
class ToolCalling:
    """The tool calls a chat reply may make: one of `functions` (name → JSON schema of its arguments), or free
    text instead when `optional` (tool_choice auto). `strict`: a function asked for strict adherence, so a
    schema keyword the grammar cannot enforce is a 400 rather than ignored."""

    functions: Mapping[str, Mapping[str, Any]]
    optional: bool
    strict: bool = False

    def call_schema(self) -> dict[str, Any]:
        """A JSON schema of one call: anyOf `{"name": <const>, "arguments": <parameters>}`, name first."""
        return {
            "anyOf": [
                _call_of(name, parameters, f"#/anyOf/{index}/properties/arguments")
                for index, (name, parameters) in enumerate(self.functions.items())
            ]
        }

    def wire_format(self) -> str:
        """The `response_format` wire field that asks the workers for this grammar."""
        spec = {"schema": self.call_schema(), "free_text": self.optional, "strict": self.strict}
        return json.dumps({"type": TOOL_CALL_FORMAT, TOOL_CALL_FORMAT: spec})

    def reader(self) -> ToolCallReader:
        return ToolCallReader(frozenset(self.functions))


def _call_of(name: str, parameters: Mapping[str, Any], location: str) -> dict[str, Any]:
    """The schema of a call to one function; references inside its parameters (`#/...`, relative to the
    parameters) rebased to where the parameters now sit, `location`."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": _rebased(parameters, location)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _rebased(schema: Any, location: str) -> Any:
    if isinstance(schema, list):
        return [_rebased(item, location) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    rebased: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref":
            rebased[key] = _rebased_reference(value, location)
        elif key in DATA_KEYWORDS:
            rebased[key] = value
        elif key in SCHEMA_MAPS and isinstance(value, Mapping):
            rebased[key] = {name: _rebased(item, location) for name, item in value.items()}
        else:
            rebased[key] = _rebased(value, location)
    return rebased


def _rebased_reference(reference: Any, location: str) -> Any:
    if isinstance(reference, str) and reference.startswith("#"):
        return location + reference[1:]
    return reference


def call_text(name: str, arguments: str) -> str:
    """A tool call as the model writes it (an assistant message's earlier call goes back into the prompt so);
    ValueError when `arguments` is not JSON."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the arguments are not JSON: {exc.msg}") from exc
    return json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ReplyPiece:
    """What a stretch of a reply says: free text (`content`), or part of its tool call (`call`: the entry of a
    `tool_calls` delta, with `id`, `type` and the function's name the first time)."""

    content: str = ""
    call: dict[str, Any] | None = None

    def then(self, later: ReplyPiece) -> ReplyPiece:
        """This piece followed by `later`, as one."""
        return ReplyPiece(self.content + later.content, _joined_calls(self.call, later.call))

    def is_empty(self) -> bool:
        return not self.content and self.call is None


def _joined_calls(first: dict[str, Any] | None, later: dict[str, Any] | None) -> dict[str, Any] | None:
    if first is None or later is None:
        return first or later
    function = first["function"]
    arguments = function["arguments"] + later["function"]["arguments"]
    return {**first, "function": {**function, "arguments": arguments}}


@dataclass
class ToolCallReader:
    """Reads one choice of a reply as its text comes: free text, or the tool call (see the module's docstring)."""

    functions: frozenset[str]
    call_id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:CALL_ID_HEX_DIGITS]}")
    text: str = ""
    state: Literal["undecided", "text", "call"] = "undecided"
    sent: int = 0
    """In a call: how much of `text` has been sent (the head, then the arguments)."""

    def read(self, text: str) -> ReplyPiece:
        """What the reply says with `text` added."""
        self.text += text
        if self.state == "undecided" and self.text and not self.text.startswith("{"):
            self.state = "text"
            return ReplyPiece(self.text)
        if self.state == "text":
            return ReplyPiece(text)
        if self.state == "undecided":
            return self._head()
        return self._arguments(len(self.text.rstrip(HELD_AT_THE_END)))

    def end(self, finish_reason: str | None) -> tuple[ReplyPiece, str | None]:
        """What the reply's end says, and the choice's finish_reason."""
        if self.state == "text":
            return ReplyPiece(), finish_reason
        if self.state == "undecided":
            return ReplyPiece(self.text), finish_reason
        if not self._complete_call():
            return self._arguments(len(self.text)), finish_reason
        closing = self.text.rstrip().rindex("}")
        return self._arguments(len(self.text[:closing].rstrip())), "tool_calls"

    def _head(self) -> ReplyPiece:
        """The call's opening piece once its name is written; nothing before."""
        head = CALL_HEAD.match(self.text)
        if head is None:
            return ReplyPiece()
        self.state, self.sent = "call", head.end()
        opening = ReplyPiece(
            call={
                "index": 0,
                "id": self.call_id,
                "type": "function",
                "function": {"name": json.loads(head.group(1)), "arguments": ""},
            }
        )
        return opening.then(self._arguments(len(self.text.rstrip(HELD_AT_THE_END))))

    def _arguments(self, until: int) -> ReplyPiece:
        """The arguments' text from what was sent up to `until`; nothing when that is empty."""
        piece = self.text[self.sent : max(self.sent, until)]
        self.sent = max(self.sent, until)
        if not piece:
            return ReplyPiece()
        return ReplyPiece(call={"index": 0, "function": {"arguments": piece}})

    def _complete_call(self) -> bool:
        try:
            call = json.loads(self.text)
        except json.JSONDecodeError:
            return False
        return (
            isinstance(call, dict) and set(call) == {"name", "arguments"} and call["name"] in self.functions
        )


@dataclass(frozen=True, slots=True)
class ChatReply:
    """A whole chat choice read: its message's content and tool calls, and its finish_reason."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None


def read_reply(reader: ToolCallReader, text: str, finish_reason: str | None) -> ChatReply:
    """A whole reply read as a stream of one piece would be."""
    piece = reader.read(text)
    last, finish_reason = reader.end(finish_reason)
    piece = piece.then(last)
    if piece.call is None:
        return ChatReply(piece.content, None, finish_reason)
    call = {key: value for key, value in piece.call.items() if key != "index"}
    return ChatReply(None, [call], finish_reason)
