"""DirectRoutes, the generation endpoints' entry past FastAPI: errors it answers, errors it leaves to the
middleware outside, and requests it hands on."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gorgon.api.direct_routes import DirectRoutes
from gorgon.api.errors import OpenAIError


class PassedError(Exception):
    """Stands for an error a middleware outside answers itself (the body limit's)."""


router = APIRouter()


@router.post("/ok")
async def ok(request: Request) -> Response:
    return JSONResponse({"route": request.scope["route"].path})


@router.post("/refused")
async def refused(_: Request) -> Response:
    raise OpenAIError(429, "the queue is full", type_="rate_limit_error", code="queue_full")


@router.post("/broken")
async def broken(_: Request) -> Response:
    raise RuntimeError("a bug")


@router.post("/passed")
async def passed(_: Request) -> Response:
    raise PassedError


async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"fallback": scope["method"]}, status_code=405)(scope, receive, send)


def client() -> httpx.AsyncClient:
    app = DirectRoutes(fallback, [route for route in router.routes], passed=(PassedError,))  # type: ignore[misc]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def test_a_route_is_served_and_marked_in_the_scope() -> None:
    async with client() as api:
        reply = await api.post("/ok")
    assert (reply.status_code, reply.json()) == (200, {"route": "/ok"})


async def test_errors_are_answered_in_openai_shape_an_unexpected_one_as_500() -> None:
    async with client() as api:
        refused_reply, broken_reply = await api.post("/refused"), await api.post("/broken")
    assert refused_reply.status_code == 429 and refused_reply.json()["error"]["code"] == "queue_full"
    assert broken_reply.status_code == 500
    assert broken_reply.json()["error"] == {
        "message": "internal error",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }


async def test_passed_errors_go_up_and_other_methods_go_on() -> None:
    async with client() as api:
        with pytest.raises(PassedError):
            await api.post("/passed")
        reply = await api.get("/ok")
    assert (reply.status_code, reply.json()) == (405, {"fallback": "GET"})
