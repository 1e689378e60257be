"""``POST /v1/classify``: the defended classification of one uploaded clip."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from service.config import MAX_ENSEMBLE, MODEL_NAME_PATTERN
from service.gateway.backend import forwardable_headers
from service.gateway.deps import (
    AdmissionDep,
    CatalogDep,
    MetricsDep,
    PipelineDep,
    SettingsDep,
)
from service.gateway.errors import BackendError, ModelNotFound, ResearchModeRequired
from service.gateway.metrics import GatewayMetrics
from service.gateway.middleware import CLASSIFY_PATH, RequestInfo, request_info
from service.gateway.pipeline import MAX_SEED, ClassifyParams, Verdict
from service.gateway.schemas import classify_body
from service.gateway.upload import read_upload

router = APIRouter(tags=["classify"])

#: parameters that weaken or reveal the defense: research mode only
RESEARCH_PARAMS = ("defense", "ensemble", "h1", "h2", "seed")

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
    settings: SettingsDep,
    metrics: MetricsDep,
    admission: AdmissionDep,
    pipeline: PipelineDep,
    catalog: CatalogDep,
    model: Annotated[
        str | None,
        Query(pattern=MODEL_NAME_PATTERN, description="served model (default: the default model)"),
    ] = None,
    ensemble: Annotated[
        int | None,
        Query(ge=1, le=MAX_ENSEMBLE, description="shuffled copies N (research mode)"),
    ] = None,
    h1: Annotated[int | None, Query(ge=0, description="shuffle window (research mode)")] = None,
    h2: Annotated[
        int | None, Query(ge=1, description="group length, <= clip_len (research mode)")
    ] = None,
    seed: Annotated[
        int | None, Query(ge=0, le=MAX_SEED, description="shuffle seed (research mode)")
    ] = None,
    defense: Annotated[bool, Query(description="false: undefended (research mode)")] = True,
) -> JSONResponse:
    info = request_info(request.scope)
    params = ClassifyParams(
        model=model, ensemble=ensemble, h1=h1, h2=h2, seed=seed, defense=defense
    )
    forward = forwardable_headers(request.headers)
    forward["x-request-id"] = info.request_id
    with metrics.inflight.track_inprogress():
        async with admission.admit():
            upload = await read_upload(
                request,
                max_bytes=settings.max_upload_bytes,
                timeout_s=settings.upload_timeout_s,
            )
            try:
                meta = await catalog.resolve(params.model)
                info.model = meta.name
                pipeline.effective(params, meta)  # bad h2 -> 422 before queueing
                async with admission.run_slot():
                    verdict = await pipeline.classify(upload, params, meta=meta, headers=forward)
            except ModelNotFound:
                if info.model is not None:  # it was served a moment ago: re-list models
                    catalog.invalidate(info.model)
                    info.model = None
                raise
            except BackendError as exc:
                metrics.backend_errors.labels(kind=exc.kind).inc()
                raise
    return _respond(verdict, info, metrics, research=settings.research_mode)


def _respond(
    verdict: Verdict, info: RequestInfo, metrics: GatewayMetrics, *, research: bool
) -> JSONResponse:
    verdict.timings_ms["total"] = (time.perf_counter() - info.started) * 1e3
    metrics.observe_stages(verdict.timings_ms)
    if verdict.ensemble:
        metrics.vote_agreement.observe(verdict.confidence)
        if verdict.suspected_adversarial:
            metrics.suspected_adversarial.labels(model=verdict.model).inc()
    # The log is the operator's: it keeps the flag and the vote even in production.
    info.fields.update(
        label=verdict.label,
        undefended_label=verdict.undefended_label,
        suspected_adversarial=verdict.suspected_adversarial,
        confidence=round(verdict.confidence, 4),
        ensemble=verdict.ensemble,
        h1=verdict.h1,
        h2=verdict.h2,
        seed=verdict.seed,
        timings_ms={k: round(v, 2) for k, v in verdict.timings_ms.items()},
    )
    return JSONResponse(classify_body(verdict, request_id=info.request_id, research=research))
