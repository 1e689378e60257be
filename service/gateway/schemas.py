"""Response bodies of the HTTP API (SPEC §4), for validation and ``/docs``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.config import MAX_ENSEMBLE, MODEL_NAME_PATTERN

#: seeds are drawn from, and accepted in, [0, MAX_SEED]
MAX_SEED = 2**63 - 1


class ClassifyRequest(BaseModel):
    """The query of ``POST /v1/classify``, validated once here and carried under the
    same names to the backend. None means "the model's preset" (or a drawn seed, or
    the server's early-stop setting). Everything but ``model`` is research mode only."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        description="served model (default: the default model)",
    )
    ensemble: int | None = Field(
        default=None, ge=1, le=MAX_ENSEMBLE, description="shuffled copies N (research mode)"
    )
    h1: int | None = Field(default=None, ge=0, description="shuffle window (research mode)")
    h2: int | None = Field(
        default=None, ge=1, description="group length, <= clip_len (research mode)"
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="shuffle seed (research mode)"
    )
    defense: bool = Field(default=True, description="false: undefended (research mode)")
    early_stop: bool | None = Field(
        default=None,
        description="false: classify all N copies even when the vote is decided earlier "
        "(research mode; default: the server's setting, on)",
    )


class Timings(BaseModel):
    decode: float = Field(description="ms decoding the upload into a clip")
    shuffle: float = Field(
        description="ms drawing the shuffles' frame indices (and, in copy mode, gathering the "
        "copies on the gateway)"
    )
    backend: float = Field(description="ms in the model backend (all rounds)")
    vote: float = Field(description="ms voting (all rounds)")
    total: float = Field(description="ms from request arrival to the answer")


class ClassifyResponse(BaseModel):
    """Production answer: the label only (no oracle for attackers)."""

    model_config = ConfigDict(from_attributes=True)

    label: str = Field(description="the ensemble's majority vote")
    label_index: int
    model: str
    request_id: str
    timings_ms: Timings


class ResearchClassifyResponse(ClassifyResponse):
    """Research-mode answer (``SHUFFLEGUARD_RESEARCH_MODE=1``): every field."""

    confidence: float = Field(
        description="winning vote share among the votes cast (defense=false: softmax "
        "probability of the label)"
    )
    votes: dict[str, int] = Field(
        description="label -> votes, summing to votes_cast (= ensemble without early stop)"
    )
    ensemble: int = Field(description="shuffled copies N requested (0 with defense=false)")
    votes_cast: int = Field(
        description="shuffled copies classified: fewer than ensemble when early stopping "
        "found the vote decided; label and suspected_adversarial equal the full vote's"
    )
    h1: int | None
    h2: int | None
    seed: int = Field(description="seed of the shuffles; send it back to reproduce")
    undefended_label: str = Field(description="label of the unshuffled clip")
    suspected_adversarial: bool


def classify_body(verdict: Any, *, research: bool) -> dict[str, Any]:
    """The JSON body for a verdict (any object with the response's attributes):
    the production model, or in research mode the full one."""
    model = ResearchClassifyResponse if research else ClassifyResponse
    return model.model_validate(verdict, from_attributes=True).model_dump(mode="json")


class Preset(BaseModel):
    h1: int
    h2: int
    ensemble: int


class ModelEntry(BaseModel):
    name: str
    default: bool
    arch: str
    clip_len: int
    frame_interval: int
    crop_size: int
    labels: list[str]
    preset: Preset
    resize: int | list[int] = Field(
        description="before the centre crop: the short side, or a fixed [h, w]"
    )
    weights: str = Field(
        description='"trained", or "random" for an untrained smoke-test/benchmark archive'
    )


class ModelList(BaseModel):
    models: list[ModelEntry]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable snake_case error code")
    message: str = Field(description="what was wrong and what to do")


class ErrorBody(BaseModel):
    error: ErrorDetail


# --------------------------------------------------------------------------- #
# Documented responses (OpenAPI): the one place that lists what each operation answers
# --------------------------------------------------------------------------- #
#: Every error status the gateway answers, with its codes (body: :class:`ErrorBody`).
ERROR_STATUSES: dict[int, str] = {
    400: "Bad upload: `empty_upload`, `missing_file`, `bad_multipart`, `bad_video` (empty,"
    " undecodable, corrupt or text body, malformed .npy header, wrong .npy dtype/shape).",
    401: "`unauthorized`: API keys are configured and the request presents none, or not a"
    " valid one (`Authorization: Bearer <key>` or `X-API-Key: <key>`); the same answer"
    " either way.",
    403: "`research_mode_required`: a research-only parameter (defense, ensemble, h1, h2,"
    " seed, early_stop) sent to a production gateway; `research_key_required`: sent with"
    " a key whose role is not research; `client_refused`: the query-attack watch refuses"
    " this client for a while (policy `refuse`; `Retry-After` says how long).",
    404: "`model_not_found`: no served model has that name.",
    408: "`upload_timeout`: the upload did not arrive within the upload timeout; the"
    " connection is closed.",
    413: "Over a limit: `upload_too_large` (the connection is closed), `video_too_large`,"
    " `frame_too_large`, `too_many_frames`, `decode_timeout`.",
    415: "`not_a_video`: a still image, or media without a video stream.",
    422: "`invalid_parameter`: a query parameter out of range or of the wrong type. FastAPI's"
    " own validation errors are rewritten to this body (not FastAPI's `detail` list); the"
    " message names each offending parameter.",
    429: "`overloaded` (the gateway's queue is full), `backend_overloaded` (the backend's),"
    " `rate_limited` (the key's token bucket is empty), `concurrency_limited` (the key"
    " has its most requests in progress) or `client_throttled` (the query-attack watch's"
    " policy `throttle`); retry after `Retry-After` seconds.",
    502: "`backend_error`: the model backend answered something the gateway cannot use.",
    503: "`backend_unavailable` (classify, models) or `not_ready` (readyz): the backend is"
    " unreachable or has no ready worker; retry after `Retry-After` seconds.",
    504: "`backend_timeout`: the model backend did not answer in time.",
}
#: statuses always answered with a ``Retry-After`` header (seconds)
RETRY_AFTER_STATUSES = frozenset({429, 503})
_RETRY_AFTER_HEADER: dict[str, Any] = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


_WWW_AUTHENTICATE_HEADER: dict[str, Any] = {
    "WWW-Authenticate": {
        "description": "the scheme to authenticate with",
        "required": True,
        "schema": {"type": "string"},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` entries for ``statuses``: the JSON :class:`ErrorBody`, what
    each status means, and the ``Retry-After`` (``WWW-Authenticate``) header where it is
    always sent."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": ERROR_STATUSES[status]}
        if status in RETRY_AFTER_STATUSES:
            entry["headers"] = _RETRY_AFTER_HEADER
        if status == 401:
            entry["headers"] = _WWW_AUTHENTICATE_HEADER
        out[status] = entry
    return out


#: ``POST /v1/classify``: the answer of either mode, and every error it can get
CLASSIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ResearchClassifyResponse | ClassifyResponse,
        "description": "Production mode returns only label, label_index, model, request_id"
        " and timings_ms (ClassifyResponse); research mode returns every field"
        " (ResearchClassifyResponse).",
    },
    **error_responses(400, 401, 403, 404, 408, 413, 415, 422, 429, 502, 503, 504),
}
#: ``GET /v1/models``: a missing key and backend faults (it takes no parameters)
MODELS_RESPONSES = error_responses(401, 502, 503, 504)
#: operations that need a key when keys are configured: (path, method)
KEYED_OPERATIONS = (("/v1/classify", "post"), ("/v1/models", "get"))
#: the OpenAPI security schemes of a gateway with keys
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
#: ``GET /readyz``: not ready
READYZ_RESPONSES = error_responses(503)
#: ``GET /metrics``: Prometheus' text format, not JSON
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
