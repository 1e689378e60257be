"""``GET /v1/models``: the served models, their clip geometry, labels and presets."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.gateway.deps import CatalogDep, get_client
from service.gateway.schemas import ModelList

router = APIRouter(tags=["models"])


@router.get(
    "/v1/models",
    response_model=ModelList,
    summary="List the served models",
    dependencies=[Depends(get_client)],  # a key when keys are configured; no quota
    responses={},  # documented by the app: schemas.MODELS_RESPONSES
)
async def list_models(catalog: CatalogDep) -> dict[str, object]:
    metas = await catalog.all_models()
    default = await catalog.default_name()
    return {"models": [{**m.public(), "default": m.name == default} for m in metas]}
