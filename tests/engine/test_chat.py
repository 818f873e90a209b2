"""Chat prompts: Vicuna v1.1 for Vicuna models (decided by the model, not the name it is served under); tools
shown through the template or described in a system message; tool results and earlier calls in the conversation."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import AutoTokenizer

from gorgon.core.errors import GorgonError
from gorgon.core.protocol import TOOL_DEFINITIONS_ROLE
from gorgon.engine import load_engine
from gorgon.engine.chat import (
    TOOLS_PROMPT,
    VICUNA_SYSTEM,
    VICUNA_TOOL_RESULT,
    encode_chat,
    is_vicuna,
    speaks_vicuna,
    split_tool_definitions,
    tools_described,
    vicuna_prompt,
)
from gorgon.engine.config import EngineSettings
from gorgon.engine.interface import ChatMessage


def test_vicuna_v11_layout() -> None:
    messages = [
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello!"),
        ChatMessage("user", "How are you?"),
    ]
    assert (
        vicuna_prompt(messages)
        == f"{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello!</s>USER: How are you? ASSISTANT:"
    )


def test_vicuna_system_message_replaces_the_default() -> None:
    prompt = vicuna_prompt([ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")])
    assert prompt == "Be brief. USER: Hi ASSISTANT:"


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(GorgonError, match="unknown chat role"):
        vicuna_prompt([ChatMessage("robot", "beep")])


def test_vicuna_detection() -> None:
    assert is_vicuna("lmsys/vicuna-7b-v1.3")
    assert not is_vicuna("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_a_vicuna_model_at_a_path_served_as_vicuna_speaks_vicuna_v11(vicuna_dir, monkeypatch) -> None:
    monkeypatch.setenv("GORGON_ENGINE_SERVED_MODEL_NAME", "vicuna-7b-v1.3")
    engine = load_engine(
        EngineSettings(model=str(vicuna_dir), device="cpu", dtype="float32", use_deepspeed=False)
    )
    assert engine.info.name == "vicuna-7b-v1.3"
    messages = [ChatMessage("user", "What is the capital of France?")]
    expected = f"{VICUNA_SYSTEM} USER: What is the capital of France? ASSISTANT:"
    assert engine.encode(messages) == engine.prompt_tokenizer.encode(expected)
    assert engine.encode(messages)[0] == engine.prompt_tokenizer.bos_token_id


def test_the_conversation_format_follows_the_model_not_the_served_name(vicuna_dir, tokenizer) -> None:
    vicuna = AutoTokenizer.from_pretrained(vicuna_dir)
    messages = [ChatMessage("user", "Hi")]
    assert speaks_vicuna(vicuna)
    assert encode_chat(vicuna, "chat", messages) == vicuna.encode(vicuna_prompt(messages))
    assert not speaks_vicuna(tokenizer)
    with pytest.raises(GorgonError, match="no chat template"):
        encode_chat(tokenizer, "vicuna-7b-v1.3", messages)
    templated = copy.deepcopy(vicuna)
    templated.chat_template = "{% for m in messages %}<{{ m.content }}>{% endfor %}"
    assert not speaks_vicuna(templated)
    assert encode_chat(templated, "vicuna-7b-v1.3", messages) == templated.encode(
        "<Hi>", add_special_tokens=False
    )


def test_the_served_name_keeps_its_older_variable(monkeypatch) -> None:
    monkeypatch.setenv("GORGON_ENGINE_MODEL_NAME", "vicuna-7b-v1.3")
    assert EngineSettings().served_model_name == "vicuna-7b-v1.3"
    monkeypatch.setenv("GORGON_ENGINE_SERVED_MODEL_NAME", "vicuna")
    assert EngineSettings().served_model_name == "vicuna"


# --- tools -------------------------------------------------------------------------------------------------------

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""SmolLM2's kind of template: ChatML, any role, no place for tools."""
WITH_TOOLS = "{% if tools %}[TOOLS {{ tools | tojson }}]{% endif %}" + CHATML
ONLY_USER_AND_ASSISTANT = (
    "{% for message in messages %}{% if message['role'] not in ['user', 'assistant', 'system'] %}"
    "{{ raise_exception('roles must be user or assistant') }}{% endif %}{{ message['content'] }}{% endfor %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
TOOL_CONVERSATION = [
    ChatMessage(TOOL_DEFINITIONS_ROLE, json.dumps([WEATHER])),
    ChatMessage("user", "Weather in Oslo?"),
    ChatMessage("assistant", CALL),
    ChatMessage("tool", "12 degrees"),
]


def templated(tokenizer, template: str):
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = template
    return copied


def decoded(tokenizer, messages: list[ChatMessage]) -> str:
    return tokenizer.decode(encode_chat(tokenizer, "tiny", messages))


def test_a_template_without_tools_gets_them_described_in_a_system_message(tokenizer) -> None:
    chatml = templated(tokenizer, CHATML)
    described = TOOLS_PROMPT.format(
        tools=json.dumps(
            {
                "name": "get_weather",
                **{key: WEATHER["function"][key] for key in ("description", "parameters")},
            }
        )
    )
    assert decoded(chatml, TOOL_CONVERSATION) == (
        f"<|im_start|>system\n{described}<|im_end|>\n"
        "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALL}<|im_end|>\n"
        "<|im_start|>tool\n12 degrees<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [TOOL_CONVERSATION[0], ChatMessage("system", "Be brief."), *TOOL_CONVERSATION[1:]]
    assert decoded(chatml, with_system).startswith(
        f"<|im_start|>system\nBe brief.\n\n{described}<|im_end|>\n"
    )


def test_a_template_that_shows_tools_gets_them_as_tools(tokenizer) -> None:
    prompt = decoded(templated(tokenizer, WITH_TOOLS), TOOL_CONVERSATION)
    shown, conversation = prompt.split("]<|im_start|>", 1)
    assert json.loads(shown.removeprefix("[TOOLS ")) == [WEATHER]
    assert conversation.startswith("user\nWeather in Oslo?")  # no system message describes them


def test_without_tools_the_conversation_is_as_it_was(tokenizer) -> None:
    chatml = templated(tokenizer, CHATML)
    assert (
        decoded(chatml, [ChatMessage("user", "Hi")])
        == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_template_that_refuses_a_role_is_a_400_naming_messages(tokenizer) -> None:
    strict = templated(tokenizer, ONLY_USER_AND_ASSISTANT)
    with pytest.raises(GorgonError, match="roles must be user or assistant") as refused:
        encode_chat(strict, "tiny", TOOL_CONVERSATION[1:])
    assert refused.value.param == "messages"


def test_malformed_tool_definitions_are_a_400_naming_tools(tokenizer) -> None:
    for content in ("{not json", '{"a": 1}'):
        with pytest.raises(GorgonError) as refused:
            encode_chat(templated(tokenizer, CHATML), "tiny", [ChatMessage(TOOL_DEFINITIONS_ROLE, content)])
        assert refused.value.param == "tools"


def test_vicuna_reads_tools_in_its_system_prompt_and_tool_results_as_user_turns() -> None:
    prompt = vicuna_prompt(split_tool_definitions(TOOL_CONVERSATION)[1])
    assert prompt == (
        f"{VICUNA_SYSTEM} USER: Weather in Oslo? ASSISTANT: {CALL}</s>"
        f"USER: {VICUNA_TOOL_RESULT}12 degrees ASSISTANT:"
    )
    tools, conversation = split_tool_definitions(TOOL_CONVERSATION)
    described = vicuna_prompt(tools_described(conversation, tools))
    assert described.startswith(TOOLS_PROMPT.split("{tools}")[0]) and '"name": "get_weather"' in described
    assert vicuna_prompt([ChatMessage("developer", "Be brief."), ChatMessage("user", "Hi")]) == (
        "Be brief. USER: Hi ASSISTANT:"
    )


def test_a_vicuna_model_sees_the_tools(vicuna_dir) -> None:
    vicuna = AutoTokenizer.from_pretrained(vicuna_dir)
    tools, conversation = split_tool_definitions(TOOL_CONVERSATION)
    expected = vicuna.encode(vicuna_prompt(tools_described(conversation, tools)))
    assert encode_chat(vicuna, "vicuna", TOOL_CONVERSATION) == expected
