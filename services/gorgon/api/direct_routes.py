"""The generation endpoints served from the application's entry: POST /v1/completions and /v1/chat/completions
are the whole of the API's traffic, and their handlers need nothing from FastAPI's per-request machinery (its
outer middleware — server errors, exception telemetry, body limit — route matching over every route,
dependency solving, the exception middleware and its send wrapper, an exit stack), each layer of which also
wraps every send of a stream.

`GorgonApp.__call__` (api/app.py) hands these requests to a stack of the API's own middleware (telemetry, body
limit) around `DirectRoutes`, so they are measured, traced and size-limited exactly like the others; it calls
the route's endpoint itself, marks the scope with the route (the metrics' endpoint label), and answers errors in
the same OpenAI shape as the FastAPI handlers (`errors.error_response`), an unexpected one with a 500, as
FastAPI's outermost handler does for the other routes. Any other method or path goes to FastAPI, so a GET still
answers 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gorgon.api.errors import error_response

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """ASGI app: POST requests to `routes`' paths go straight to their endpoints, anything else to `app`.
    Exceptions of the `passed` types go up to the middleware outside (the body limit's own)."""

    def __init__(
        self, app: ASGIApp, routes: Iterable[APIRoute], passed: tuple[type[Exception], ...] = ()
    ) -> None:
        self.app = app
        self._routes = {route.path: route for route in routes if route.methods and "POST" in route.methods}
        self._passed = passed

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(self._routes)

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
        except self._passed:
            raise
        except Exception as exc:  # these routes' outermost handler: anything unanswered is a 500
            response = error_response(exc)
        await response(scope, receive, send)
