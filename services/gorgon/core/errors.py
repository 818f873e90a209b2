"""Errors a user can cause. The CLI prints them as one line; the API maps them to OpenAI-style 4xx JSON."""

from __future__ import annotations


class GorgonError(Exception):
    """Something the user asked for cannot be done; the message says what and how to fix it."""

    code: str = "invalid_request_error"
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code


class ConfigurationError(GorgonError):
    """A setting, flag or file is wrong or missing."""

    code = "configuration_error"


class ContextOverflowError(GorgonError):
    """The prompt plus max_tokens does not fit the model's context window."""

    code = "context_length_exceeded"
