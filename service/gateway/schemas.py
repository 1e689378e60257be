"""Response bodies of the HTTP API (SPEC §4), for validation and ``/docs``."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.gateway.pipeline import Verdict


class Timings(BaseModel):
    decode: float = Field(description="ms decoding the upload into a clip")
    shuffle: float = Field(description="ms drawing and gathering the shuffled copies")
    backend: float = Field(description="ms in the model backend (one batched call)")
    vote: float = Field(description="ms voting")
    total: float = Field(description="ms from request arrival to the answer")


class ClassifyResponse(BaseModel):
    """Production answer: the label only (no oracle for attackers)."""

    label: str = Field(description="the ensemble's majority vote")
    label_index: int
    model: str
    request_id: str
    timings_ms: Timings


class ResearchClassifyResponse(ClassifyResponse):
    """Research-mode answer (``SHUFFLEGUARD_RESEARCH_MODE=1``): every field."""

    confidence: float = Field(
        description="winning vote share (defense=false: softmax probability of the label)"
    )
    votes: dict[str, int] = Field(description="label -> votes, summing to ensemble")
    ensemble: int
    h1: int | None
    h2: int | None
    seed: int = Field(description="seed of the shuffles; send it back to reproduce")
    undefended_label: str = Field(description="label of the unshuffled clip")
    suspected_adversarial: bool


def classify_body(verdict: Verdict, *, request_id: str, research: bool) -> dict[str, object]:
    """The JSON body for ``verdict``: label-only in production, everything in research mode."""
    timings = {k: round(v, 3) for k, v in verdict.timings_ms.items()}
    body: dict[str, object] = {
        "label": verdict.label,
        "label_index": verdict.label_index,
        "model": verdict.model,
        "request_id": request_id,
        "timings_ms": timings,
    }
    if research:
        body.update(
            confidence=verdict.confidence,
            votes=verdict.votes,
            ensemble=verdict.ensemble,
            h1=verdict.h1,
            h2=verdict.h2,
            seed=verdict.seed,
            undefended_label=verdict.undefended_label,
            suspected_adversarial=verdict.suspected_adversarial,
        )
    return body


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
