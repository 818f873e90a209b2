"""A small, real OpenAI-style SSE server on 127.0.0.1 for the load generator's tests (uvicorn in a thread).

It streams `max_tokens` deterministic tokens ("w0 ", "w1 ", ...), one per chunk, or two per chunk when the
request asks for `use_speculative`, and reports usage when `stream_options.include_usage` is set. Prompts
holding a marker misbehave on purpose: `http-429`, `stream-error`, `cut-stream`, `no-finish`, `stall`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

CHUNK_DELAY_S = 0.003
STALL_S = 5.0


@dataclass
class SseServer:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _chunk(body: dict[str, Any], text: str, finish_reason: str | None) -> dict[str, Any]:
    if "messages" in body:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}
        return {"object": "chat.completion.chunk", "choices": [choice]}
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}],
    }


def _prompt_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(message["content"] for message in body["messages"])
    return body["prompt"]


async def _events(body: dict[str, Any]) -> AsyncIterator[str]:
    prompt = _prompt_of(body)
    total = body.get("max_tokens", 16)
    per_chunk = 2 if body.get("use_speculative") else 1
    if "stall" in prompt:
        await asyncio.sleep(STALL_S)
    if "messages" in body:
        yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}) + "\n\n"
    sent = 0
    while sent < total:
        count = min(per_chunk, total - sent)
        text = "".join(f"w{sent + i} " for i in range(count))
        sent += count
        await asyncio.sleep(CHUNK_DELAY_S)
        finish_reason = "length" if sent == total and "no-finish" not in prompt else None
        yield "data: " + json.dumps(_chunk(body, text, finish_reason)) + "\n\n"
        if "stream-error" in prompt:
            yield (
                "data: "
                + json.dumps({"error": {"message": "engine failed", "type": "server_error"}})
                + "\n\n"
            )
            return
        if "cut-stream" in prompt:
            return
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": total, "total_tokens": 0}
        yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
    yield "data: [DONE]\n\n"


def build_app(server: SseServer) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "test-model", "object": "model"}]}

    async def complete(request: Request) -> Any:
        body = await request.json()
        server.bodies.append(body)
        if "http-429" in _prompt_of(body):
            error = {"message": "too many requests", "type": "rate_limit_error", "code": "rate_limited"}
            return JSONResponse({"error": error}, status_code=429)
        return StreamingResponse(_events(body), media_type="text/event-stream")

    app.post("/v1/completions")(complete)
    app.post("/v1/chat/completions")(complete)
    return app


def serve_in_thread(server: SseServer) -> Iterator[SseServer]:
    """Run the app on 127.0.0.1 (a free port) in a daemon thread until the generator is closed."""
    config = uvicorn.Config(build_app(server), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uvicorn_server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test SSE server did not start")
        time.sleep(0.01)
    port = uvicorn_server.servers[0].sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    yield server
    uvicorn_server.should_exit = True
    thread.join(timeout=10)
