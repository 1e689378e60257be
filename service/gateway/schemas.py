"""Response bodies of the HTTP API (SPEC §4), for validation and ``/docs``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.config import MAX_ENSEMBLE, MODEL_NAME_PATTERN
from service.gateway.errors import ERROR_CODES

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


def _describe(codes: list[str], status: int) -> str:
    """What ``status`` means for an operation answering ``codes``, from the table."""
    text = " ".join(f"`{code}`: {ERROR_CODES[code].doc}." for code in codes)
    if status in RETRY_AFTER_STATUSES:
        text += " Retry after `Retry-After` seconds."
    return text


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` entries for an operation answering the error ``codes``:
    per status (from :data:`~service.gateway.errors.ERROR_CODES`), the JSON
    :class:`ErrorBody`, what each of its codes means, and the ``Retry-After``
    (``WWW-Authenticate``) header where it is always sent."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERROR_CODES[code].status, []).append(code)
    out: dict[int | str, dict[str, Any]] = {}
    for status, answered in sorted(by_status.items()):
        entry: dict[str, Any] = {"model": ErrorBody, "description": _describe(answered, status)}
        if status in RETRY_AFTER_STATUSES:
            entry["headers"] = _RETRY_AFTER_HEADER
        if status == 401:
            entry["headers"] = _WWW_AUTHENTICATE_HEADER
        out[status] = entry
    return out


#: codes no operation documents: Starlette's routing answers (any path) and a fault
#: of the gateway itself
_UNDOCUMENTED = ("not_found", "method_not_allowed", "internal_error")
#: the backend faults of an operation that asks the backend
_BACKEND_CODES = ("backend_error", "backend_unavailable", "backend_timeout")
#: the error codes of ``POST /v1/classify``: every answered code of the table but
#: ``/readyz``'s own
CLASSIFY_ERRORS = tuple(
    code
    for code, error in ERROR_CODES.items()
    if error.answered and code not in (*_UNDOCUMENTED, "not_ready")
)
#: ``POST /v1/classify``: the answer of either mode, and every error it can get
CLASSIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ResearchClassifyResponse | ClassifyResponse,
        "description": "Production mode returns only label, label_index, model, request_id"
        " and timings_ms (ClassifyResponse); research mode returns every field"
        " (ResearchClassifyResponse).",
    },
    **error_responses(*CLASSIFY_ERRORS),
}
#: ``GET /v1/models``: a missing key and backend faults (it takes no parameters)
MODELS_RESPONSES = error_responses("unauthorized", *_BACKEND_CODES)
#: operations that need a key when keys are configured: (path, method)
KEYED_OPERATIONS = (("/v1/classify", "post"), ("/v1/models", "get"))
#: the OpenAPI security schemes of a gateway with keys
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
#: ``GET /readyz``: not ready
READYZ_RESPONSES = error_responses("not_ready")
#: ``GET /metrics``: Prometheus' text format, not JSON
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
