"""Typed gateway exceptions and the one table that gives each error code its HTTP status.

Every error answer has the body ``{"error": {"code": "<snake_case>", "message":
"..."}}``: ``code`` is stable for programs, ``message`` says what was wrong and
what to do. An error carries its code only: :data:`ERROR_CODES` gives each code its
status and meaning, for the answers (:func:`error_response`) and for the OpenAPI
documentation (:func:`service.gateway.schemas.error_responses`). The decoder's errors
(:mod:`service.decoder.errors`) carry codes of this table too and reach the client
through :class:`VideoRejected`, so the decoder does not depend on the gateway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.decoder.errors import VideoError

logger = logging.getLogger(__name__)

__all__ = [
    "BackendError",
    "BackendOverloaded",
    "BackendProtocolError",
    "BackendTimeout",
    "BackendUnavailable",
    "BadMultipart",
    "ClientDisconnected",
    "ConcurrencyLimited",
    "ERROR_CODES",
    "ErrorCode",
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


@dataclass(frozen=True)
class ErrorCode:
    """What one error code means over HTTP."""

    status: int
    #: what it means, for the OpenAPI documentation
    doc: str
    #: False for a code no client ever reads (it is only logged)
    answered: bool = True


#: Every error code the gateway answers with: its HTTP status and what it means. The one
#: table: the typed errors below and the decoder's carry a code only, the handlers and
#: the OpenAPI documentation read the status here. (Any other status of Starlette's own
#: HTTP errors is answered as it is, with the code ``http_error``.)
ERROR_CODES: dict[str, ErrorCode] = {
    "empty_upload": ErrorCode(400, "the upload is empty"),
    "missing_file": ErrorCode(400, "a multipart upload without a `file` field"),
    "bad_multipart": ErrorCode(400, "a malformed multipart body or boundary"),
    "bad_video": ErrorCode(
        400,
        "empty, undecodable, corrupt or text body, malformed .npy header, wrong .npy dtype/shape",
    ),
    "unauthorized": ErrorCode(
        401,
        "API keys are configured and the request presents none, or not a valid one"
        " (`Authorization: Bearer <key>` or `X-API-Key: <key>`); the same answer either way",
    ),
    "research_mode_required": ErrorCode(
        403,
        "a research-only parameter (defense, ensemble, h1, h2, seed, early_stop) sent to a"
        " production gateway",
    ),
    "research_key_required": ErrorCode(
        403, "a research-only parameter sent with a key whose role is not research"
    ),
    "client_refused": ErrorCode(
        403,
        "the query-attack watch refuses this client for a while (policy `refuse`;"
        " `Retry-After` says how long)",
    ),
    "model_not_found": ErrorCode(404, "no served model has that name"),
    "not_found": ErrorCode(404, "no route with that path"),
    "method_not_allowed": ErrorCode(405, "the route does not take that method"),
    "upload_timeout": ErrorCode(
        408, "the upload did not arrive within the upload timeout; the connection is closed"
    ),
    "upload_too_large": ErrorCode(
        413, "the upload is over the gateway's size limit; the connection is closed"
    ),
    "video_too_large": ErrorCode(413, "the upload is over the decoder's `max_bytes`"),
    "frame_too_large": ErrorCode(413, "a frame is over the decoder's `max_pixels`"),
    "too_many_frames": ErrorCode(413, "the clip needs more than the decoder's `max_frames`"),
    "decode_timeout": ErrorCode(413, "decoding took longer than `max_decode_seconds`"),
    "not_a_video": ErrorCode(415, "a still image, or media without a video stream"),
    "invalid_parameter": ErrorCode(
        422,
        "a query parameter out of range or of the wrong type. FastAPI's own validation"
        " errors are rewritten to this body (not FastAPI's `detail` list); the message"
        " names each offending parameter",
    ),
    "overloaded": ErrorCode(429, "the gateway's queue is full"),
    "backend_overloaded": ErrorCode(429, "the backend's queue is full"),
    "rate_limited": ErrorCode(429, "the key's token bucket is empty"),
    "concurrency_limited": ErrorCode(429, "the key has its most requests in progress"),
    "client_throttled": ErrorCode(429, "the query-attack watch's policy `throttle`"),
    "client_disconnected": ErrorCode(
        499, "the client closed the connection mid-upload (nginx's convention)", answered=False
    ),
    "internal_error": ErrorCode(
        500, "a fault of the gateway; the request id in the logs has the details"
    ),
    "backend_error": ErrorCode(502, "the model backend answered something the gateway cannot use"),
    "backend_unavailable": ErrorCode(
        503, "the model backend is unreachable or has no ready worker"
    ),
    "not_ready": ErrorCode(
        503, "the model backend is unreachable or the default model has no ready worker"
    ),
    "backend_timeout": ErrorCode(504, "the model backend did not answer in time"),
}
#: the codes of Starlette's own HTTP errors (routing), by their status in the table
_HTTP_EXCEPTION_CODES = {ERROR_CODES[c].status: c for c in ("not_found", "method_not_allowed")}


class GatewayError(Exception):
    """Base of the gateway's typed errors: a code (its status: :data:`ERROR_CODES`)
    and a message."""

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

    @property
    def status_code(self) -> int:
        """The HTTP status of this error's code."""
        return ERROR_CODES[self.code].status


class InvalidParameter(GatewayError):
    code = "invalid_parameter"


class ResearchModeRequired(GatewayError):
    code = "research_mode_required"


class Unauthorized(GatewayError):
    """No key, or not a valid one: one answer for both, so it says nothing of which."""

    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="shuffleguard"'}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__(
            "a valid API key is required: send it as `Authorization: Bearer <key>` or "
            "`X-API-Key: <key>`"
        )


class ResearchKeyRequired(GatewayError):
    code = "research_key_required"


class ModelNotFound(GatewayError):
    code = "model_not_found"


class EmptyUpload(GatewayError):
    code = "empty_upload"


class MissingFileField(GatewayError):
    code = "missing_file"


class UploadTooLarge(GatewayError):
    code = "upload_too_large"
    close_connection = True


class UploadTimeout(GatewayError):
    code = "upload_timeout"
    close_connection = True


class BadMultipart(GatewayError):
    code = "bad_multipart"


class VideoRejected(GatewayError):
    """The decoder refused the upload; message and code come from its ``VideoError``."""

    def __init__(self, error: VideoError) -> None:
        super().__init__(error.message)
        self.code = error.code


class ClientDisconnected(GatewayError):
    """The client went away mid-upload; 499 (nginx's convention) is only logged."""

    code = "client_disconnected"
    close_connection = True


class Overloaded(GatewayError):
    code = "overloaded"
    retryable = True


class RateLimited(GatewayError):
    """The client's token bucket is empty; ``retry_after``: seconds until it is not."""

    code = "rate_limited"
    retryable = True


class ConcurrencyLimited(GatewayError):
    code = "concurrency_limited"
    retryable = True


class ClientRefused(GatewayError):
    """The query-attack watch refuses this client for a while (policy ``refuse``)."""

    code = "client_refused"


class ClientThrottled(GatewayError):
    """The query-attack watch throttles this client (policy ``throttle``)."""

    code = "client_throttled"
    retryable = True


class BackendError(GatewayError):
    """A fault of the model backend; ``kind`` labels ``backend_errors_total``."""

    kind: str = "error"


class BackendUnavailable(BackendError):
    code, kind = "backend_unavailable", "unavailable"
    retryable = True


class BackendTimeout(BackendError):
    code, kind = "backend_timeout", "timeout"


class BackendOverloaded(BackendError):
    """The backend's own queue is full (TorchServe answers 503): tell the client to back off."""

    code, kind = "backend_overloaded", "queue_full"
    retryable = True


class BackendProtocolError(BackendError):
    """The backend answered something the gateway cannot use (a bug or a mismatch)."""

    code, kind = "backend_error", "bad_response"


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #
def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    code: str,
    message: str,
    *,
    status: int | None = None,
    retry_after: int | None = None,
    close_connection: bool = False,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error answer for ``code``, with its status from :data:`ERROR_CODES`
    unless ``status`` is given (Starlette's own HTTP errors keep theirs)."""
    status_code = ERROR_CODES[code].status if status is None else status
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
            exc.code,
            exc.message,
            retry_after=retry_after,
            close_connection=exc.close_connection,
            headers=exc.headers,
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response("invalid_parameter", _format_validation_error(exc))

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_EXCEPTION_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if code == "not_found":
            detail = f"no route {request.method} {request.url.path}; see GET /docs"
        response = error_response(code, detail, status=exc.status_code)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            "internal_error", "internal error; the request id in the logs has the details"
        )

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_unexpected)
