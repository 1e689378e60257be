"""The classify path, one way through: admission -> upload -> model -> parameters ->
preprocess (decode) -> predict (indices, backend rounds, vote) -> postprocess (the
verdict) -> metrics.

The route hands over a validated :class:`~service.gateway.schemas.ClassifyRequest`
and gets a :class:`Verdict` back; everything in between happens here, in
:meth:`Pipeline.run`. The request's parameters are settled once
(:meth:`Pipeline.effective`: the request's, else the server's, else the model's
preset) and keep their query names (``ensemble``, ``h1``, ``h2``, ``seed``,
``early_stop``) down to :func:`~service.core.shuffle.ensemble_indices`, whose
``indices`` go over the wire under that name. ``defense=false`` means no shuffles
(:attr:`Effective.shuffles` is None). Each stage runs inside a
:class:`~service.gateway.metrics.StageTimer` block, whose readings are both the
response's ``timings_ms`` and the ``request_duration_seconds{stage}`` histograms.

The backend sees the clip and its frame indices (``[N + 1, T]``, row 0 the
identity: the undefended prediction; rows 1..N Algorithm 1's shuffles, drawn by
:func:`service.core.shuffle.ensemble_indices` from the request's seed). Two ways to
send them (the ``shuffle_mode`` setting):

* ``index`` (default): the uint8 clip once plus the indices; the backend
  gathers the copies on its own device (the GPU when there is one);
* ``copy``: the gateway gathers the copies and sends them all.

With early stopping (the ``early_stop`` setting, or ``early_stop=false`` per
request in research mode) the copies are classified in rounds
(:class:`service.core.vote.EarlyStop`): a round's rows are the next copies in
index order, and the vote stops as soon as its label and ``suspected_adversarial``
flag equal what the full ``N``-copy vote would give. ``votes`` then sum to
``votes_cast`` (< ``ensemble``); ``ensemble`` stays the requested ``N``.

The gateway does no tensor work: decoding aside (:mod:`service.decoder`), this
module imports numpy only.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from service.config import Settings
from service.core.shuffle import ensemble_indices
from service.core.vote import EarlyStop, softmax, suspected, vote
from service.decoder.decode import decode_clip
from service.decoder.errors import VideoError
from service.decoder.limits import DecodeLimits
from service.gateway.admission import Admission
from service.gateway.backend import Backend
from service.gateway.catalog import ModelCatalog
from service.gateway.errors import (
    BackendError,
    ClientRefused,
    ClientThrottled,
    InvalidParameter,
    ModelNotFound,
    VideoRejected,
)
from service.gateway.metrics import GatewayMetrics, StageTimer
from service.gateway.middleware import RequestInfo
from service.gateway.querywatch import Observation, QueryWatch
from service.gateway.schemas import MAX_SEED, ClassifyRequest
from service.gateway.upload import Upload
from service.modelserver.meta import ModelMeta

__all__ = [
    "MAX_SEED",
    "Effective",
    "Pipeline",
    "Shuffles",
    "Verdict",
    "build_batch",
    "index_mode_served",
]

R = TypeVar("R")

logger = logging.getLogger(__name__)

#: copy-mode gathers over this many bytes run in the thread pool
_INLINE_GATHER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Shuffles:
    """The defense's parameters of one request, named as in the query
    (:class:`~service.gateway.schemas.ClassifyRequest`) and down to
    :func:`~service.core.shuffle.ensemble_indices`."""

    ensemble: int
    h1: int
    h2: int
    early_stop: bool


@dataclass(frozen=True)
class Effective:
    """The parameters a request runs with: its own, else the server's, else the preset.

    ``shuffles`` is None for ``defense=false``: the undefended model alone, no shuffles.
    """

    seed: int
    shuffles: Shuffles | None


@dataclass
class Verdict:
    """The outcome of one classify request: the attributes of the response models
    (:class:`~service.gateway.schemas.ResearchClassifyResponse`), plus what only
    metrics and the log see. Undefended (``shuffles`` None): no votes, ``ensemble``
    0, ``h1``/``h2`` None."""

    model: str
    request_id: str
    label: str
    label_index: int
    confidence: float
    votes: dict[str, int]
    votes_cast: int
    shuffles: Shuffles | None
    seed: int
    undefended_label: str
    undefended_index: int
    suspected_adversarial: bool
    backend_bytes: int = 0
    backend_rounds: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ensemble(self) -> int:
        """Shuffled copies requested (0: undefended)."""
        return self.shuffles.ensemble if self.shuffles is not None else 0

    @property
    def h1(self) -> int | None:
        return self.shuffles.h1 if self.shuffles is not None else None

    @property
    def h2(self) -> int | None:
        return self.shuffles.h2 if self.shuffles is not None else None


@dataclass(frozen=True)
class _Decision:
    """What the vote (or, undefended, the one prediction) decided for a clip."""

    undefended: int
    label: int
    confidence: float
    counts: np.ndarray | None  # [K] votes; None when undefended
    suspected: bool


def build_batch(frames: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Copy mode's backend batch: uint8 ``[R, T, H, W, 3]`` with ``out[r] =
    frames[indices[r]]`` (whole frames, one contiguous block each).

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB 0..255.
        indices: int64 ``[R, T]``, values in ``[0, T)`` (e.g. rows of
            :func:`service.core.shuffle.ensemble_indices`).
    """
    return np.take(np.ascontiguousarray(frames), indices, axis=0)


class Pipeline:
    """Runs classify requests: see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        catalog: ModelCatalog,
        *,
        metrics: GatewayMetrics | None = None,
        admission: Admission | None = None,
        threads: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.catalog = catalog
        self.metrics = metrics or GatewayMetrics()
        self.admission = admission or Admission(
            settings.max_inflight,
            settings.max_queue,
            queue_timeout_s=settings.queue_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
        self.threads = threads or anyio.CapacityLimiter(settings.decode_threads)
        self.watch = QueryWatch.from_settings(settings) if settings.detect_policy != "off" else None
        self.limits = DecodeLimits(
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_frames=settings.max_frames,
            max_decode_seconds=settings.max_decode_seconds,
        )

    async def _in_thread(self, fn: Callable[..., R], *args: Any) -> R:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.threads)

    # ------------------------------------------------------------ parameters
    def effective(self, request: ClassifyRequest, meta: ModelMeta) -> Effective:
        """The request's values, else the server's, else the model's preset.

        The one check that needs the model (``h2 <= clip_len``) is here; the
        request's own ranges were checked by :class:`ClassifyRequest`.
        """
        h2 = meta.preset.h2 if request.h2 is None else request.h2
        if h2 > meta.clip_len:
            raise InvalidParameter(
                f"h2={h2} exceeds the clip length {meta.clip_len} of model {meta.name!r}; "
                f"use 1..{meta.clip_len}"
            )
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        if not request.defense:
            return Effective(seed=seed, shuffles=None)
        early_stop = request.early_stop
        return Effective(
            seed=seed,
            shuffles=Shuffles(
                ensemble=request.ensemble or self.settings.ensemble or meta.preset.ensemble,
                h1=meta.preset.h1 if request.h1 is None else request.h1,
                h2=h2,
                early_stop=self.settings.early_stop if early_stop is None else early_stop,
            ),
        )

    # ------------------------------------------------------------------ run
    async def run(
        self,
        request: ClassifyRequest,
        *,
        receive: Callable[[], Awaitable[Upload]],
        info: RequestInfo,
        headers: Mapping[str, str] | None = None,
        client: str = "anonymous",
    ) -> Verdict:
        """One classify request, from admission to metrics.

        ``receive`` reads the upload (called once a place is admitted); ``info``
        is the request's log record (its model and fields are filled in here);
        ``headers`` are the allow-listed ones forwarded to the backend; ``client``
        names whose query history the decoded clip joins (the API key's name).
        """
        self._gate(client)
        forward = {**(headers or {}), "x-request-id": info.request_id}
        timer = StageTimer(started=info.started)
        with self.metrics.inflight.track_inprogress():
            async with self.admission.admit():
                upload = await receive()
                try:
                    meta = await self.catalog.resolve(request.model)
                    info.model = meta.name
                    params = self.effective(request, meta)  # bad h2 -> 422 before queueing
                    async with self.admission.run_slot():
                        verdict = await self.classify(
                            upload, params, meta, request_id=info.request_id, headers=forward,
                            client=client, info=info, timer=timer,
                        )  # fmt: skip
                except ModelNotFound:
                    if info.model is not None:  # it was served a moment ago: re-list models
                        self.catalog.invalidate(info.model)
                        info.model = None
                    raise
                except BackendError as exc:
                    self.metrics.backend_errors.labels(kind=exc.kind).inc()
                    raise
        verdict.timings_ms = timer.report()
        self._observe(verdict, info)
        return verdict

    def _gate(self, client: str) -> None:
        """403/429 for a client the query-attack policy has penalized."""
        gate = self.watch.gate(client) if self.watch is not None else None
        if gate is None:
            return
        self.metrics.watch_refusals.labels(client=client, action=gate.action).inc()
        wait = max(1, round(gate.retry_after_s))
        if gate.action == "refuse":
            raise ClientRefused(
                f"client {client!r} is refused for {wait} more s: its queries looked like a "
                "query-based attack (near-duplicates of one another; see docs/detection.md)",
                retry_after=wait,
            )
        raise ClientThrottled(
            f"client {client!r} is throttled for now: its queries looked like a query-based "
            f"attack (see docs/detection.md); retry in {wait} s",
            retry_after=wait,
        )

    def _watch(self, client: str, frames: np.ndarray, info: RequestInfo | None) -> None:
        """Fingerprint the decoded clip into ``client``'s history (in a worker thread);
        on a detection with policy throttle/refuse the request itself is turned away."""
        assert self.watch is not None
        t = time.perf_counter()
        seen: Observation = self.watch.observe(client, frames)
        self.metrics.fingerprint_duration.observe(time.perf_counter() - t)
        if info is not None:
            info.fields.update(near_duplicate=seen.near_duplicate)
        if seen.near_duplicate:
            self.metrics.near_duplicates.labels(client=client).inc()
        if not seen.detected:
            return
        policy = self.watch.policy
        self.metrics.attacks_detected.labels(client=client, policy=policy).inc()
        logger.warning(
            "query attack suspected: client %r sent %d near-duplicate clips among its last %d "
            "(policy %s)", client, self.watch.hits, self.watch.recent, policy,
        )  # fmt: skip
        if policy != "flag":
            self._gate(client)

    def _observe(self, verdict: Verdict, info: RequestInfo) -> None:
        m = self.metrics
        m.observe_stages(verdict.timings_ms)
        m.backend_bytes.labels(model=verdict.model).inc(verdict.backend_bytes)
        if verdict.shuffles is not None:
            m.vote_agreement.observe(verdict.confidence)
            m.copies_classified.observe(verdict.votes_cast)
            if verdict.suspected_adversarial:
                m.suspected_adversarial.labels(model=verdict.model).inc()
        # The log is the operator's: it keeps the flag and the vote even in production.
        info.fields.update(
            label=verdict.label,
            undefended_label=verdict.undefended_label,
            suspected_adversarial=verdict.suspected_adversarial,
            confidence=round(verdict.confidence, 4),
            ensemble=verdict.ensemble,
            votes_cast=verdict.votes_cast,
            h1=verdict.h1,
            h2=verdict.h2,
            seed=verdict.seed,
            backend_rounds=verdict.backend_rounds,
            timings_ms=verdict.timings_ms,
        )

    # ------------------------------------------------------------- classify
    async def classify(
        self,
        upload: Upload,
        params: Effective,
        meta: ModelMeta,
        *,
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
        client: str | None = None,
        info: RequestInfo | None = None,
        timer: StageTimer | None = None,
    ) -> Verdict:
        """preprocess -> predict -> postprocess (no admission, no metrics): decode (and
        the query-attack watch when ``client`` is given), the backend rounds and the
        vote, the verdict. Stage times go to ``timer``."""
        timer = timer or StageTimer()
        clip = await self.preprocess(upload, meta, timer, client=client, info=info)
        rounds = _Rounds(self, meta, clip, timer, headers)
        if params.shuffles is None:
            decision = await self.predict_undefended(rounds, timer)
        else:
            decision = await self.predict(rounds, params.shuffles, params.seed, timer)
        return self.postprocess(decision, params, rounds, request_id)

    async def preprocess(
        self,
        upload: Upload,
        meta: ModelMeta,
        timer: StageTimer,
        *,
        client: str | None = None,
        info: RequestInfo | None = None,
    ) -> np.ndarray:
        """The decoded clip, uint8 ``[T, H, W, 3]`` (a clear 4xx for a bad upload); the
        query-attack watch sees it when ``client`` is given (its time is not part of
        the decode's: ``fingerprint_seconds`` has it)."""
        try:
            with timer.stage("decode"):
                clip = await self._in_thread(self._decode, upload, meta)
        except VideoError as exc:
            raise VideoRejected(exc) from exc
        if client is not None and self.watch is not None:
            await self._in_thread(self._watch, client, clip, info)
        return clip

    async def predict_undefended(self, rounds: _Rounds, timer: StageTimer) -> _Decision:
        """``defense=false``: the unshuffled clip alone; its softmax is the confidence."""
        logits = await rounds.send(np.arange(rounds.meta.clip_len, dtype=np.int64)[None, :])
        with timer.stage("vote"):
            label = int(logits[0].argmax())
            prob = float(softmax(logits[0].astype(np.float64))[label])
        return _Decision(label, label, prob, counts=None, suspected=False)

    async def predict(
        self, rounds: _Rounds, shuffles: Shuffles, seed: int, timer: StageTimer
    ) -> _Decision:
        """Row 0 (the unshuffled clip) and the ``ensemble`` shuffles of Algorithm 1, in
        backend rounds (one without early stopping), then the one decision rule
        (:mod:`service.core.vote`)."""
        threshold = self.settings.suspicion_threshold
        with timer.stage("shuffle"):
            indices = ensemble_indices(
                rounds.meta.clip_len, shuffles.h1, shuffles.h2, shuffles.ensemble, seed
            )
        stop = EarlyStop(shuffles.ensemble, threshold, self.settings.early_stop_max_rounds)
        # round 1 carries row 0 (the unshuffled clip) with the first copies
        first = stop.first_round() if shuffles.early_stop else shuffles.ensemble
        logits = await rounds.send(indices[: 1 + first])
        undefended, copies = int(logits[0].argmax()), logits[1:]
        while True:
            with timer.stage("vote"):
                outcome = vote(copies)
                decided = not shuffles.early_stop or stop.decided(outcome.counts, undefended)
                more = 0 if decided else stop.next_round(outcome.counts, rounds.rounds)
            if not more:
                break
            cast = copies.shape[0]
            copies = np.concatenate([copies, await rounds.send(indices[1 + cast :][:more])])
        share = int(outcome.counts[outcome.label]) / shuffles.ensemble
        flag = suspected(undefended, outcome.label, share, threshold)
        return _Decision(undefended, outcome.label, outcome.share, outcome.counts, flag)

    def postprocess(
        self, decision: _Decision, params: Effective, rounds: _Rounds, request_id: str
    ) -> Verdict:
        """The request's one :class:`Verdict` (its ``timings_ms``: the stage timer's
        readings so far; :meth:`run` adds ``total``)."""
        meta = rounds.meta
        return Verdict(
            model=meta.name,
            request_id=request_id,
            label=meta.label(decision.label),
            label_index=decision.label,
            confidence=decision.confidence,
            votes=_votes(decision.counts, meta),
            votes_cast=0 if decision.counts is None else int(decision.counts.sum()),
            shuffles=params.shuffles,
            seed=params.seed,
            undefended_label=meta.label(decision.undefended),
            undefended_index=decision.undefended,
            suspected_adversarial=decision.suspected,
            backend_bytes=rounds.bytes_sent,
            backend_rounds=rounds.rounds,
            timings_ms=dict(rounds.timer.ms),
        )

    def _decode(self, upload: Upload, meta: ModelMeta) -> np.ndarray:
        return decode_clip(
            upload.data,
            clip_len=meta.clip_len,
            frame_interval=meta.frame_interval,
            crop_size=meta.crop_size,
            resize=meta.resize,
            transform=meta.transform,
            limits=self.limits,
            content_type=upload.content_type,
        ).frames


def _votes(counts: np.ndarray | None, meta: ModelMeta) -> dict[str, int]:
    """The response's ``votes``: label -> votes, the classes that got any."""
    if counts is None:
        return {}
    return {meta.label(k): int(c) for k, c in enumerate(counts.tolist()) if c}


def index_mode_served(meta: ModelMeta) -> bool:
    """Whether the model's handler parses index-mode bodies (it says so in its
    description); archives built before index mode are sent copies."""
    modes = meta.extra.get("wire_modes")
    return isinstance(modes, list) and "index" in modes


class _Rounds:
    """The backend calls of one request: each sends rows of frame indices, in the
    pipeline's ``shuffle_mode``, and counts rounds and bytes (time: the ``backend``
    stage, and ``shuffle`` for copy mode's gather)."""

    def __init__(
        self,
        pipeline: Pipeline,
        meta: ModelMeta,
        clip: np.ndarray,
        timer: StageTimer,
        headers: Mapping[str, str] | None,
    ) -> None:
        self.pipeline = pipeline
        self.meta = meta
        self.clip = np.ascontiguousarray(clip)
        self.timer = timer
        self.headers = headers
        self.rounds = 0
        self.bytes_sent = 0

    async def send(self, indices: np.ndarray) -> np.ndarray:
        """Logits ``[R, K]`` of the clips ``clip[indices[r]]``; ``indices`` int64 ``[R, T]``."""
        backend, name, timer = self.pipeline.backend, self.meta.name, self.timer
        if self.pipeline.settings.shuffle_mode == "index" and index_mode_served(self.meta):
            with timer.stage("backend"):
                logits = await backend.infer_indexed(name, self.clip, indices, headers=self.headers)
            self.bytes_sent += self.clip.nbytes + indices.nbytes
        else:
            with timer.stage("shuffle"):
                batch = await self._gather(indices)
            with timer.stage("backend"):
                logits = await backend.infer(name, batch, headers=self.headers)
            self.bytes_sent += batch.nbytes
        self.rounds += 1
        return logits

    async def _gather(self, indices: np.ndarray) -> np.ndarray:
        """Copy mode's batch (:func:`build_batch`); big ones in the thread pool."""
        if indices.shape[0] * self.clip.nbytes > _INLINE_GATHER_BYTES:
            return await self.pipeline._in_thread(build_batch, self.clip, indices)
        return build_batch(self.clip, indices)
