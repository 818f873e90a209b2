"""Every parameter is honoured or refused: a parameter gorgon does not implement is accepted at its neutral value
and refused with a 400 naming it at any other; one it implements is range-checked, a 400 naming it otherwise."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gorgon.api.errors import OpenAIError
from gorgon.api.schemas import (
    MAX_CHOICES,
    MAX_PROMPTS,
    NOT_IMPLEMENTED,
    ChatCompletionRequest,
    CompletionRequest,
    parse_body,
)
from gorgon.core.limits import (
    MAX_COMPLETION_LOGPROBS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_STOP_TOKEN_IDS,
)
from gorgon.core.protocol import TOOL_DEFINITIONS_ROLE

Request = type[CompletionRequest] | type[ChatCompletionRequest]
Case = tuple[Request, dict[str, Any], str, Any]

COMPLETION: dict[str, Any] = {"prompt": "hi"}
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}

REFUSED: list[Case] = [
    (CompletionRequest, COMPLETION, "suffix", " and so on"),
    (ChatCompletionRequest, CHAT, "functions", [{"name": "f", "parameters": {}}]),
    (ChatCompletionRequest, CHAT, "function_call", "auto"),
    (ChatCompletionRequest, CHAT, "function_call", {"name": "f"}),
    (CompletionRequest, COMPLETION, "echo", True),
]

NEUTRAL: list[Case] = [
    (CompletionRequest, COMPLETION, "suffix", ""),
    (CompletionRequest, COMPLETION, "suffix", None),
    (ChatCompletionRequest, CHAT, "functions", []),
    (ChatCompletionRequest, CHAT, "functions", None),
    (ChatCompletionRequest, CHAT, "function_call", "none"),
    (CompletionRequest, COMPLETION, "echo", False),
]

SCHEMA: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "integer"}}}
FUNCTION: dict[str, Any] = {"type": "function", "function": {"name": "f", "parameters": SCHEMA}}

ACCEPTED: list[Case] = [
    (CompletionRequest, COMPLETION, "logprobs", 0),
    (CompletionRequest, COMPLETION, "logprobs", MAX_COMPLETION_LOGPROBS),
    (ChatCompletionRequest, CHAT, "logprobs", True),
    (ChatCompletionRequest, CHAT, "top_logprobs", 0),
    (ChatCompletionRequest, CHAT, "presence_penalty", -2.0),
    (CompletionRequest, COMPLETION, "frequency_penalty", 2),
    (CompletionRequest, COMPLETION, "logit_bias", {"50256": -100, "0": 100}),
    (ChatCompletionRequest, CHAT, "repetition_penalty", 1.3),
    (CompletionRequest, COMPLETION, "min_tokens", 0),
    (ChatCompletionRequest, CHAT, "ignore_eos", True),
    (CompletionRequest, COMPLETION, "stop_token_ids", [2, 0]),
    (ChatCompletionRequest, CHAT, "n", MAX_CHOICES),
    (CompletionRequest, COMPLETION, "best_of", 1),
    (CompletionRequest, COMPLETION, "prompt", ["a", "b"]),
    (ChatCompletionRequest, CHAT, "response_format", None),
    (ChatCompletionRequest, CHAT, "response_format", {"type": "text"}),
    (CompletionRequest, COMPLETION, "response_format", {"type": "json_object"}),
    (
        ChatCompletionRequest,
        CHAT,
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "a-b_1", "schema": SCHEMA, "strict": True}},
    ),
    (ChatCompletionRequest, CHAT, "parallel_tool_calls", False),
]

INVALID: list[Case] = [
    (CompletionRequest, COMPLETION, "logprobs", MAX_COMPLETION_LOGPROBS + 1),
    (CompletionRequest, COMPLETION, "logprobs", -1),
    (CompletionRequest, COMPLETION, "logprobs", True),
    (ChatCompletionRequest, CHAT, "logprobs", 2),
    (ChatCompletionRequest, CHAT, "top_logprobs", MAX_LOGPROBS + 1),
    (ChatCompletionRequest, CHAT, "presence_penalty", 2.5),
    (CompletionRequest, COMPLETION, "frequency_penalty", -2.01),
    (CompletionRequest, COMPLETION, "logit_bias", {"fifty": 1}),
    (CompletionRequest, COMPLETION, "logit_bias", {"-1": 1}),
    (CompletionRequest, COMPLETION, "logit_bias", {"1": 100.5}),
    (
        CompletionRequest,
        COMPLETION,
        "logit_bias",
        {str(token): 1 for token in range(MAX_LOGIT_BIAS_ENTRIES + 1)},
    ),
    (ChatCompletionRequest, CHAT, "repetition_penalty", 0),
    (CompletionRequest, COMPLETION, "min_tokens", -1),
    (ChatCompletionRequest, CHAT, "ignore_eos", "sometimes"),
    (CompletionRequest, COMPLETION, "stop_token_ids", [-3]),
    (CompletionRequest, COMPLETION, "stop_token_ids", list(range(MAX_STOP_TOKEN_IDS + 1))),
    (ChatCompletionRequest, CHAT, "n", MAX_CHOICES + 1),
    (CompletionRequest, COMPLETION, "n", 0),
    (CompletionRequest, COMPLETION, "best_of", MAX_CHOICES + 1),
    (CompletionRequest, COMPLETION, "prompt", []),
    (CompletionRequest, COMPLETION, "prompt", ["a", ""]),
    (CompletionRequest, COMPLETION, "prompt", ["p"] * (MAX_PROMPTS + 1)),
    (ChatCompletionRequest, CHAT, "response_format", {"type": "yaml"}),
    (ChatCompletionRequest, CHAT, "response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
    (
        ChatCompletionRequest,
        CHAT,
        "response_format",
        {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
    ),
    (CompletionRequest, COMPLETION, "response_format", {"type": "json_schema"}),
    (ChatCompletionRequest, CHAT, "tools", [{"type": "function", "function": {"name": "f g"}}]),
    (
        ChatCompletionRequest,
        CHAT,
        "tools",
        [{"type": "function", "function": {"name": "f", "parameters": 3}}],
    ),
    (ChatCompletionRequest, CHAT, "tool_choice", "always"),
    (ChatCompletionRequest, CHAT, "parallel_tool_calls", "sometimes"),
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
    assert refused == set(NOT_IMPLEMENTED) == neutral


@pytest.mark.parametrize(("model", "base", "param", "value"), ACCEPTED)
def test_an_implemented_parameter_within_its_range_is_accepted(
    model: Request, base: dict[str, Any], param: str, value: Any
) -> None:
    assert getattr(_parse(model, {**base, param: value}), param) == value


@pytest.mark.parametrize(("model", "base", "param", "value"), INVALID)
def test_an_implemented_parameter_out_of_its_range_is_a_400_naming_it(
    model: Request, base: dict[str, Any], param: str, value: Any
) -> None:
    with pytest.raises(OpenAIError) as refused:
        _parse(model, {**base, param: value})
    assert refused.value.status == 400
    assert str(refused.value.param).split(".")[0] == param
    assert refused.value.code == "invalid_value"


@pytest.mark.parametrize(
    ("model", "body", "param", "code"),
    [
        (ChatCompletionRequest, {**CHAT, "top_logprobs": 2}, "top_logprobs", "invalid_value"),
        (
            ChatCompletionRequest,
            {**CHAT, "logprobs": False, "top_logprobs": 2},
            "top_logprobs",
            "invalid_value",
        ),
        (CompletionRequest, {**COMPLETION, "n": 3, "best_of": 2}, "best_of", "invalid_value"),
        (CompletionRequest, {**COMPLETION, "best_of": 2, "stream": True}, "best_of", "invalid_value"),
        (CompletionRequest, {"prompt": [1, 2, 3]}, "prompt", "unsupported_parameter"),
        (CompletionRequest, {"prompt": [[1, 2], [3]]}, "prompt", "unsupported_parameter"),
        (
            CompletionRequest,
            {**COMPLETION, "presence_penalty": float("inf")},
            "presence_penalty",
            "invalid_value",
        ),
        (ChatCompletionRequest, {**CHAT, "tool_choice": "auto"}, "tool_choice", "invalid_value"),
        (
            ChatCompletionRequest,
            {**CHAT, "tools": [], "tool_choice": "required"},
            "tool_choice",
            "invalid_value",
        ),
        (
            ChatCompletionRequest,
            {**CHAT, "tools": [FUNCTION], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice",
            "invalid_value",
        ),
        (ChatCompletionRequest, {**CHAT, "tools": [FUNCTION, FUNCTION]}, "tools", "invalid_value"),
        (
            ChatCompletionRequest,
            {**CHAT, "tools": [FUNCTION], "response_format": {"type": "json_object"}},
            "response_format",
            "invalid_value",
        ),
    ],
)
def test_checks_across_fields_name_the_parameter_at_fault(
    model: Request, body: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(OpenAIError) as refused:
        _parse(model, body)
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, param, code)


def test_choices_and_logprobs_asked_are_what_the_workers_are_asked_for() -> None:
    completion = _parse(CompletionRequest, {**COMPLETION, "n": 2, "best_of": 5, "logprobs": 3})
    assert (completion.candidates_per_prompt(), completion.logprobs_asked()) == (5, 3)
    assert _parse(CompletionRequest, {"prompt": ["a", "b"]}).prompts() == ("a", "b")
    chat = _parse(ChatCompletionRequest, {**CHAT, "n": 3, "logprobs": True})
    assert (chat.candidates_per_prompt(), chat.logprobs_asked()) == (3, 0)
    assert _parse(ChatCompletionRequest, {**CHAT, "logprobs": True, "top_logprobs": 4}).logprobs_asked() == 4
    assert _parse(ChatCompletionRequest, {**CHAT, "top_logprobs": 0}).logprobs_asked() is None
    assert _parse(CompletionRequest, {**COMPLETION, "logit_bias": {"7": -1.5}}).logit_bias_pairs() == (
        (7, -1.5),
    )


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


def test_tools_become_a_grammar_and_a_message_of_definitions_unless_tool_choice_is_none() -> None:
    calling = _parse(ChatCompletionRequest, {**CHAT, "tools": [FUNCTION]})
    assert json.loads(str(calling.wire_response_format()))["tool_call"]["free_text"] is True
    assert calling.wire_messages() == (
        (TOOL_DEFINITIONS_ROLE, json.dumps([FUNCTION])),
        ("user", "hi"),
    )
    required = _parse(ChatCompletionRequest, {**CHAT, "tools": [FUNCTION], "tool_choice": "required"})
    assert json.loads(str(required.wire_response_format()))["tool_call"]["free_text"] is False
    silent = {**CHAT, "tools": [FUNCTION], "tool_choice": "none", "response_format": {"type": "json_object"}}
    refrained = _parse(ChatCompletionRequest, silent)
    assert refrained.tool_calling() is None and refrained.wire_messages() == (("user", "hi"),)
    assert refrained.wire_response_format() == json.dumps({"type": "json_object"})


def test_a_named_function_is_the_only_one_the_reply_may_call() -> None:
    other = {"type": "function", "function": {"name": "g", "strict": True}}
    named = {"type": "function", "function": {"name": "g"}}
    request = _parse(ChatCompletionRequest, {**CHAT, "tools": [FUNCTION, other], "tool_choice": named})
    calling = request.tool_calling()
    assert calling is not None and list(calling.functions) == ["g"]
    assert (calling.optional, calling.strict) == (False, True)
    assert len(json.loads(request.wire_messages()[0][1])) == 2  # the model is shown every tool


def test_assistant_tool_calls_and_tool_results_reach_the_model_as_text() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Let me see.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "2"}]},
    ]
    request = _parse(ChatCompletionRequest, {"messages": messages})
    assert request.wire_messages() == (
        ("user", "hi"),
        ("assistant", 'Let me see.\n{"name": "f", "arguments": {"a": 1}}'),
        ("tool", "2"),
    )


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "tool_calls": []}, "messages.1"),
        ({"role": "assistant"}, "messages.1"),
        (
            {"role": "tool", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
            "messages.1",
        ),
        (
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "not json"}}]},
            "messages.1.tool_calls.0.function.arguments",
        ),
        ({"role": "function", "content": "x", "name": "f"}, "messages.1.role"),
    ],
)
def test_malformed_tool_messages_are_400s_naming_them(message: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as refused:
        _parse(ChatCompletionRequest, {"messages": [CHAT["messages"][0], message]})
    assert (refused.value.status, refused.value.param) == (400, param)
