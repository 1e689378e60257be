"""The app factory: ``create_app(settings)``.

Each app owns its settings, backend client, caches, admission gates and a
private metrics registry, so several apps (a production and a research
gateway, say) can live in one process. The backend client is opened in the
app's lifespan and closed with it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import service
from service.config import Settings
from service.gateway.admission import Admission
from service.gateway.backend import Backend, TorchServeBackend
from service.gateway.catalog import ModelCatalog
from service.gateway.deps import GatewayState
from service.gateway.errors import install_error_handlers
from service.gateway.keys import KeyStore
from service.gateway.metrics import GatewayMetrics
from service.gateway.middleware import RequestContextMiddleware
from service.gateway.pipeline import Pipeline
from service.gateway.pool import BackendPool, PoolCollector
from service.gateway.quotas import Quotas
from service.gateway.routes import classify, health, models
from service.gateway.schemas import (
    CLASSIFY_RESPONSES,
    KEYED_OPERATIONS,
    MODELS_RESPONSES,
    SECURITY_SCHEMES,
)

logger = logging.getLogger(__name__)

__all__ = ["create_app", "create_app_from_env", "make_backend"]


def make_backend(settings: Settings) -> Backend:
    """The backend ``settings`` describe: one server, or a :class:`BackendPool` of several."""
    endpoints = settings.backends
    pooled = len(endpoints) > 1
    members: list[Backend] = []
    for endpoint in endpoints:
        common: dict[str, Any] = {
            "timeout_s": settings.backend_timeout_s,
            "connect_timeout_s": settings.backend_connect_timeout_s,
            # in a pool a refused connection fails over at once instead of backing off
            "connect_retries": 0 if pooled else settings.backend_connect_retries,
            "max_connections": settings.backend_max_connections,
        }
        if settings.backend_kind == "oip":
            from service.gateway.oip import OIPBackend

            members.append(OIPBackend(endpoint.url, **common))
        else:
            members.append(TorchServeBackend(endpoint.url, endpoint.management_url, **common))
    if not pooled:
        return members[0]
    return BackendPool(
        members,
        [e.url for e in endpoints],
        probe_interval_s=settings.backend_probe_interval_s,
    )


def create_app(settings: Settings | None = None, *, backend: Backend | None = None) -> FastAPI:
    """A gateway app for ``settings`` (default: from the environment).

    ``backend`` replaces the TorchServe client (another model server); the app
    closes whichever backend it uses when it shuts down. An unusable key file
    (``api_keys_file``) raises :class:`~service.gateway.keys.KeyFileError` here.
    """
    settings = settings or Settings()
    metrics = GatewayMetrics()
    keys = KeyStore(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = backend or make_backend(settings)
        collector = PoolCollector(client) if isinstance(client, BackendPool) else None
        if collector is not None:
            metrics.registry.register(collector)
        app.state.gateway = gateway_state(settings, client, metrics, keys)
        log_access_control(keys)
        log_start_up(settings)
        try:
            yield
        finally:
            if collector is not None:
                metrics.registry.unregister(collector)
            await client.aclose()

    app = FastAPI(
        title="ShuffleGuard gateway",
        version=service.__version__,
        description="Temporal-shuffling defense proxy for video action recognition "
        "(Hwang et al.). Production mode answers labels only; research mode "
        "(SHUFFLEGUARD_RESEARCH_MODE=1) opens every parameter and field.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    # The routes' responses are documented in one place (schemas.py); the router-level
    # entries fill in what a route leaves out.
    app.include_router(classify.router, responses=CLASSIFY_RESPONSES)
    app.include_router(models.router, responses=MODELS_RESPONSES)
    app.include_router(health.router)
    if keys.enabled:
        document_security(app)
    return app


def gateway_state(
    settings: Settings, client: Backend, metrics: GatewayMetrics, keys: KeyStore
) -> GatewayState:
    """What the routes share: the catalog, admission, pipeline and quotas over ``client``."""
    catalog = ModelCatalog(
        client,
        default_model=settings.default_model,
        ttl_s=settings.metadata_ttl_s,
        readiness_ttl_s=settings.readiness_ttl_s,
    )
    admission = Admission(
        settings.max_inflight,
        settings.max_queue,
        queue_timeout_s=settings.queue_timeout_s,
        retry_after_s=settings.retry_after_s,
    )
    return GatewayState(
        settings=settings,
        backend=client,
        catalog=catalog,
        metrics=metrics,
        admission=admission,
        pipeline=Pipeline(settings, client, catalog, metrics=metrics, admission=admission),
        keys=keys,
        quotas=Quotas(metrics),
    )


def log_start_up(settings: Settings) -> None:
    """Once at start-up: the backend and the serving settings."""
    logger.info(
        "gateway up: %s backend %s (management %s), default model %s, %s mode, "
        "max_inflight=%d max_queue=%d, shuffle_mode=%s, early_stop=%s",
        settings.backend_kind,
        settings.backend_url,
        settings.backend_management_url,
        settings.default_model,
        "RESEARCH" if settings.research_mode else "production",
        settings.max_inflight,
        settings.max_queue,
        settings.shuffle_mode,
        settings.early_stop,
    )


def log_access_control(keys: KeyStore) -> None:
    """Once at start-up: who may call the API."""
    if keys.enabled:
        logger.info(
            "API keys from %s: %d keys, names %s; /v1/classify and /v1/models need one",
            keys.path,
            len(keys.entries),
            keys.names,
        )
    elif keys.path is not None:
        logger.warning(
            "the API is OPEN: the key file %s lists no keys, so anyone reaching this port may "
            "classify (restart with keys in the file to require them)",
            keys.path,
        )
    else:
        logger.warning(
            "the API is OPEN: no key file (SHUFFLEGUARD_API_KEYS_FILE), so anyone reaching "
            "this port may classify; see docs/serving.md, API keys"
        )


def document_security(app: FastAPI) -> None:
    """Declare the key schemes in the OpenAPI document and require one on the keyed
    operations (only when keys are configured, so an open gateway's document is true)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for path, method in KEYED_OPERATIONS:
                schema["paths"][path][method]["security"] = [{"bearer": []}, {"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.gateway.app:create_app_from_env`` (workers > 1)."""
    return create_app(Settings())
