"""OpenAI request bodies (what a client may send). Unknown fields are ignored, as OpenAI clients send many;
known fields are type-checked and range-checked (OpenAI's ranges, vLLM's for its extras), a 400 naming the field
otherwise, and features gorgon does not implement are refused, never silently ignored: a request that sets one to
anything but its neutral value gets a 400 naming it (`NOT_IMPLEMENTED`).

`response_format` and `tools` are shape-checked here (the API has no grammar engine); the workers compile the
schemas they carry and answer a 400 naming the parameter for one they cannot use."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gorgon.api.errors import UNSUPPORTED_PARAMETER, validation_error
from gorgon.api.tool_calls import NO_PARAMETERS, ToolCalling, call_text
from gorgon.core.limits import (
    GREEDY_BELOW_TEMPERATURE,
    LOGIT_BIAS_RANGE,
    MAX_COMPLETION_LOGPROBS,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_LOGPROBS,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_STOP_TOKEN_IDS,
    PENALTY_RANGE,
)
from gorgon.core.protocol import TOOL_DEFINITIONS_ROLE

MAX_CHOICES = 8
"""Most choices per prompt (`n`, and `best_of` candidates): each is a request of its own in the queue."""
MAX_PROMPTS = 16
"""Most prompts in one completions request (a list of prompts)."""
MAX_TOKEN_ID = 2**31 - 1
"""Token ids (logit_bias keys, stop_token_ids) beyond any vocabulary; the engine checks its own vocabulary."""

NOT_IMPLEMENTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "echo": ((False,), "false"),
    "suffix": ((None, ""), '"" or null'),
    "functions": ((None, []), "[] or null; use tools"),
    "function_call": ((None, "none"), '"none" or null; use tool_choice'),
}
"""Parameters gorgon does not implement: the values that ask for nothing (accepted), described for the error.
The legacy `functions` and `function_call` are refused rather than mapped onto tools: their replies have a shape of
their own (`message.function_call`, finish_reason `function_call`) that no current client needs."""
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenAI's names of functions and response_format schemas."""


def neutral_only(value: Any, info: ValidationInfo) -> Any:
    """`value` if it is a neutral value of the field `info` names, else the 400 `unsupported_parameter`."""
    accepted, described = NOT_IMPLEMENTED[str(info.field_name)]
    if value not in accepted:
        raise PydanticCustomError(
            UNSUPPORTED_PARAMETER, "not supported (accepted: {accepted})", {"accepted": described}
        )
    return value


class StreamOptions(BaseModel):
    include_usage: bool = False


Penalty = Annotated[float, Field(ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])]
TokenId = Annotated[int, Strict(), Field(ge=0, le=MAX_TOKEN_ID)]


class SamplingFields(BaseModel):
    """Fields common to /v1/completions and /v1/chat/completions. Optional fields accept null for their
    neutral value, as OpenAI's do. Infinities and NaN are refused (JSON has no spelling for them, and the
    queue's messages must be JSON)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        description=f"Sampling temperature; below {GREEDY_BELOW_TEMPERATURE:g} (0 included) decoding is greedy.",
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    user: str | None = None
    use_speculative: bool = True
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = Field(
        default=None, description="Token id (as a string) → bias added to its logit, in [-100, 100]."
    )
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: float | None = Field(
        default=None,
        gt=0.0,
        description="vLLM's: > 1 discourages tokens already in the prompt or the output.",
    )
    min_tokens: int | None = Field(
        default=None, ge=0, description="vLLM's: EOS and stop_token_ids cannot end the reply before this."
    )
    ignore_eos: bool = Field(default=False, description="vLLM's: generate past EOS.")
    stop_token_ids: list[TokenId] | None = Field(
        default=None, max_length=MAX_STOP_TOKEN_IDS, description="vLLM's: token ids that end the reply."
    )

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = None if value is None else response_format_problem(value)
        if problem is not None:
            raise PydanticCustomError("invalid_response_format", "{problem}", {"problem": problem})
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_id_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        """As OpenAI: keys are token ids written as strings, values in [-100, 100]."""
        if not value:
            return value
        if len(value) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} entries")
        for key, bias in value.items():
            if not key.isascii() or not key.isdigit() or int(key) > MAX_TOKEN_ID:
                raise ValueError(f"keys must be token ids (non-negative integers as strings), not {key!r}")
            if not LOGIT_BIAS_RANGE[0] <= bias <= LOGIT_BIAS_RANGE[1]:
                raise ValueError(f"biases must lie in [{LOGIT_BIAS_RANGE[0]:g}, {LOGIT_BIAS_RANGE[1]:g}]")
        return value

    @field_validator("stream_options")
    @classmethod
    def _options_of_a_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        """As OpenAI does: stream_options without `stream: true` is an error, not ignored."""
        if value is not None and not info.data.get("stream"):
            raise PydanticCustomError("stream_options_without_stream", "only allowed with stream: true")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(stop) > MAX_STOP_SEQUENCE_CHARS for stop in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_SEQUENCE_CHARS} characters")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprobs_asked(self) -> int | None:
        """How many top alternatives per token the client asked for (0: only the chosen token's); None: no
        logprobs."""
        return None

    def candidates_per_prompt(self) -> int:
        """How many sequences to generate per prompt (more than `n` with `best_of`)."""
        return self.n

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items())

    def tool_calling(self) -> ToolCalling | None:
        """The tool calls the reply may make; None where the reply is not read for them."""
        return None

    def wire_response_format(self) -> str | None:
        """The grammar the workers hold the reply to (engine/grammar.py), as JSON text; None for free text."""
        return self.structured_output()

    def structured_output(self) -> str | None:
        """The client's response_format as JSON text; None for free text."""
        if self.response_format is None or self.response_format.get("type") == "text":
            return None
        return json.dumps(self.response_format)


def response_format_problem(value: dict[str, Any]) -> str | None:
    """What is wrong with a response_format's shape, None when nothing is (its schema is the workers' to check)."""
    kind = value.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        return f"type must be one of {', '.join(RESPONSE_FORMAT_TYPES)}, not {kind!r}"
    if kind != "json_schema":
        return None
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        return "json_schema must be an object with a name and a schema"
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return "json_schema.name must be 1 to 64 letters, digits, underscores or dashes"
    if not isinstance(spec.get("schema"), dict):
        return "json_schema.schema must be a JSON schema (an object)"
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        return "json_schema.strict must be a boolean"
    return None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: Annotated[int, Strict()] | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts(cls, value: Any) -> Any:
        """Token-id prompts (`[1, 2]`, `[[1, 2]]`) are refused by name: the workers take prompt text."""
        if isinstance(value, list) and any(
            isinstance(item, int) or (isinstance(item, list) and item and isinstance(item[0], int))
            for item in value
        ):
            raise PydanticCustomError(UNSUPPORTED_PARAMETER, "token-id prompts are not supported: send text")
        return value

    @field_validator("prompt")
    @classmethod
    def _nonempty_prompts(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("at least one prompt is needed")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        if not all(prompts):
            raise ValueError("a prompt must not be empty")
        return value

    @field_validator("echo", "suffix")
    @classmethod
    def _not_implemented_here(cls, value: Any, info: ValidationInfo) -> Any:
        return neutral_only(value, info)

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        """As OpenAI: best_of at least n, and not streamed (the best are known only at the end)."""
        if self.best_of is None:
            return self
        if self.best_of < self.n:
            raise PydanticCustomError("best_of_below_n", "must be at least n", {"param": "best_of"})
        if self.stream and self.best_of > 1:
            raise PydanticCustomError("best_of_streamed", "cannot be streamed", {"param": "best_of"})
        return self

    def prompts(self) -> tuple[str, ...]:
        return (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt)

    def logprobs_asked(self) -> int | None:
        return self.logprobs

    def candidates_per_prompt(self) -> int:
        return max(self.n, self.best_of or 1)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    name: str
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_arguments(cls, value: str) -> str:
        json.loads(value)  # a JSONDecodeError is a ValueError: a 400 naming the field
        return value


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant message."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    """A message of the conversation. An assistant's `tool_calls` and a tool's result (`role: "tool"`, its
    `tool_call_id` accepted and not needed: one call per reply) go to the model as described in tool_calls.py."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_or_calls(self) -> ChatMessageIn:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.content is None and not self.tool_calls:
            raise ValueError("content is required (an assistant message may have tool_calls instead)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)

    def wire_content(self) -> str:
        """The message as the model reads it: its text, then each tool call as the JSON the model writes."""
        calls = [call_text(call.function.name, call.function.arguments) for call in self.tool_calls or ()]
        return "\n".join(part for part in (self.text(), *calls) if part)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=NAME_PATTERN.pattern)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Annotated[bool, Strict()] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = Field(
        default=None, description="Accepted; a reply makes at most one tool call either way."
    )
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None

    @field_validator("functions", "function_call")
    @classmethod
    def _not_implemented_here(cls, value: Any, info: ValidationInfo) -> Any:
        return neutral_only(value, info)

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if not any(message.wire_content() for message in self.messages):
            raise ValueError("the messages must not all be empty")
        if self.top_logprobs and not self.logprobs:
            raise PydanticCustomError(
                "top_logprobs_without_logprobs", "needs logprobs: true", {"param": "top_logprobs"}
            )
        self._check_tools()
        return self

    def _check_tools(self) -> None:
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) < len(names):
            raise PydanticCustomError("duplicate_tool", "the tools' names must differ", {"param": "tools"})
        choice = self.tool_choice
        if choice not in (None, "none") and not names:
            raise PydanticCustomError("tool_choice_without_tools", "needs tools", {"param": "tool_choice"})
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise PydanticCustomError(
                "unknown_tool", "names a function that is not among the tools", {"param": "tool_choice"}
            )
        if self.tool_calling() is not None and self.structured_output() is not None:
            raise PydanticCustomError(
                "response_format_with_tools",
                'cannot be combined with tools unless tool_choice is "none"',
                {"param": "response_format"},
            )

    def tool_calling(self) -> ToolCalling | None:
        """tool_choice `none` (the default without tools): None, the tools are neither shown nor called."""
        choice = self.tool_choice or ("auto" if self.tools else "none")
        if choice == "none" or not self.tools:
            return None
        functions = [tool.function for tool in self.tools]
        if isinstance(choice, NamedToolChoice):
            functions = [function for function in functions if function.name == choice.function.name]
        return ToolCalling(
            {function.name: function.parameters or NO_PARAMETERS for function in functions},
            optional=choice == "auto",
            strict=any(function.strict for function in functions),
        )

    def wire_response_format(self) -> str | None:
        calling = self.tool_calling()
        return calling.wire_format() if calling is not None else self.structured_output()

    def wire_messages(self) -> tuple[tuple[str, str], ...]:
        """The conversation as the workers take it: the tool definitions first where the model is to see them."""
        conversation = tuple((message.role, message.wire_content()) for message in self.messages)
        if self.tool_calling() is None:
            return conversation
        tools = [tool.model_dump(exclude_none=True) for tool in self.tools or ()]
        return ((TOOL_DEFINITIONS_ROLE, json.dumps(tools, ensure_ascii=False)), *conversation)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], raw: bytes) -> Body:
    """Validate a JSON request body; OpenAIError (400) for malformed JSON or invalid fields."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc) from exc


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
GENERATION_ERRORS = {
    400: "malformed JSON, invalid fields, a prompt or max_tokens too long for the model",
    401: "missing or wrong API key",
    404: "no worker serves the model",
    413: "request body over the size limit",
    429: "the queue is full or the key's rate limit is spent (see Retry-After)",
    502: "the worker ended the request without a result",
    503: "no worker is up, or the queue is unavailable",
    504: "the request's deadline passed",
}


def generation_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI of a generation route whose handler parses its own body: the body's schema (pydantic's, with its
    $defs inlined), the two reply forms and the OpenAI-style errors."""
    schema = model.model_json_schema()
    body = _inline_refs(schema, schema.pop("$defs", {}))
    errors = {
        str(status): {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for status, text in GENERATION_ERRORS.items()
    }
    reply = {
        "description": "the whole reply (JSON), or server-sent events with `stream: true`",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
    }
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": reply, **errors},
    }


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline_refs(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(value, defs) for value in node]
    return node
