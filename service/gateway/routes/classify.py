"""``POST /v1/classify``: the defended classification of one uploaded clip."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from service.gateway.backend import forwardable_headers
from service.gateway.deps import ClientDep, PipelineDep, QuotasDep, SettingsDep
from service.gateway.errors import ResearchKeyRequired, ResearchModeRequired
from service.gateway.middleware import CLASSIFY_PATH, request_info
from service.gateway.schemas import ClassifyRequest, classify_body
from service.gateway.upload import read_upload

router = APIRouter(tags=["classify"])

#: parameters that weaken or reveal the defense: research mode only
RESEARCH_PARAMS = tuple(name for name in ClassifyRequest.model_fields if name != "model")

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The clip: a video file (mp4, webm, mkv, avi, mov, animated GIF) or an "
        ".npy uint8 [T, H, W, 3], as the multipart field `file` or as the raw body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def enforce_parameter_policy(request: Request, settings: SettingsDep, client: ClientDep) -> None:
    """403 for the defense's knobs outside research mode, or from a key without the
    research role (runs after authentication, before validation)."""
    given = [name for name in RESEARCH_PARAMS if name in request.query_params]
    if not given:
        return
    if not settings.research_mode:
        raise ResearchModeRequired(
            f"parameter(s) {', '.join(given)} need research mode (SHUFFLEGUARD_RESEARCH_MODE=1 "
            "on the gateway); in production only `model` may be set"
        )
    if not client.may_research:
        raise ResearchKeyRequired(
            f"parameter(s) {', '.join(given)} need a key with the research role; key "
            f"{client.name!r} has the role {client.role!r}"
        )


@router.post(
    CLASSIFY_PATH,
    summary="Classify a clip with the temporal-shuffling ensemble",
    dependencies=[Depends(enforce_parameter_policy)],
    response_model=None,
    responses={},  # all documented by the app: schemas.CLASSIFY_RESPONSES
    openapi_extra=_BODY_DOC,
)
async def classify(
    request: Request,
    query: Annotated[ClassifyRequest, Query()],
    settings: SettingsDep,
    pipeline: PipelineDep,
    client: ClientDep,
    quotas: QuotasDep,
) -> JSONResponse:
    """HTTP -> one typed request -> the client's quota -> the pipeline -> the verdict as
    the response model."""
    async with quotas.admit(client):
        verdict = await pipeline.run(
            query,
            receive=partial(
                read_upload,
                request,
                max_bytes=settings.max_upload_bytes,
                timeout_s=settings.upload_timeout_s,
            ),
            info=request_info(request.scope),
            headers=forwardable_headers(request.headers),
            client=client.name,
        )
    return JSONResponse(classify_body(verdict, research=settings.research_mode))
