"""POST /v1/chat/completions"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gorgon.api.deps import authorize, get_state
from gorgon.api.schemas import ChatCompletionRequest, generation_openapi, parse_body
from gorgon.api.serving import serve_generation

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=generation_openapi(ChatCompletionRequest))
async def create_chat_completion(request: Request) -> Response:
    state = get_state(request)
    await authorize(request, state)
    body = parse_body(ChatCompletionRequest, await request.body())
    return await serve_generation(request, state, body, "chat", messages=body.wire_messages())
