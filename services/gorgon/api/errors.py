"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, for everything the API answers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gorgon.core.errors import GorgonError
from gorgon.core.protocol import WireError

log = logging.getLogger(__name__)

UNSUPPORTED_PARAMETER = "unsupported_parameter"
"""The code (and pydantic error type) of a parameter gorgon does not implement, set to a value that asks for it."""


class OpenAIError(Exception):
    """An error answered to the client with `status` (and optional extra headers, e.g. Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    @classmethod
    def from_wire(cls, error: WireError) -> OpenAIError:
        return cls(error.status, error.message, type_=error.type, code=error.code, param=error.param)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.body()),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )


def _field_path(location: Sequence[Any]) -> str | None:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError | ValidationError) -> OpenAIError:
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": (), "type": ""}
    if first.get("type") == "json_invalid":
        return OpenAIError(400, "the request body is not valid JSON", code="invalid_json")
    # a check across fields (a model validator) names its parameter in the error's context
    context = first.get("ctx")
    named = context.get("param") if isinstance(context, dict) else None
    param = str(named) if named else _field_path(first.get("loc", ()))
    message = str(first.get("msg", "invalid request"))
    if param:
        message = f"{param}: {message}"
    code = UNSUPPORTED_PARAMETER if first.get("type") == UNSUPPORTED_PARAMETER else "invalid_value"
    return OpenAIError(400, message, param=param, code=code)


_STATUS_TYPES = {401: "authentication_error", 404: "invalid_request_error", 405: "invalid_request_error"}


def error_response(exc: Exception) -> Response:
    """The OpenAI-shaped answer to an exception raised while serving a request (before its response started)."""
    if isinstance(exc, OpenAIError):
        return exc.response()
    if isinstance(exc, RequestValidationError):
        return validation_error(exc).response()
    if isinstance(exc, GorgonError):
        return OpenAIError(400, str(exc), code=exc.code, param=exc.param).response()
    if isinstance(exc, RedisError):
        log.warning("Redis error while serving a request: %s", exc)
        return OpenAIError(
            503, "the queue is unavailable; retry shortly", type_="server_error", code="redis_unavailable"
        ).response()
    if isinstance(exc, StarletteHTTPException):
        type_ = _STATUS_TYPES.get(exc.status_code, "invalid_request_error")
        return OpenAIError(exc.status_code, str(exc.detail), type_=type_).response()
    log.exception("unexpected error while serving a request", exc_info=exc)
    return OpenAIError(500, "internal error", type_="server_error", code="internal_error").response()


ANSWERED_ERRORS: tuple[type[Exception], ...] = (
    OpenAIError,
    RequestValidationError,
    GorgonError,
    RedisError,
    StarletteHTTPException,
)
"""Answered where they are raised; anything else goes up through the middleware (whose own answers, such as
the body limit's 413, come first) to the outermost handler, which answers 500."""


def install_error_handlers(app: FastAPI) -> None:
    async def _handle(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    for error_class in (*ANSWERED_ERRORS, Exception):
        app.add_exception_handler(error_class, _handle)
