"""Tool calls in the API: the call schema sent to the workers, and replies read back, streamed in any pieces or
whole, to the same call."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from gorgon.api.tool_calls import NO_PARAMETERS, ChatReply, ReplyPiece, ToolCalling, call_text, read_reply

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "where": {"$ref": "#/$defs/place"},
        "near": {"$ref": "#"},
        "tag": {"const": {"$ref": "#x"}},
        "enum": {"$ref": "#/$defs/place"},
    },
    "$defs": {"place": {"type": "string"}},
}
CALLING = ToolCalling({"find": PARAMETERS, "stop": NO_PARAMETERS}, optional=True)
CALL = '{"name": "find", "arguments": {"where": "a \\"}\\" b", "near": {"where": "c"}}}'
REPLIES = [
    (CALL, "stop"),
    ('{"name": "stop", "arguments": {}}', "stop"),
    ('{ "name" : "find" , "arguments" :  {"where": "x"} }\n', "stop"),
    ('{"name": "find", "arguments": {"where": "x"}', "length"),
    ('{"name": "find", "argu', "length"),
    ("Plain text, with a {brace}.", "stop"),
    ("", "stop"),
]


def test_the_call_schema_names_each_function_and_rebases_its_references() -> None:
    find, stop = CALLING.call_schema()["anyOf"]
    assert find["required"] == ["name", "arguments"] and find["additionalProperties"] is False
    assert list(find["properties"]) == ["name", "arguments"]  # the name is written first
    assert find["properties"]["name"] == {"const": "find"}
    arguments = find["properties"]["arguments"]
    assert arguments["properties"]["where"] == {"$ref": "#/anyOf/0/properties/arguments/$defs/place"}
    assert arguments["properties"]["near"] == {"$ref": "#/anyOf/0/properties/arguments"}
    assert arguments["properties"]["tag"] == {"const": {"$ref": "#x"}}  # data, not a reference
    assert (
        arguments["properties"]["enum"] == arguments["properties"]["where"]
    )  # a property's name, not a keyword
    assert stop["properties"] == {"name": {"const": "stop"}, "arguments": NO_PARAMETERS}


def test_the_wire_format_carries_the_schema_and_the_choice() -> None:
    sent = json.loads(ToolCalling({"stop": NO_PARAMETERS}, optional=False, strict=True).wire_format())
    assert sent == {
        "type": "tool_call",
        "tool_call": {
            "schema": ToolCalling({"stop": NO_PARAMETERS}, optional=False).call_schema(),
            "free_text": False,
            "strict": True,
        },
    }


def test_a_complete_call_is_read_into_its_name_and_the_arguments_as_written() -> None:
    reply = read_reply(CALLING.reader(), CALL, "stop")
    assert reply.content is None and reply.finish_reason == "tool_calls"
    [call] = reply.tool_calls or []
    assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) == 29
    assert call["function"] == {"name": "find", "arguments": json.dumps(json.loads(CALL)["arguments"])}


def test_a_call_cut_short_keeps_the_workers_finish_reason() -> None:
    reply = read_reply(CALLING.reader(), '{"name": "find", "arguments": {"where": "x"}', "length")
    assert reply.finish_reason == "length"
    assert (reply.tool_calls or [])[0]["function"]["arguments"] == '{"where": "x"}'


def test_text_that_does_not_become_a_call_is_content() -> None:
    assert read_reply(CALLING.reader(), "Hello {x}", "stop") == ChatReply("Hello {x}", None, "stop")
    unfinished = read_reply(CALLING.reader(), '{"name": "fi', "length")
    assert (unfinished.content, unfinished.tool_calls) == ('{"name": "fi', None)
    unknown = read_reply(CALLING.reader(), '{"name": "other", "arguments": {}}', "stop")
    assert unknown.finish_reason == "stop"  # a name no tool has does not make a call


def stream(text: str, finish_reason: str, cuts: list[int]) -> tuple[list[ReplyPiece], str | None]:
    """What a reader says of `text` sent in pieces cut at `cuts`."""
    reader = CALLING.reader()
    bounds = [0, *cuts, len(text)]
    pieces = [reader.read(text[start:end]) for start, end in itertools.pairwise(bounds)]
    last, finish = reader.end(finish_reason)
    return [*pieces, last], finish


@pytest.mark.parametrize(("text", "finish_reason"), REPLIES)
def test_any_streaming_of_a_reply_adds_up_to_the_whole_reply(text: str, finish_reason: str) -> None:
    whole = read_reply(CALLING.reader(), text, finish_reason)
    for cuts in [[cut] for cut in range(len(text))] + [list(range(1, len(text)))]:
        pieces, finish = stream(text, finish_reason, cuts)
        joined = ReplyPiece()
        for piece in pieces:
            joined = joined.then(piece)
        assert finish == whole.finish_reason
        if whole.tool_calls is None:
            assert joined.call is None and joined.content == whole.content
            continue
        assert not joined.content and joined.call is not None
        assert joined.call["function"] == whole.tool_calls[0]["function"]
        calls = [piece.call for piece in pieces if piece.call is not None]
        assert "id" in calls[0] and not any(
            "id" in call for call in calls[1:]
        )  # the name is sent once, first


def test_free_text_streams_as_it_comes() -> None:
    reader = CALLING.reader()
    assert [reader.read(piece).content for piece in ("Hel", "lo", " {")] == ["Hel", "lo", " {"]


def test_an_earlier_call_goes_back_to_the_model_as_it_writes_calls() -> None:
    assert (
        call_text("find", '{"where":"x","n":[1,2]}')
        == '{"name": "find", "arguments": {"where": "x", "n": [1, 2]}}'
    )
    assert call_text("f", '{"é": "ü"}') == '{"name": "f", "arguments": {"é": "ü"}}'
    with pytest.raises(ValueError, match="not JSON"):
        call_text("f", "{oops")
