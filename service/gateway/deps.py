"""What routes share, as typed ``Annotated[..., Depends(...)]`` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.gateway.admission import Admission
from service.gateway.backend import Backend
from service.gateway.catalog import ModelCatalog
from service.gateway.errors import Unauthorized
from service.gateway.keys import Client, KeyStore
from service.gateway.metrics import GatewayMetrics
from service.gateway.middleware import request_info
from service.gateway.pipeline import Pipeline
from service.gateway.quotas import Quotas

__all__ = [
    "AdmissionDep",
    "BackendDep",
    "CatalogDep",
    "ClientDep",
    "GatewayState",
    "MetricsDep",
    "PipelineDep",
    "QuotasDep",
    "SettingsDep",
    "get_client",
    "get_state",
]


@dataclass
class GatewayState:
    """Everything one app instance owns (built in its lifespan, closed after)."""

    settings: Settings
    backend: Backend
    catalog: ModelCatalog
    metrics: GatewayMetrics
    admission: Admission
    pipeline: Pipeline
    keys: KeyStore
    quotas: Quotas


def get_state(request: Request) -> GatewayState:
    state = getattr(request.app.state, "gateway", None)
    if state is None:  # the app is used without running its lifespan
        raise RuntimeError("gateway state missing: run the app under a server (lifespan)")
    return state  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return get_state(request).settings


def get_backend(request: Request) -> Backend:
    return get_state(request).backend


def get_catalog(request: Request) -> ModelCatalog:
    return get_state(request).catalog


def get_metrics(request: Request) -> GatewayMetrics:
    return get_state(request).metrics


def get_admission(request: Request) -> Admission:
    return get_state(request).admission


def get_pipeline(request: Request) -> Pipeline:
    return get_state(request).pipeline


def get_quotas(request: Request) -> Quotas:
    return get_state(request).quotas


def get_client(request: Request) -> Client:
    """Who is asking (401 when keys are configured and none valid is presented); kept on
    ``request.state.client`` and the request's log record for what runs later."""
    client = get_state(request).keys.authenticate(request.headers)
    if client is None:
        raise Unauthorized()
    request.state.client = client
    request_info(request.scope).client = client
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
BackendDep = Annotated[Backend, Depends(get_backend)]
CatalogDep = Annotated[ModelCatalog, Depends(get_catalog)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
QuotasDep = Annotated[Quotas, Depends(get_quotas)]
ClientDep = Annotated[Client, Depends(get_client)]
