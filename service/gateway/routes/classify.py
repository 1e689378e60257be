"""``POST /v1/classify``: the defended classification of one uploaded clip."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from service.gateway.backend import forwardable_headers
from service.gateway.deps import PipelineDep, SettingsDep
from service.gateway.errors import ResearchModeRequired
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


def client_name(request: Request) -> str:
    """Whose query history a request joins: the authenticated client's name that the
    key check puts on ``request.state.client``, or "anonymous" when the API is open."""
    name = getattr(request.state, "client", None)
    return name if isinstance(name, str) and name else "anonymous"


def enforce_parameter_policy(request: Request, settings: SettingsDep) -> None:
    """403 for the defense's knobs outside research mode (runs before validation)."""
    if settings.research_mode:
        return
    given = [name for name in RESEARCH_PARAMS if name in request.query_params]
    if given:
        raise ResearchModeRequired(
            f"parameter(s) {', '.join(given)} need research mode (SHUFFLEGUARD_RESEARCH_MODE=1 "
            "on the gateway); in production only `model` may be set"
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
) -> JSONResponse:
    """HTTP -> one typed request -> the pipeline -> the verdict as the response model."""
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
        client=client_name(request),
    )
    return JSONResponse(classify_body(verdict, research=settings.research_mode))
