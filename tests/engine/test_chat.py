"""Chat prompts: Vicuna v1.1 for Vicuna models (decided by the model, not the name it is served under)."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from gorgon.core.errors import GorgonError
from gorgon.engine import load_engine
from gorgon.engine.chat import VICUNA_SYSTEM, encode_chat, is_vicuna, speaks_vicuna, vicuna_prompt
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
