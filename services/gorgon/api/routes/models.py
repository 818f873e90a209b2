"""GET /v1/models and GET /v1/models/{model_id} (ids may hold a slash, as `lmsys/vicuna-7b-v1.3` does)."""

from __future__ import annotations

from fastapi import APIRouter

from gorgon.api.deps import AuthorizedDep, StateDep
from gorgon.api.errors import OpenAIError
from gorgon.api.registry import ServedModel
from gorgon.api.schemas import ERROR_SCHEMA

router = APIRouter()


def model_object(model: ServedModel) -> dict:
    """OpenAI's model object, with gorgon's context length and live worker count."""
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": "gorgon",
        "context_length": model.context_length,
        "workers": model.workers,
    }


@router.get("/v1/models", dependencies=[AuthorizedDep])
async def list_models(state: StateDep) -> dict:
    models = await state.registry.models()
    return {"object": "list", "data": [model_object(model) for model in models.values()]}


@router.get(
    "/v1/models/{model_id:path}",
    dependencies=[AuthorizedDep],
    responses={
        404: {"description": "no such model", "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    },
)
async def retrieve_model(model_id: str, state: StateDep) -> dict:
    model = (await state.registry.models()).get(model_id)
    if model is None:
        raise OpenAIError(
            404,
            f"the model {model_id!r} does not exist or no worker serves it",
            param="model",
            code="model_not_found",
        )
    return model_object(model)
