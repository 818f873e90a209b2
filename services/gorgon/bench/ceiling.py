"""The HTTP ceiling of this machine for `gorgon bench platform`: a FastAPI app served by plain uvicorn (uvloop,
httptools, one process; the API itself serves its generation routes past FastAPI's routing, with its own uvicorn
protocol) whose POST route answers a constant completion without Redis or a worker. The platform's throughput is
reported next to this one, measured in the same run."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

CONSTANT_REPLY = orjson.dumps(
    {
        "id": "cmpl-0",
        "object": "text_completion",
        "created": 0,
        "model": "none",
        "choices": [{"text": "", "index": 0}],
    }
)

app = FastAPI(docs_url=None, redoc_url=None)


@app.post("/v1/completions")
async def constant_completion(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(CONSTANT_REPLY, media_type="application/json")
