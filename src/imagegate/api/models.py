"""GET /v1/models and /v1/models/{id}: the catalog with each model's capabilities."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from imagegate.api.auth import Principal, require_principal
from imagegate.catalog import Model
from imagegate.errors import ModelNotFound

router = APIRouter()


def _model_object(model: Model) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
        "description": model.description,
        "capabilities": model.capabilities(),
    }


@router.get("/v1/models")
async def list_models(request: Request, principal: Principal = Depends(require_principal)) -> dict[str, Any]:
    return {"object": "list", "data": [_model_object(m) for m in request.app.state.channels.catalog]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, principal: Principal = Depends(require_principal)) -> dict[str, Any]:
    model = request.app.state.channels.catalog.get(model_id)
    if model is None:
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
    return _model_object(model)
