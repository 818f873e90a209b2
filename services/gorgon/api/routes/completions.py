"""POST /v1/completions"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gorgon.api.deps import authorize, get_state
from gorgon.api.schemas import CompletionRequest, generation_openapi, parse_body
from gorgon.api.serving import serve_generation

router = APIRouter()


@router.post("/v1/completions", openapi_extra=generation_openapi(CompletionRequest))
async def create_completion(request: Request) -> Response:
    state = get_state(request)
    await authorize(request, state)
    body = parse_body(CompletionRequest, await request.body())
    return await serve_generation(request, state, body, "completion", prompts=body.prompts())
