"""Per-request context: request id, the access log line and ``requests_total``.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which buffers
and re-wraps the request stream) so uploads still stream through untouched.
It sees every response status, including errors raised before the route ran
(422 from validation, 403 from the parameter policy), so every
``/v1/classify`` request is counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.keys import Client
from service.gateway.logs import log_access, sanitize_request_id

__all__ = ["CLASSIFY_PATH", "RequestContextMiddleware", "RequestInfo", "request_info"]

CLASSIFY_PATH = "/v1/classify"
SCOPE_KEY = "shuffleguard"
_QUIET_PATHS = {"/healthz", "/readyz", "/metrics"}


@dataclass
class RequestInfo:
    """Filled in as a request goes through; read back for the log line and metrics."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    #: who is asking (set by the authentication dependency; None before or without it)
    client: Client | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def request_info(scope: Scope) -> RequestInfo:
    info = scope.get(SCOPE_KEY)
    if not isinstance(info, RequestInfo):  # outside the middleware (unit tests)
        info = RequestInfo(request_id=sanitize_request_id(None))
        scope[SCOPE_KEY] = info
    return info


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        info = RequestInfo(request_id=sanitize_request_id(headers.get("x-request-id")))
        scope[SCOPE_KEY] = info
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                raw = list(message.get("headers", []))
                raw.append((b"x-request-id", info.request_id.encode("latin-1")))
                message = {**message, "headers": raw}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, info, status)

    def _record(self, scope: Scope, info: RequestInfo, status: int) -> None:
        path = scope.get("path", "")
        duration_ms = (time.perf_counter() - info.started) * 1e3
        fields: dict[str, Any] = {
            "request_id": info.request_id,
            "method": scope.get("method"),
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 2),
        }
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        if info.client is not None:
            fields["client_name"] = info.client.name
        if path == CLASSIFY_PATH:
            model = info.model or self._model_label(scope)
            fields["model"] = model
            fields.update(info.fields)
            gateway = getattr(scope["app"].state, "gateway", None) if "app" in scope else None
            if gateway is not None:
                gateway.metrics.requests_total.labels(model=model, status=str(status)).inc()
                name = info.client.name if info.client is not None else "unauthenticated"
                gateway.metrics.client_requests.labels(client=name, status=str(status)).inc()
        log_access(fields, level=logging.DEBUG if path in _QUIET_PATHS else logging.INFO)

    @staticmethod
    def _model_label(scope: Scope) -> str:
        """The model label of a request refused before its model was resolved.

        Only names the gateway has seen served become label values; anything else
        is ``unknown``, so clients cannot grow the metric's label set.
        """
        gateway = getattr(scope["app"].state, "gateway", None) if "app" in scope else None
        if gateway is None:
            return "unknown"
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        requested = (query.get("model") or [None])[0]
        if not requested:
            return str(gateway.catalog.cached_default_name())
        return requested if gateway.catalog.is_known(requested) else "unknown"
