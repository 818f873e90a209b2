"""Structured output and tool calls through the official `openai` client, the real API and worker and the real
grammar engine, with an engine whose replies the tests write (scripted.py): what reaches the worker, the replies
read back whole and streamed, and the 400s naming the parameter at fault, from the API or from the worker."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel
from scripted import SCRIPTED_MODEL, ScriptedPlatform, scripted_platform

from gorgon.core.protocol import TOOL_DEFINITIONS_ROLE
from gorgon.core.redis.names import RedisNames
from gorgon.engine.interface import ChatMessage
from gorgon_testing import delete_namespace

TRIP = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 30},
        "tags": {"type": "array", "items": {"enum": ["sun", "museums"]}},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TRIP_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "trip", "schema": TRIP, "strict": True},
}
TRIP_REPLY = '{"city": "Paris", "days": 3, "tags": ["museums"]}'
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"$ref": "#/$defs/unit"},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
            "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}},
        },
        "strict": True,
    },
}
CLOCK: dict[str, Any] = {"type": "function", "function": {"name": "get_time", "description": "The time."}}
TOOLS = [WEATHER, CLOCK]
WEATHER_ARGUMENTS = '{"city": "Oslo", "unit": "celsius"}'
WEATHER_CALL = f'{{"name": "get_weather", "arguments": {WEATHER_ARGUMENTS}}}'


@pytest.fixture(scope="module")
async def platform(redis_url: str) -> AsyncIterator[ScriptedPlatform]:
    names = RedisNames(f"gorgon-test-{uuid.uuid4().hex[:12]}")
    try:
        async with scripted_platform(redis_url, names) as running:
            yield running
    finally:
        delete_namespace(redis_url, names.namespace)


async def chat(platform: ScriptedPlatform, reply: str, **params: Any) -> Any:
    """The whole reply to a chat whose scripted answer is `reply`."""
    messages = params.pop("messages", [{"role": "user", "content": reply}])
    return await platform.client.chat.completions.create(
        model=SCRIPTED_MODEL, messages=messages, max_tokens=params.pop("max_tokens", 200), **params
    )


async def streamed_chat(platform: ScriptedPlatform, reply: str, **params: Any) -> list[Any]:
    """The chunks of the streamed reply to a chat whose scripted answer is `reply`."""
    stream = await chat(platform, reply, stream=True, **params)
    return [chunk async for chunk in stream]


def streamed_deltas(chunks: list[Any]) -> list[Any]:
    return [chunk.choices[0].delta for chunk in chunks if chunk.choices]


def streamed_finish_reason(chunks: list[Any]) -> str | None:
    return [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1]


# --- response_format --------------------------------------------------------------------------------------------


async def test_a_json_schema_reaches_the_worker_and_the_reply_validates(platform: ScriptedPlatform) -> None:
    reply = await chat(platform, TRIP_REPLY, response_format=TRIP_FORMAT)
    content = reply.choices[0].message.content
    jsonschema.validate(json.loads(content), TRIP)
    assert content == TRIP_REPLY and reply.choices[0].finish_reason == "stop"
    assert json.loads(platform.engine.response_formats[-1]) == TRIP_FORMAT
    chunks = await streamed_chat(platform, TRIP_REPLY, response_format=TRIP_FORMAT)
    assert "".join(delta.content or "" for delta in streamed_deltas(chunks)) == content


class Trip(BaseModel):
    city: str
    days: int


async def test_the_clients_parse_helper_gets_its_model_back(platform: ScriptedPlatform) -> None:
    """openai's `parse` sends a strict json_schema made from a pydantic model and parses the reply into it."""
    reply = await platform.client.chat.completions.parse(
        model=SCRIPTED_MODEL,
        messages=[{"role": "user", "content": '{"city": "Rome", "days": 2}'}],
        response_format=Trip,
    )
    assert reply.choices[0].message.parsed == Trip(city="Rome", days=2)
    sent = json.loads(platform.engine.response_formats[-1])
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True


async def test_json_object_holds_on_completions_too(platform: ScriptedPlatform) -> None:
    reply = await platform.client.completions.create(
        model=SCRIPTED_MODEL,
        prompt='{"any": ["thing"]}',
        max_tokens=50,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert json.loads(reply.choices[0].text) == {"any": ["thing"]}
    assert json.loads(platform.engine.response_formats[-1]) == {"type": "json_object"}


async def test_text_asks_the_worker_for_no_grammar(platform: ScriptedPlatform) -> None:
    reply = await chat(platform, "{not json", response_format={"type": "text"})
    assert reply.choices[0].message.content == "{not json"
    assert platform.engine.response_formats[-1] is None


async def test_a_reply_the_schema_forbids_cannot_be_written(platform: ScriptedPlatform) -> None:
    """The scripted engine's check stands for a model's masked logits: the grammar refuses the reply."""
    with pytest.raises(openai.BadRequestError) as refused:
        await chat(platform, '{"city": "Paris", "days": 0}', response_format=TRIP_FORMAT)
    assert refused.value.code == "script_outside_grammar"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
        {"type": "shape"},
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    ],
)
async def test_a_schema_the_grammar_engine_refuses_is_the_workers_400_naming_response_format(
    platform: ScriptedPlatform, schema: dict[str, Any]
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "bad", "schema": schema, "strict": True},
    }
    with pytest.raises(openai.BadRequestError) as refused:
        await chat(platform, "[1]", response_format=response_format)
    assert refused.value.param == "response_format"
    assert "cannot be used" in refused.value.message


async def test_without_strict_a_keyword_the_grammar_cannot_enforce_is_ignored(
    platform: ScriptedPlatform,
) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    response_format = {"type": "json_schema", "json_schema": {"name": "loose", "schema": schema}}
    reply = await chat(platform, "[1, 1]", response_format=response_format)
    assert reply.choices[0].message.content == "[1, 1]"


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "yaml"},
        {"type": "tool_call", "tool_call": {"schema": {}}},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": TRIP}},
        {"type": "json_schema", "json_schema": {"name": "has spaces", "schema": TRIP}},
        {"type": "json_schema", "json_schema": {"name": "trip"}},
        {"type": "json_schema", "json_schema": {"name": "trip", "schema": [TRIP]}},
        {"type": "json_schema", "json_schema": {"name": "trip", "schema": TRIP, "strict": "yes"}},
        "json_object",
    ],
)
async def test_a_malformed_response_format_is_the_apis_400_naming_it(
    platform: ScriptedPlatform, response_format: Any
) -> None:
    admitted = len(platform.engine.response_formats)
    with pytest.raises(openai.BadRequestError) as refused:
        await chat(platform, "{}", response_format=response_format)
    assert refused.value.param == "response_format"
    assert len(platform.engine.response_formats) == admitted


# --- tool calls: replies ----------------------------------------------------------------------------------------


def check_weather_call(message: Any) -> None:
    assert message.content is None
    [call] = message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert call.function.arguments == WEATHER_ARGUMENTS


@pytest.mark.parametrize(
    "tool_choice", ["required", "auto", {"type": "function", "function": {"name": "get_weather"}}]
)
async def test_a_tool_call_is_parsed_into_tool_calls(platform: ScriptedPlatform, tool_choice: Any) -> None:
    reply = await chat(platform, WEATHER_CALL, tools=TOOLS, tool_choice=tool_choice)
    check_weather_call(reply.choices[0].message)
    assert reply.choices[0].finish_reason == "tool_calls"


async def test_the_tools_and_their_grammar_reach_the_worker(platform: ScriptedPlatform) -> None:
    await chat(platform, WEATHER_CALL, tools=TOOLS, tool_choice="required")
    definitions, *conversation = platform.engine.conversations[-1]
    assert definitions.role == TOOL_DEFINITIONS_ROLE and json.loads(definitions.content) == TOOLS
    assert conversation == [ChatMessage("user", WEATHER_CALL)]
    sent = json.loads(platform.engine.response_formats[-1])
    assert sent["type"] == "tool_call" and sent["tool_call"]["free_text"] is False
    assert sent["tool_call"]["strict"] is True  # get_weather asked for it
    [weather, clock] = sent["tool_call"]["schema"]["anyOf"]
    assert weather["properties"]["name"] == {"const": "get_weather"}
    assert weather["properties"]["arguments"]["properties"]["unit"] == {
        "$ref": "#/anyOf/0/properties/arguments/$defs/unit"
    }
    assert clock["properties"]["arguments"] == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }


async def test_a_streamed_tool_call_sends_its_name_then_its_arguments(platform: ScriptedPlatform) -> None:
    whole = await chat(platform, WEATHER_CALL, tools=TOOLS, tool_choice="required")
    chunks = await streamed_chat(platform, WEATHER_CALL, tools=TOOLS, tool_choice="required")
    deltas = streamed_deltas(chunks)
    assert not any(delta.content for delta in deltas)
    pieces = [call for delta in deltas for call in delta.tool_calls or ()]
    first, *rest = pieces
    assert first.index == 0 and first.type == "function" and first.id.startswith("call_")
    assert first.function.name == "get_weather"
    assert all(piece.index == 0 and piece.id is None and piece.function.name is None for piece in rest)
    assert len(rest) > 2  # the arguments come as the model writes them
    arguments = "".join(piece.function.arguments or "" for piece in pieces)
    assert arguments == whole.choices[0].message.tool_calls[0].function.arguments
    assert streamed_finish_reason(chunks) == "tool_calls"


async def test_the_official_stream_helper_assembles_the_call(platform: ScriptedPlatform) -> None:
    async with platform.client.chat.completions.stream(
        model=SCRIPTED_MODEL,
        messages=[{"role": "user", "content": WEATHER_CALL}],
        tools=TOOLS,
        tool_choice="required",
        max_tokens=200,
    ) as stream:
        final = await stream.get_final_completion()
    check_weather_call(final.choices[0].message)


async def test_with_tool_choice_auto_free_text_is_content(platform: ScriptedPlatform) -> None:
    text = "It is sunny in Oslo {as far as I know}."
    reply = await chat(platform, text, tools=TOOLS)
    assert reply.choices[0].message.content == text and reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"
    assert json.loads(platform.engine.response_formats[-1])["tool_call"]["free_text"] is True
    chunks = await streamed_chat(platform, text, tools=TOOLS, tool_choice="auto")
    deltas = streamed_deltas(chunks)
    assert "".join(delta.content or "" for delta in deltas) == text
    assert not any(delta.tool_calls for delta in deltas)


async def test_a_call_cut_by_max_tokens_keeps_what_was_written(platform: ScriptedPlatform) -> None:
    params: dict[str, Any] = {"tools": TOOLS, "tool_choice": "required", "max_tokens": 40}
    reply = await chat(platform, WEATHER_CALL, **params)
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert WEATHER_CALL.startswith(f'{{"name": "get_weather", "arguments": {call.function.arguments}')
    assert reply.choices[0].finish_reason == "length"
    chunks = await streamed_chat(platform, WEATHER_CALL, **params)
    pieces = [call for delta in streamed_deltas(chunks) for call in delta.tool_calls or ()]
    assert "".join(piece.function.arguments or "" for piece in pieces) == call.function.arguments
    assert streamed_finish_reason(chunks) == "length"


async def test_each_choice_is_read_for_its_call(platform: ScriptedPlatform) -> None:
    reply = await chat(platform, WEATHER_CALL, tools=TOOLS, tool_choice="required", n=2)
    assert len(reply.choices) == 2
    for choice in reply.choices:
        check_weather_call(choice.message)
    assert reply.choices[0].message.tool_calls[0].id != reply.choices[1].message.tool_calls[0].id


@pytest.mark.parametrize(
    ("tool_choice", "reply"),
    [
        ("required", "I would rather not."),
        ({"type": "function", "function": {"name": "get_time"}}, WEATHER_CALL),
        ("auto", '{"name": "get_weather", "arguments": {"city": "Oslo"}}'),
        ("auto", '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "kelvin"}}'),
        ("auto", '{"name": "get_date", "arguments": {}}'),
        ("auto", '{"city": "Oslo"}'),
    ],
)
async def test_the_grammar_allows_only_the_calls_tool_choice_allows(
    platform: ScriptedPlatform, tool_choice: Any, reply: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await chat(platform, reply, tools=TOOLS, tool_choice=tool_choice)
    assert refused.value.code == "script_outside_grammar"


async def test_tool_choice_none_neither_shows_nor_reads_the_tools(platform: ScriptedPlatform) -> None:
    reply = await chat(platform, WEATHER_CALL, tools=TOOLS, tool_choice="none", parallel_tool_calls=False)
    assert reply.choices[0].message.content == WEATHER_CALL
    assert reply.choices[0].message.tool_calls is None
    assert platform.engine.conversations[-1] == [ChatMessage("user", WEATHER_CALL)]
    assert platform.engine.response_formats[-1] is None


async def test_earlier_calls_and_tool_results_go_back_to_the_model(platform: ScriptedPlatform) -> None:
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees, rain"},
        {"role": "user", "content": "It rains in Oslo."},
    ]
    reply = await chat(platform, "", messages=messages, tools=TOOLS, parallel_tool_calls=True)
    assert reply.choices[0].message.content == "It rains in Oslo."
    assert platform.engine.conversations[-1][1:] == [
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage("assistant", WEATHER_CALL),
        ChatMessage("tool", "12 degrees, rain"),
        ChatMessage("user", "It rains in Oslo."),
    ]


# --- tool calls: refusals ---------------------------------------------------------------------------------------

BAD_TOOL_REQUESTS: list[tuple[dict[str, Any], str, str]] = [
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions", "unsupported_parameter"),
    ({"function_call": "auto"}, "function_call", "unsupported_parameter"),
    ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", ""),
    ({"tools": [WEATHER, WEATHER]}, "tools", "invalid_value"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format", "invalid_value"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools", "invalid_value"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
]


@pytest.mark.parametrize(("params", "param", "code"), BAD_TOOL_REQUESTS)
async def test_tool_requests_gorgon_cannot_serve_are_the_apis_400s_naming_the_parameter(
    platform: ScriptedPlatform, params: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await chat(platform, "hi", extra_body=params)
    assert str(refused.value.param).split(".")[0] == param
    assert refused.value.code == (code or "invalid_value")


async def test_tool_parameters_the_grammar_engine_refuses_are_the_workers_400_naming_tools(
    platform: ScriptedPlatform,
) -> None:
    broken = {"type": "function", "function": {"name": "broken", "parameters": {"type": "shape"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        await chat(platform, "hi", tools=[broken])
    assert refused.value.param == "tools"
    assert "cannot be used" in refused.value.message


async def test_an_earlier_call_whose_arguments_are_not_json_is_refused(platform: ScriptedPlatform) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{city"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "rain"},
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        await chat(platform, "", messages=messages)
    assert str(refused.value.param).startswith("messages.1")
