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
