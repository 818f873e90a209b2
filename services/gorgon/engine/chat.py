"""Prompts from chat messages: the tokenizer's own chat template, or Vicuna v1.1 for a Vicuna model without one.

Which conversation format a model gets depends on the model, never on the name it is served under (a model baked
into an image at a path may be served as `vicuna-7b-v1.3`, or a Vicuna as `chat`). A model without a chat template
gets Vicuna v1.1 when it was loaded from a Vicuna location or has a Llama sentencepiece tokenizer: Vicuna's own
repositories ship such a tokenizer and no template, and base Llama checkpoints have no format of their own."""

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
LLAMA_SENTENCEPIECE_TOKENIZERS = frozenset({"LlamaTokenizer", "LlamaTokenizerFast"})


def is_vicuna(name_or_path: str) -> bool:
    return "vicuna" in name_or_path.lower()


def speaks_vicuna(tokenizer: PreTrainedTokenizerBase) -> bool:
    """A model without a chat template whose tokenizer came from a Vicuna location or is Llama's sentencepiece one."""
    if tokenizer.chat_template:
        return False
    return is_vicuna(tokenizer.name_or_path) or type(tokenizer).__name__ in LLAMA_SENTENCEPIECE_TOKENIZERS


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
    if speaks_vicuna(tokenizer):
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
