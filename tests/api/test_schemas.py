"""Every parameter is honoured or refused: a parameter gorgon does not implement is accepted at its neutral value
and refused with a 400 naming it at any other."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gorgon.api.errors import OpenAIError
from gorgon.api.schemas import NOT_IMPLEMENTED, ChatCompletionRequest, CompletionRequest, parse_body
from gorgon.core.limits import MAX_STOP_SEQUENCE_CHARS

Request = type[CompletionRequest] | type[ChatCompletionRequest]
Case = tuple[Request, dict[str, Any], str, Any]

COMPLETION: dict[str, Any] = {"prompt": "hi"}
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}

REFUSED: list[Case] = [
    (ChatCompletionRequest, CHAT, "response_format", {"type": "json_object"}),
    (ChatCompletionRequest, CHAT, "response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
    (CompletionRequest, COMPLETION, "logit_bias", {"50256": -100}),
    (ChatCompletionRequest, CHAT, "logit_bias", {"1": 5.0}),
    (CompletionRequest, COMPLETION, "presence_penalty", 0.5),
    (ChatCompletionRequest, CHAT, "presence_penalty", -2),
    (CompletionRequest, COMPLETION, "frequency_penalty", 1e-9),
    (ChatCompletionRequest, CHAT, "frequency_penalty", 2.0),
    (CompletionRequest, COMPLETION, "suffix", " and so on"),
    (ChatCompletionRequest, CHAT, "tool_choice", "auto"),
    (ChatCompletionRequest, CHAT, "tool_choice", {"type": "function", "function": {"name": "f"}}),
    (ChatCompletionRequest, CHAT, "functions", [{"name": "f", "parameters": {}}]),
    (ChatCompletionRequest, CHAT, "function_call", "auto"),
    (ChatCompletionRequest, CHAT, "top_logprobs", 3),
    (ChatCompletionRequest, CHAT, "tools", [{"type": "function", "function": {"name": "f"}}]),
    (CompletionRequest, COMPLETION, "echo", True),
    (CompletionRequest, COMPLETION, "best_of", 3),
    (CompletionRequest, COMPLETION, "logprobs", 2),
    (CompletionRequest, COMPLETION, "n", 2),
]

NEUTRAL: list[Case] = [
    (ChatCompletionRequest, CHAT, "response_format", {"type": "text"}),
    (ChatCompletionRequest, CHAT, "response_format", None),
    (CompletionRequest, COMPLETION, "logit_bias", {}),
    (CompletionRequest, COMPLETION, "logit_bias", None),
    (CompletionRequest, COMPLETION, "presence_penalty", 0),
    (ChatCompletionRequest, CHAT, "presence_penalty", 0.0),
    (CompletionRequest, COMPLETION, "frequency_penalty", 0),
    (CompletionRequest, COMPLETION, "suffix", ""),
    (CompletionRequest, COMPLETION, "suffix", None),
    (ChatCompletionRequest, CHAT, "tool_choice", "none"),
    (ChatCompletionRequest, CHAT, "tool_choice", None),
    (ChatCompletionRequest, CHAT, "functions", []),
    (ChatCompletionRequest, CHAT, "functions", None),
    (ChatCompletionRequest, CHAT, "function_call", "none"),
    (ChatCompletionRequest, CHAT, "top_logprobs", 0),
    (ChatCompletionRequest, CHAT, "top_logprobs", None),
    (ChatCompletionRequest, CHAT, "tools", []),
]


def _parse(model: Request, body: dict[str, Any]) -> Any:
    return parse_body(model, json.dumps(body).encode())


@pytest.mark.parametrize(("model", "base", "param", "value"), REFUSED)
def test_a_parameter_set_to_what_gorgon_does_not_do_is_refused_by_name(
    model: Request, base: dict[str, Any], param: str, value: Any
) -> None:
    with pytest.raises(OpenAIError) as refused:
        _parse(model, {**base, param: value})
    error = refused.value.body()["error"]
    assert refused.value.status == 400
    assert error["param"] == param
    assert error["code"] == "unsupported_parameter"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{param}: not supported")


@pytest.mark.parametrize(("model", "base", "param", "value"), NEUTRAL)
def test_a_parameter_at_its_neutral_value_is_accepted(
    model: Request, base: dict[str, Any], param: str, value: Any
) -> None:
    assert getattr(_parse(model, {**base, param: value}), param) == value


def test_every_refused_parameter_is_tried_at_a_refused_and_a_neutral_value() -> None:
    refused = {param for _, _, param, _ in REFUSED}
    neutral = {param for _, _, param, _ in NEUTRAL}
    assert refused == set(NOT_IMPLEMENTED)
    assert set(NOT_IMPLEMENTED) - neutral <= {"n", "logprobs", "echo", "best_of"}


@pytest.mark.parametrize("model", [CompletionRequest, ChatCompletionRequest])
def test_stream_options_without_stream_is_refused_as_openai_does(
    model: Request,
) -> None:
    base = COMPLETION if model is CompletionRequest else CHAT
    for stream in ({}, {"stream": False}):
        with pytest.raises(OpenAIError) as refused:
            _parse(model, {**base, **stream, "stream_options": {"include_usage": True}})
        assert refused.value.status == 400
        assert refused.value.param == "stream_options"
    streamed = _parse(model, {**base, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.wants_usage_chunk()
    assert _parse(model, {**base, "stream_options": None}).stream_options is None


@pytest.mark.parametrize("value", ["high", [1], {"a": 1}])
def test_a_mistyped_unimplemented_parameter_is_a_400_naming_it(value: Any) -> None:
    with pytest.raises(OpenAIError) as refused:
        _parse(CompletionRequest, {**COMPLETION, "presence_penalty": value})
    assert (refused.value.status, refused.value.param) == (400, "presence_penalty")


def test_a_stop_sequence_longer_than_the_engines_take_is_refused_at_the_api() -> None:
    longest = {**COMPLETION, "stop": ["x" * MAX_STOP_SEQUENCE_CHARS]}
    assert parse_body(CompletionRequest, json.dumps(longest).encode()).stop_sequences()
    too_long = {**COMPLETION, "stop": ["x" * (MAX_STOP_SEQUENCE_CHARS + 1)]}
    with pytest.raises(OpenAIError) as refused:
        parse_body(CompletionRequest, json.dumps(too_long).encode())
    assert refused.value.status == 400
    assert refused.value.param == "stop"
