"""Typed gateway exceptions and the one place that maps them to HTTP.

Every error answer has the body ``{"error": {"code": "<snake_case>", "message":
"..."}}``: ``code`` is stable for programs, ``message`` says what was wrong and
what to do. Exceptions from :mod:`service.video` (``VideoError`` and
subclasses) already carry ``status_code`` and ``code`` and are mapped the same
way (:class:`VideoRejected`), so the decoder does not depend on the gateway.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

__all__ = [
    "BackendError",
    "BackendOverloaded",
    "BackendProtocolError",
    "BackendTimeout",
    "BackendUnavailable",
    "ClientDisconnected",
    "ConcurrencyLimited",
    "ClientRefused",
    "ClientThrottled",
    "EmptyUpload",
    "GatewayError",
    "InvalidParameter",
    "MissingFileField",
    "ModelNotFound",
    "Overloaded",
    "RateLimited",
    "ResearchKeyRequired",
    "ResearchModeRequired",
    "Unauthorized",
    "UploadTimeout",
    "UploadTooLarge",
    "VideoRejected",
    "error_body",
    "error_response",
    "install_error_handlers",
]


class GatewayError(Exception):
    """Base of the gateway's typed errors: an HTTP status, a code and a message."""

    status_code: int = 500
    code: str = "internal_error"
    #: answer with a Retry-After header (the app's ``retry_after_s`` unless ``retry_after``)
    retryable: bool = False
    #: seconds for the Retry-After header, when set explicitly
    retry_after: int | None = None
    #: close the client connection after answering (the request body may be unread)
    close_connection: bool = False
    #: extra response headers
    headers: dict[str, str] = {}  # noqa: RUF012 - read-only class default

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidParameter(GatewayError):
    status_code, code = 422, "invalid_parameter"


class ResearchModeRequired(GatewayError):
    status_code, code = 403, "research_mode_required"


class Unauthorized(GatewayError):
    """No key, or not a valid one: one answer for both, so it says nothing of which."""

    status_code, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="shuffleguard"'}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__(
            "a valid API key is required: send it as `Authorization: Bearer <key>` or "
            "`X-API-Key: <key>`"
        )


class ResearchKeyRequired(GatewayError):
    status_code, code = 403, "research_key_required"


class ModelNotFound(GatewayError):
    status_code, code = 404, "model_not_found"


class EmptyUpload(GatewayError):
    status_code, code = 400, "empty_upload"


class MissingFileField(GatewayError):
    status_code, code = 400, "missing_file"


class UploadTooLarge(GatewayError):
    status_code, code = 413, "upload_too_large"
    close_connection = True


class UploadTimeout(GatewayError):
    status_code, code = 408, "upload_timeout"
    close_connection = True


class VideoRejected(GatewayError):
    """The decoder refused the upload; status and code come from its ``VideoError``."""

    def __init__(self, message: str, *, status_code: int, code: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class ClientDisconnected(GatewayError):
    """The client went away mid-upload; 499 (nginx's convention) is only logged."""

    status_code, code = 499, "client_disconnected"
    close_connection = True


class Overloaded(GatewayError):
    status_code, code = 429, "overloaded"
    retryable = True


class RateLimited(GatewayError):
    """The client's token bucket is empty; ``retry_after``: seconds until it is not."""

    status_code, code = 429, "rate_limited"
    retryable = True


class ConcurrencyLimited(GatewayError):
    status_code, code = 429, "concurrency_limited"
    retryable = True


class ClientRefused(GatewayError):
    """The query-attack watch refuses this client for a while (policy ``refuse``)."""

    status_code, code = 403, "client_refused"


class ClientThrottled(GatewayError):
    """The query-attack watch throttles this client (policy ``throttle``)."""

    status_code, code = 429, "client_throttled"
    retryable = True


class BackendError(GatewayError):
    """A fault of the model backend; ``kind`` labels ``backend_errors_total``."""

    kind: str = "error"


class BackendUnavailable(BackendError):
    status_code, code, kind = 503, "backend_unavailable", "unavailable"
    retryable = True


class BackendTimeout(BackendError):
    status_code, code, kind = 504, "backend_timeout", "timeout"


class BackendOverloaded(BackendError):
    """The backend's own queue is full (TorchServe answers 503): tell the client to back off."""

    status_code, code, kind = 429, "backend_overloaded", "queue_full"
    retryable = True


class BackendProtocolError(BackendError):
    """The backend answered something the gateway cannot use (a bug or a mismatch)."""

    status_code, code, kind = 502, "backend_error", "bad_response"


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #
def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    retry_after: int | None = None,
    close_connection: bool = False,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(int(retry_after))
    if close_connection:
        headers["Connection"] = "close"
    return JSONResponse(error_body(code, message), status_code=status_code, headers=headers)


def _format_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "body", "path", "header")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) + " (see GET /docs for the allowed ranges)"


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the app can raise to the JSON error body."""

    async def on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        retry_after = exc.retry_after
        if retry_after is None and exc.retryable:
            gateway = getattr(request.app.state, "gateway", None)
            retry_after = gateway.settings.retry_after_s if gateway is not None else 1
        return error_response(
            exc.status_code,
            exc.code,
            exc.message,
            retry_after=retry_after,
            close_connection=exc.close_connection,
            headers=exc.headers,
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "invalid_parameter", _format_validation_error(exc))

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}; see GET /docs"
        response = error_response(exc.status_code, code, detail)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal_error", "internal error; the request id in the logs has the details"
        )

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_unexpected)
