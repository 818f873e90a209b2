"""Chat prompts: Vicuna v1.1 for Vicuna models."""

from __future__ import annotations

import pytest

from gorgon.core.errors import GorgonError
from gorgon.engine.chat import VICUNA_SYSTEM, is_vicuna, vicuna_prompt
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
