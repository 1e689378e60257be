"""The defended classify path: decode -> shuffle -> backend -> vote.

One request becomes one backend call: the unshuffled clip (row 0, the
undefended prediction) and its ``N`` shuffled copies (rows 1..N) travel as a
single uint8 batch ``[N + 1, T, H, W, 3]``, so TorchServe sees one request and
can batch it with others. The vote (:func:`service.defense.majority_vote`) runs
on the ``N`` shuffled rows.

Blocking work (decoding, the gather, encoding) runs on a bounded thread pool so
the event loop keeps serving other requests meanwhile.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import torch

from service.config import Settings
from service.defense import apply_shuffles, majority_vote, make_generator, shuffle_indices
from service.gateway.backend import Backend, ModelMeta
from service.gateway.catalog import ModelCatalog
from service.gateway.errors import InvalidParameter, VideoRejected
from service.gateway.upload import Upload
from service.video import DecodeLimits, VideoError, decode_clip

__all__ = [
    "MAX_SEED",
    "ClassifyParams",
    "Pipeline",
    "Verdict",
    "build_batch",
    "resolve_device",
    "summarize",
]

#: seeds are drawn from, and accepted in, [0, MAX_SEED]
MAX_SEED = 2**63 - 1

R = TypeVar("R")


@dataclass(frozen=True)
class ClassifyParams:
    """What a request asked for; None means "the model's preset" (or a drawn seed)."""

    model: str | None = None
    ensemble: int | None = None
    h1: int | None = None
    h2: int | None = None
    seed: int | None = None
    defense: bool = True


@dataclass
class Verdict:
    """The outcome of one classify request (every field of SPEC §4)."""

    model: str
    label: str
    label_index: int
    confidence: float
    votes: dict[str, int]
    ensemble: int
    h1: int | None
    h2: int | None
    seed: int
    undefended_label: str
    undefended_index: int
    suspected_adversarial: bool
    timings_ms: dict[str, float] = field(default_factory=dict)


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def build_batch(
    frames: np.ndarray,
    *,
    n: int,
    h1: int,
    h2: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, torch.Tensor]:
    """The backend batch for one clip: itself, then ``n`` shuffled copies.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB 0..255.
        n: shuffled copies (>= 1); h1, h2: Algorithm 1's window and group length.
        seed: seeds the CPU generator that draws the indices, so a seed gives the same
            shuffles on any device.
        device: where the gather runs (the clip is copied there and back).

    Returns:
        ``(batch, indices)``: uint8 ``[n + 1, T, H, W, 3]`` (row 0 is ``frames``
        unchanged) and the int64 ``[n + 1, T]`` frame indices used (row 0 the identity).
    """
    T = frames.shape[0]
    # h1 beyond T widens nothing (the window is clamped to the clip) and keeps
    # huge request values away from int64 arithmetic.
    shuffles = shuffle_indices(T, min(h1, T), h2, n, generator=make_generator(seed))
    indices = torch.cat([torch.arange(T, dtype=torch.int64).unsqueeze(0), shuffles])
    clip = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    batch = apply_shuffles(clip, indices, temporal_dim=0)  # one gather: [n + 1, T, H, W, 3]
    return batch.cpu().numpy(), indices


def summarize(
    logits: np.ndarray,
    meta: ModelMeta,
    *,
    defense: bool,
    threshold: float,
) -> dict[str, Any]:
    """Vote over the backend's logits ``[1 + n, K]`` (row 0: the unshuffled clip).

    Returns the verdict fields: ``label_index``, ``label``, ``confidence``, ``votes``,
    ``undefended_index``, ``undefended_label``, ``suspected_adversarial``.
    """
    scores = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    undefended = int(scores[0].argmax())
    if not defense:
        prob = float(scores[0].softmax(dim=-1)[undefended])
        return {
            "label_index": undefended,
            "label": meta.label(undefended),
            "confidence": prob,
            "votes": {},
            "undefended_index": undefended,
            "undefended_label": meta.label(undefended),
            "suspected_adversarial": False,
        }
    vote = majority_vote(scores[1:])
    counts = vote.counts.tolist()
    votes = {meta.label(k): int(c) for k, c in enumerate(counts) if c > 0}
    return {
        "label_index": vote.label,
        "label": meta.label(vote.label),
        "confidence": vote.share,
        "votes": votes,
        "undefended_index": undefended,
        "undefended_label": meta.label(undefended),
        "suspected_adversarial": undefended != vote.label or vote.share < threshold,
    }


class Pipeline:
    """decode -> shuffle -> backend -> vote, for one request at a time per slot."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        catalog: ModelCatalog,
        *,
        threads: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.catalog = catalog
        self.device = resolve_device(settings.device)
        self.threads = threads or anyio.CapacityLimiter(settings.decode_threads)
        self.limits = DecodeLimits(
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_frames=settings.max_frames,
            max_decode_seconds=settings.max_decode_seconds,
        )

    async def _in_thread(self, fn: Callable[..., R], *args: Any) -> R:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.threads)

    def effective(self, params: ClassifyParams, meta: ModelMeta) -> tuple[int, int, int]:
        """``(ensemble, h1, h2)``: the request's values, else the server's, else the preset."""
        ensemble = params.ensemble or self.settings.ensemble or meta.preset.ensemble
        h1 = meta.preset.h1 if params.h1 is None else params.h1
        h2 = meta.preset.h2 if params.h2 is None else params.h2
        if h2 > meta.clip_len:
            raise InvalidParameter(
                f"h2={h2} exceeds the clip length {meta.clip_len} of model {meta.name!r}; "
                f"use 1..{meta.clip_len}"
            )
        return ensemble, h1, h2

    async def classify(
        self,
        upload: Upload,
        params: ClassifyParams,
        *,
        meta: ModelMeta | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Verdict:
        meta = meta or await self.catalog.resolve(params.model)
        ensemble, h1, h2 = self.effective(params, meta)
        seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1)

        # Decoding and the gather are blocking: one trip to the thread pool for both.
        try:
            batch, timings = await self._in_thread(
                self._prepare, upload, meta, ensemble if params.defense else 0, h1, h2, seed
            )
        except VideoError as exc:
            raise VideoRejected(exc.message, status_code=exc.status_code, code=exc.code) from exc
        t2 = time.perf_counter()

        logits = await self.backend.infer(meta.name, batch, headers=headers)
        t3 = time.perf_counter()
        timings["backend"] = (t3 - t2) * 1e3

        fields = summarize(
            logits, meta, defense=params.defense, threshold=self.settings.suspicion_threshold
        )
        timings["vote"] = (time.perf_counter() - t3) * 1e3
        return Verdict(
            model=meta.name,
            ensemble=ensemble if params.defense else 0,
            h1=h1 if params.defense else None,
            h2=h2 if params.defense else None,
            seed=seed,
            timings_ms=timings,
            **fields,
        )

    def _prepare(
        self, upload: Upload, meta: ModelMeta, n: int, h1: int, h2: int, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Decode, then the backend batch (``n = 0``: the clip alone); runs in a thread."""
        t0 = time.perf_counter()
        frames = decode_clip(
            upload.data,
            clip_len=meta.clip_len,
            frame_interval=meta.frame_interval,
            crop_size=meta.crop_size,
            resize=meta.resize,
            transform=meta.transform,
            limits=self.limits,
            content_type=upload.content_type,
        ).frames
        t1 = time.perf_counter()
        if n:
            batch, _ = build_batch(frames, n=n, h1=h1, h2=h2, seed=seed, device=self.device)
        else:
            batch = frames[None]
        t2 = time.perf_counter()
        return batch, {"decode": (t1 - t0) * 1e3, "shuffle": (t2 - t1) * 1e3}
