"""Operations endpoints: ``/healthz`` (alive), ``/readyz`` (can serve), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from service.gateway.deps import CatalogDep, MetricsDep, SettingsDep
from service.gateway.errors import error_response
from service.gateway.metrics import CONTENT_TYPE_LATEST
from service.gateway.schemas import METRICS_RESPONSES, READYZ_RESPONSES

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The gateway process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The backend is reachable and the default model has a ready worker",
    responses=READYZ_RESPONSES,
)
async def readyz(catalog: CatalogDep, settings: SettingsDep) -> JSONResponse:
    if await catalog.ready():
        return JSONResponse({"status": "ready", "model": await catalog.default_name()})
    return error_response(
        "not_ready",
        "the model backend is not reachable or the default model has no ready worker yet; "
        "the gateway keeps probing and recovers by itself",
        retry_after=settings.retry_after_s,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=PlainTextResponse,
    responses=METRICS_RESPONSES,
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST)
