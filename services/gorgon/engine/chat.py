"""Prompts from chat messages: Vicuna v1.1 for Vicuna models, the tokenizer's own chat template otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import BatchEncoding, PreTrainedTokenizerBase

from gorgon.core.errors import GorgonError
from gorgon.engine.interface import ChatMessage

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_ROLES = {"user": "USER", "assistant": "ASSISTANT"}


def is_vicuna(model_name: str) -> bool:
    return "vicuna" in model_name.lower()


def vicuna_prompt(messages: Sequence[ChatMessage], eos_token: str = "</s>") -> str:
    """FastChat's vicuna_v1.1: `SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:`."""
    system = VICUNA_SYSTEM
    parts: list[str] = []
    for message in messages:
        if message.role == "system":
            system = message.content
        elif message.role in VICUNA_ROLES:
            ending = eos_token if message.role == "assistant" else " "
            parts.append(f"{VICUNA_ROLES[message.role]}: {message.content}{ending}")
        else:
            raise GorgonError(
                f"unknown chat role {message.role!r}; use system, user or assistant", param="messages"
            )
    return f"{system} {''.join(parts)}ASSISTANT:"


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, model_name: str, messages: Sequence[ChatMessage]
) -> list[int]:
    if not messages:
        raise GorgonError("messages must not be empty", param="messages")
    if is_vicuna(model_name):
        return list(tokenizer.encode(vicuna_prompt(messages, tokenizer.eos_token or "</s>")))
    if not tokenizer.chat_template:
        raise GorgonError(
            f"model {model_name} has no chat template; use the completions endpoint", param="messages"
        )
    conversation = [{"role": message.role, "content": message.content} for message in messages]
    encoded = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    if not isinstance(encoded, BatchEncoding):
        raise TypeError(f"the chat template of {model_name} gave {type(encoded).__name__}, not token ids")
    return [int(token) for token in encoded["input_ids"]]
