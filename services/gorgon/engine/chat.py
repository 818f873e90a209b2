"""Prompts from chat messages: the tokenizer's own chat template, or Vicuna v1.1 for a Vicuna model without one.

Which conversation format a model gets depends on the model, never on the name it is served under (a model baked
into an image at a path may be served as `vicuna-7b-v1.3`, or a Vicuna as `chat`). A model without a chat template
gets Vicuna v1.1 when it was loaded from a Vicuna location or has a Llama sentencepiece tokenizer: Vicuna's own
repositories ship such a tokenizer and no template, and base Llama checkpoints have no format of their own.

Tools (a message of role TOOL_DEFINITIONS_ROLE, first in the conversation) go to the chat template where it shows
them (`apply_chat_template(..., tools=...)`); elsewhere, SmolLM2's template and Vicuna's format among them, a
system message describes them and the JSON a call is written as, the JSON the request's grammar holds the reply
to (engine/grammar.py). Tool results (role `tool`) go through the template like any message; Vicuna's format,
which has no such role, gets them as a user turn that says what they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import TemplateError
from transformers import BatchEncoding, PreTrainedTokenizerBase

from gorgon.core.errors import GorgonError
from gorgon.core.protocol import TOOL_DEFINITIONS_ROLE
from gorgon.engine.interface import ChatMessage

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_ROLES = {"user": "USER", "assistant": "ASSISTANT", "tool": "USER"}
SYSTEM_ROLES = frozenset({"system", "developer"})
VICUNA_TOOL_RESULT = "The tool returned: "
LLAMA_SENTENCEPIECE_TOKENIZERS = frozenset({"LlamaTokenizer", "LlamaTokenizerFast"})
TOOLS_PROMPT = (
    "You can call these tools (each line: a tool's name, what it does, the JSON schema of its arguments):\n"
    "{tools}\n"
    'To call a tool, reply with only this JSON object: {{"name": "<the tool\'s name>", "arguments": {{...}}}}, '
    "its arguments following the tool's schema. Otherwise, reply in plain text."
)
"""The system message that shows a model the tools where its chat template has no place for them."""

ToolDefinitions = list[dict[str, Any]]


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
        if message.role in SYSTEM_ROLES:
            system = message.content
        elif message.role in VICUNA_ROLES:
            ending = eos_token if message.role == "assistant" else " "
            said = VICUNA_TOOL_RESULT + message.content if message.role == "tool" else message.content
            parts.append(f"{VICUNA_ROLES[message.role]}: {said}{ending}")
        else:
            raise GorgonError(
                f"unknown chat role {message.role!r}; use system, user, assistant or tool", param="messages"
            )
    return f"{system} {''.join(parts)}ASSISTANT:"


def split_tool_definitions(messages: Sequence[ChatMessage]) -> tuple[ToolDefinitions, list[ChatMessage]]:
    """The tools a conversation carries (OpenAI's `tools` list; empty without them) and its other messages."""
    tools: ToolDefinitions = []
    conversation: list[ChatMessage] = []
    for message in messages:
        if message.role != TOOL_DEFINITIONS_ROLE:
            conversation.append(message)
            continue
        try:
            defined = json.loads(message.content)
        except json.JSONDecodeError as exc:
            raise GorgonError(f"the tool definitions are not JSON: {exc}", param="tools") from exc
        if not isinstance(defined, list):
            raise GorgonError("the tool definitions must be a JSON list", param="tools")
        tools += defined
    return tools, conversation


def tools_described(messages: Sequence[ChatMessage], tools: ToolDefinitions) -> list[ChatMessage]:
    """`messages` with TOOLS_PROMPT at the end of their system message (a new one where they have none)."""
    lines = [json.dumps(_summary(tool), ensure_ascii=False) for tool in tools]
    description = TOOLS_PROMPT.format(tools="\n".join(lines))
    if messages and messages[0].role in SYSTEM_ROLES:
        first = messages[0]
        return [ChatMessage(first.role, f"{first.content}\n\n{description}"), *messages[1:]]
    return [ChatMessage("system", description), *messages]


def _summary(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function", {})
    summary = {"name": function.get("name"), "description": function.get("description")}
    return {**summary, "parameters": function.get("parameters", {"type": "object", "properties": {}})}


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, model_name: str, messages: Sequence[ChatMessage]
) -> list[int]:
    tools, conversation = split_tool_definitions(messages)
    if not conversation:
        raise GorgonError("messages must not be empty", param="messages")
    if speaks_vicuna(tokenizer):
        if tools:
            conversation = tools_described(conversation, tools)
        return list(tokenizer.encode(vicuna_prompt(conversation, tokenizer.eos_token or "</s>")))
    if not tokenizer.chat_template:
        raise GorgonError(
            f"model {model_name} has no chat template; use the completions endpoint", param="messages"
        )
    try:
        return _templated(tokenizer, model_name, conversation, tools)
    except TemplateError as exc:
        raise GorgonError(
            f"the chat template of {model_name} cannot take this conversation: {exc}", param="messages"
        ) from exc


def _templated(
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    messages: Sequence[ChatMessage],
    tools: ToolDefinitions,
) -> list[int]:
    if tools and not _template_shows_tools(tokenizer, _as_dicts(messages), tools):
        messages, tools = tools_described(messages, tools), []
    encoded = tokenizer.apply_chat_template(
        _as_dicts(messages),
        tools=_for_template(tools),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    if not isinstance(encoded, BatchEncoding):
        raise TypeError(f"the chat template of {model_name} gave {type(encoded).__name__}, not token ids")
    return [int(token) for token in encoded["input_ids"]]


def _template_shows_tools(
    tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, str]], tools: ToolDefinitions
) -> bool:
    """Whether the template renders `tools` (many templates ignore the argument): the prompt with them differs."""

    def rendered(with_tools: ToolDefinitions) -> object:
        return tokenizer.apply_chat_template(
            conversation, tools=_for_template(with_tools), add_generation_prompt=True, tokenize=False
        )

    return rendered(tools) != rendered([])


def _for_template(tools: ToolDefinitions) -> list[dict[Any, Any] | Callable[..., Any]] | None:
    """`tools` as apply_chat_template takes them; None for none."""
    return [*tools] or None


def _as_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": message.role, "content": message.content} for message in messages]
