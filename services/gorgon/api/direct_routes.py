"""The generation endpoints served without FastAPI's routing: POST /v1/completions and /v1/chat/completions are
the whole of the API's traffic, and their handlers need nothing from FastAPI's per-request machinery (route
matching over every route, dependency solving, the exception middleware and its send wrapper, an exit stack).

`DirectRoutes` sits inside the API's own middleware (telemetry, body limit), so these requests are measured,
traced and size-limited exactly like the others; it calls the route's endpoint itself, marks the scope with the
route (the metrics' endpoint label), and answers errors in the same OpenAI shape as the FastAPI handlers
(`errors.error_response`; other exceptions go up the middleware as they do from FastAPI's router). Any other method or path goes on to FastAPI, so a GET still answers 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gorgon.api.errors import ANSWERED_ERRORS, error_response

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """ASGI middleware: POST requests to `routes`' paths go straight to their endpoints."""

    def __init__(self, app: ASGIApp, routes: Iterable[APIRoute]) -> None:
        self.app = app
        self._routes = {route.path: route for route in routes if "POST" in route.methods}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self._routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        endpoint: Endpoint = route.endpoint
        try:
            response = await endpoint(Request(scope, receive, send))
        except ANSWERED_ERRORS as exc:
            response = error_response(exc)
        await response(scope, receive, send)
