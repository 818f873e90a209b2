"""GET /v1/models"""

from __future__ import annotations

from fastapi import APIRouter

from gorgon.api.deps import AuthorizedDep, StateDep

router = APIRouter()


@router.get("/v1/models", dependencies=[AuthorizedDep])
async def list_models(state: StateDep) -> dict:
    models = await state.registry.models()
    return {
        "object": "list",
        "data": [
            {
                "id": model.name,
                "object": "model",
                "created": 0,
                "owned_by": "gorgon",
                "context_length": model.context_length,
                "workers": model.workers,
            }
            for model in models.values()
        ],
    }
