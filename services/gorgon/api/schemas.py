"""OpenAI request bodies (what a client may send). Unknown fields are ignored, as OpenAI clients send many;
known fields are type-checked, and features gorgon does not implement are refused, never silently ignored: a
request that sets one to anything but its neutral value gets a 400 naming it (`NOT_IMPLEMENTED`)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gorgon.api.errors import UNSUPPORTED_PARAMETER, validation_error
from gorgon.core.limits import GREEDY_BELOW_TEMPERATURE, MAX_STOP_SEQUENCE_CHARS, MAX_STOP_SEQUENCES

NOT_IMPLEMENTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((1,), "1"),
    "logprobs": ((None, False), "false or null"),
    "top_logprobs": ((None, 0), "0 or null"),
    "response_format": ((None, {"type": "text"}), '{"type": "text"} or null'),
    "logit_bias": ((None, {}), "{} or null"),
    "presence_penalty": ((None, 0), "0 or null"),
    "frequency_penalty": ((None, 0), "0 or null"),
    "echo": ((False,), "false"),
    "best_of": ((None, 1), "1 or null"),
    "suffix": ((None, ""), '"" or null'),
    "tools": ((None, []), "[] or null"),
    "tool_choice": ((None, "none"), '"none" or null'),
    "functions": ((None, []), "[] or null"),
    "function_call": ((None, "none"), '"none" or null'),
}
"""Parameters gorgon does not implement: the values that ask for nothing (accepted), described for the error."""


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


class SamplingFields(BaseModel):
    """Fields common to /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        description=f"Sampling temperature; below {GREEDY_BELOW_TEMPERATURE:g} (0 included) decoding is greedy.",
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    user: str | None = None
    use_speculative: bool = True
    logprobs: Any = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator(
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
        "logit_bias",
        "presence_penalty",
        "frequency_penalty",
    )
    @classmethod
    def _not_implemented(cls, value: Any, info: ValidationInfo) -> Any:
        return neutral_only(value, info)

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


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_nonempty_prompt(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if len(prompts) != 1:
            raise ValueError("exactly one prompt is supported per request")
        if not prompts[0]:
            raise ValueError("the prompt must not be empty")
        return value

    @field_validator("echo", "best_of", "suffix")
    @classmethod
    def _not_implemented_here(cls, value: Any, info: ValidationInfo) -> Any:
        return neutral_only(value, info)

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None

    @field_validator("tools", "tool_choice", "functions", "function_call")
    @classmethod
    def _not_implemented_here(cls, value: Any, info: ValidationInfo) -> Any:
        return neutral_only(value, info)

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if not any(message.text() for message in self.messages):
            raise ValueError("the messages must not all be empty")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


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
