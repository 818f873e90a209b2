"""Structured output and tool calls on the real default model (SmolLM2 with its Medusa heads) behind the API,
through the official `openai` client: replies validate, speculation on and off write the same, a stream adds up
to the whole reply, and a schema the grammar engine refuses is a 400 naming response_format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from gorgon_testing import services_in_fresh_namespace

pytestmark = [pytest.mark.slow, pytest.mark.processes]

MODEL_LOAD_TIMEOUT_S = 600.0
MAX_TOKENS = 64
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The current weather in a city.", "parameters": CITY},
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[openai.OpenAI]:
    with services_in_fresh_namespace(redis_url, grace_s=20) as services:
        services.start_worker("medusa", max_batch_size="4")
        api = services.start_api(ready_timeout_s=MODEL_LOAD_TIMEOUT_S)
        yield openai.OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def greedy(client: openai.OpenAI, model: str, **params: Any) -> Any:
    return client.chat.completions.create(model=model, max_tokens=MAX_TOKENS, temperature=0, **params)


def test_a_json_schema_reply_validates_speculating_or_not(client: openai.OpenAI, model: str) -> None:
    messages = [{"role": "user", "content": "Describe a person called Ada who is 36, as JSON."}]
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    replies = {
        speculative: greedy(
            client,
            model,
            messages=messages,
            response_format=response_format,
            extra_body={"use_speculative": speculative},
        ).choices[0]
        for speculative in (True, False)
    }
    assert replies[True].message.content == replies[False].message.content
    assert replies[True].finish_reason == "stop"
    jsonschema.validate(json.loads(replies[True].message.content), PERSON)


def test_tool_choice_required_yields_a_parsed_call_streamed_as_whole(
    client: openai.OpenAI, model: str
) -> None:
    params: dict[str, Any] = {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "required"}
    whole = greedy(client, model, **params).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    [call] = whole.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), CITY)
    plain = greedy(client, model, extra_body={"use_speculative": False}, **params).choices[0]
    assert plain.message.tool_calls[0].function.arguments == call.function.arguments
    chunks = list(greedy(client, model, stream=True, **params))
    pieces = [piece for chunk in chunks if chunk.choices for piece in chunk.choices[0].delta.tool_calls or ()]
    assert pieces[0].function.name == "get_weather"
    assert "".join(piece.function.arguments or "" for piece in pieces) == call.function.arguments
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"


def test_a_schema_the_grammar_engine_refuses_is_a_400_naming_response_format(
    client: openai.OpenAI, model: str
) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        greedy(
            client,
            model,
            messages=ASK_WEATHER,
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}},
        )
    assert refused.value.param == "response_format"
