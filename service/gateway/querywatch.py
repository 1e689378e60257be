"""Stateful detection of query-based attacks: per-client fingerprints of decoded clips.

A query-based black-box attack (Square, RayS: ``shuffleguard redteam``) sends many
clips that differ from one another by a small perturbation. Following the idea of
Chen, Carlini & Wagner (2020) and Blacklight (Li et al., USENIX Security 2022) --
probabilistic fingerprints of quantized inputs -- the gateway keeps, per client, the
fingerprints of its recent queries and counts a query whose frames were nearly all
seen before as a *near-duplicate*. The design for video, written for this project:

* **What is fingerprinted**: the decoded clip, uint8 ``[T, H, W, 3]``, exactly what the
  model sees (after sampling and resize). Each frame is block-averaged to at most
  ``size`` x ``size`` (the toy models' 32 x 32 frames stay as they are). The clip's mean
  frame is subtracted (the *temporal residual*: what moves; distinct clips of one scene
  share their background, and a perturbation that is the same in every frame vanishes)
  and the residual is quantized (step ``step``, centred on 0). Every run of ``window``
  consecutive values of the flattened frame is hashed: a keyed polynomial hash mod
  2**64 salted with the run's position, then a mixing finalizer; runs with no motion are
  dropped (a still frame falls back to its raw quantized pixels). A frame's fingerprint
  is its ``keep`` largest hashes (Blacklight's top-k): which runs are kept depends on
  the secret key, so an attacker cannot tell which pixels matter.
* **Per frame, not per clip**: a frame *matches* when at least ``match`` of its ``keep``
  hashes are in the client's history; a query is a near-duplicate when at least
  ``frames`` of its ``T`` frames match. An attack that perturbs every frame still leaves
  each frame's windows outside the changed square unchanged; one that perturbs some
  frames leaves the other frames exact.
* **Index**: a per-client ``hash -> count`` map over the hashes of the last ``history``
  queries (a ring buffer; the oldest query's hashes are decremented away when it is
  evicted). A lookup is ``T * keep`` dictionary probes whatever the history length;
  :attr:`ClientHistory.probes` counts them (the tests assert on it).
* **Exact re-sends** (the same decoded bytes again: a retry, a load test's fixed clip)
  are not near-duplicates and are not added twice: they tell a deterministic model's
  attacker nothing new; against the randomized shuffle they are another draw of the
  vote, which the quotas bound, not this detector.
* **Memory**: ``history`` queries per client, at most ``clients`` clients (least
  recently seen evicted with their whole history).

A client is *detected* once ``hits`` of its last ``recent`` distinct queries were
near-duplicates; what follows is the policy's (:class:`QueryWatch`): ``flag`` logs and counts it,
``throttle`` lets it through once per ``throttle_s`` for ``penalty_s`` seconds (429
otherwise), ``refuse`` answers 403 for ``penalty_s`` seconds. A detection clears the
client's history (as Chen et al. do), so each detection is one episode.
docs/detection.md has the measurements behind the defaults.

numpy only; thread-safe (fingerprinting runs outside the lock, the index update under it).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:
    from service.config import Settings

__all__ = [
    "ClientHistory",
    "FingerprintSpec",
    "Gate",
    "Observation",
    "Policy",
    "QueryWatch",
    "fingerprint",
    "thumbnail",
]

Policy = Literal["off", "flag", "throttle", "refuse"]
K = TypeVar("K")

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class FingerprintSpec:
    """How a clip becomes hashes: see the module docstring. ``key`` seeds the hash
    coefficients (the gateway draws a secret one per process)."""

    size: int = 32
    step: int = 32
    window: int = 20
    keep: int = 20
    key: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.step <= 255 and self.size >= 1 and self.keep >= 1):
            raise ValueError(f"bad fingerprint spec: {self}")
        if not 1 <= self.window <= self.size * self.size * 3:
            raise ValueError(f"window must be 1..{self.size * self.size * 3}, got {self.window}")

    def coefficients(self) -> np.ndarray:
        """The hash's two odd uint64 constants from ``key``: the position multiplier and
        the polynomial's base."""
        rng = np.random.default_rng(self.key)
        draw = rng.integers(0, 2**63, size=2, dtype=np.uint64)
        return draw * np.uint64(2) + np.uint64(1)


def thumbnail(frames: np.ndarray, size: int) -> np.ndarray:
    """``[T, h, w, 3]`` uint8 with ``h, w <= size``: each side shrunk by the integer factor
    ``ceil(side / size)`` with a block mean (the top-left blocks that fit)."""
    t, h, w, c = frames.shape
    fh, fw = -(-h // size), -(-w // size)
    if fh == 1 and fw == 1:
        return frames
    hh, ww = h // fh, w // fw
    rows = frames[:, : hh * fh, : ww * fw].reshape(t, hh, fh, ww * fw, c)
    sums = rows.sum(axis=2, dtype=np.uint32).reshape(t, hh, ww, fw, c).sum(axis=3)
    return (sums // (fh * fw)).astype(np.uint8)


def _window_hashes(values: np.ndarray, spec: FingerprintSpec, salt: int) -> np.ndarray:
    """uint64 ``[T, n]``: the keyed hash of every run of ``window`` values of each row of
    ``values`` (uint64 ``[T, D]``), salted with the run's position (and ``salt``).

    The run's hash is the polynomial ``sum_j v[i + j] * a**j`` mod 2**64 for the key's odd
    base ``a``, from prefix sums (``O(D)`` per row, not ``O(D * window)``: ``a`` is odd, so
    ``a**-i`` exists mod 2**64), plus ``i * c``, then a mixing finalizer."""
    t, d = values.shape
    n = d - spec.window + 1
    if n < 1:
        raise ValueError(f"frames of {d} values are shorter than the window")
    c, a = (int(x) for x in spec.coefficients()[:2])
    powers = np.cumprod(np.full(d, a, np.uint64)) * np.uint64(pow(a, -1, 2**64))  # a**k
    inverse = np.cumprod(np.full(n, pow(a, -1, 2**64), np.uint64)) * np.uint64(a)  # a**-k
    prefix = np.zeros((t, d + 1), np.uint64)
    np.cumsum(values * powers, axis=1, out=prefix[:, 1:])  # wraps mod 2**64
    h = (prefix[:, spec.window :] - prefix[:, :n]) * inverse
    h += np.arange(n, dtype=np.uint64) * np.uint64(c) + np.uint64(salt)
    h ^= h >> np.uint64(31)
    h *= _MIX1
    h ^= h >> np.uint64(27)
    h *= _MIX2
    h ^= h >> np.uint64(33)
    h[h == 0] = 1
    return h


def _still_windows(values: np.ndarray, window: int, zero: int) -> np.ndarray:
    """bool ``[T, n]``: runs of ``window`` values that are all ``zero`` (no motion)."""
    n = values.shape[1] - window + 1
    still = np.ones((values.shape[0], n), bool)
    flat = values == zero
    for j in range(window):
        still &= flat[:, j : j + n]
    return still


def fingerprint(frames: np.ndarray, spec: FingerprintSpec) -> np.ndarray:
    """uint64 ``[T, keep]``: each frame's ``keep`` largest distinct window hashes of its
    *temporal residual* (the frame minus the clip's mean frame, quantized), runs that are
    all zero left out; a frame with fewer such runs (a still clip) is topped up with
    hashes of its raw quantized pixels. 0 pads what is left (0 is never a hash)."""
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 [T, H, W, C], got {frames.dtype} {frames.shape}")
    small = thumbnail(frames, spec.size).astype(np.int16)
    t = small.shape[0]
    mean = np.round(small.mean(axis=0, keepdims=True)).astype(np.int16)
    half = spec.step // 2  # residuals in [-half, step - half) are "no change"
    zero = (256 + half) // spec.step
    residual = ((small - mean + 256 + half) // spec.step).astype(np.uint64).reshape(t, -1)
    h = _window_hashes(residual, spec, salt=1)
    h[_still_windows(residual, spec.window, zero)] = 0
    out = _top_distinct(h, spec.keep)
    short = np.flatnonzero(out[:, 0] == 0)  # frames with fewer than keep such runs
    if short.size:
        pixels = (small[short].reshape(short.size, -1) // spec.step).astype(np.uint64)
        raw = _top_distinct(_window_hashes(pixels, spec, salt=2), spec.keep)
        for i, row in zip(short.tolist(), raw, strict=True):
            have = out[i][out[i] > 0]
            out[i] = np.concatenate([row[have.size :], have])
    return out


def _top_distinct(h: np.ndarray, keep: int) -> np.ndarray:
    """Per row of uint64 ``h``, its ``keep`` largest values, ascending, 0 where a row has
    fewer nonzero ones. The hashes are keyed by position, so a frame's runs are distinct
    (up to 64-bit collisions): no de-duplication is needed."""
    if h.shape[1] < keep:
        h = np.pad(h, ((0, 0), (keep - h.shape[1], 0)))
    return np.sort(h, axis=1)[:, -keep:]


@dataclass(frozen=True)
class Observation:
    """What one query did to its client's state."""

    frame_scores: np.ndarray  #: per frame: how many of its hashes the history held
    matched_frames: int
    near_duplicate: bool
    exact_repeat: bool
    detected: bool  #: this query completed a detection (``hits`` of the last ``recent``)


class ClientHistory:
    """One client's last ``capacity`` distinct queries, their ``hash -> count`` index, and
    the near-duplicate flags of its last ``recent`` queries."""

    def __init__(self, capacity: int, recent: int) -> None:
        self.capacity = capacity
        self.counts: dict[int, int] = {}
        self.queries: deque[tuple[bytes, np.ndarray]] = deque()  # (digest, its hashes)
        self.digests: dict[bytes, int] = {}
        self.recent: deque[bool] = deque(maxlen=recent)
        self.probes = 0  #: dictionary probes made by lookups (cost, for the tests)

    def seen(self, digest: bytes) -> bool:
        return digest in self.digests

    def lookup(self, prints: np.ndarray) -> np.ndarray:
        """Per frame, how many of its (nonzero) hashes the history holds."""
        scores = np.zeros(prints.shape[0], np.int64)
        for t, row in enumerate(prints.tolist()):
            self.probes += len(row)
            scores[t] = sum(1 for v in row if v and v in self.counts)
        return scores

    def add(self, digest: bytes, prints: np.ndarray, near_duplicate: bool) -> None:
        hashes = prints[prints > 0]  # kept as uint64: 8 bytes a hash, not a Python int
        for v in hashes.tolist():
            self.counts[v] = self.counts.get(v, 0) + 1
        self.queries.append((digest, hashes))
        self.digests[digest] = self.digests.get(digest, 0) + 1
        self.recent.append(near_duplicate)
        while len(self.queries) > self.capacity:
            self._evict()

    def _evict(self) -> None:
        digest, hashes = self.queries.popleft()
        for v in hashes.tolist():
            _decrement(self.counts, v)
        _decrement(self.digests, digest)

    def clear(self) -> None:
        """Forget the queries (after a detection: the next episode starts afresh)."""
        self.counts.clear()
        self.queries.clear()
        self.digests.clear()
        self.recent.clear()


def _decrement(counts: dict[K, int], key: K) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


@dataclass(frozen=True)
class Gate:
    """A client under penalty: ``refuse`` (403) or ``throttle`` (429), retry after seconds."""

    action: Literal["refuse", "throttle"]
    retry_after_s: float


@dataclass
class QueryWatch:
    """Per-client histories, LRU-bounded, the decision rule and the policy (module
    docstring).

    ``match``: hashes of a frame found in the history for the frame to match;
    ``frames``: share of a clip's frames that must match for a near-duplicate; detection: ``hits``
    near-duplicates among the client's last ``recent`` distinct queries. ``clock``:
    seconds (``time.monotonic``; tests pass their own)."""

    spec: FingerprintSpec = field(default_factory=FingerprintSpec)
    history: int = 256
    clients: int = 64
    match: int = 18
    frames: float = 0.75
    hits: int = 6
    recent: int = 10
    policy: Policy = "flag"
    penalty_s: float = 300.0
    throttle_s: float = 10.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if not 1 <= self.match <= self.spec.keep:
            raise ValueError(f"match must be 1..keep={self.spec.keep}, got {self.match}")
        if min(self.history, self.clients, self.hits) < 1 or not 0 < self.frames <= 1:
            raise ValueError("history, clients and hits must be >= 1, frames in (0, 1]")
        if not self.hits <= self.recent <= self.history:
            raise ValueError(f"need hits <= recent <= history, got {self.hits}, "
                             f"{self.recent}, {self.history}")  # fmt: skip
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, ClientHistory] = OrderedDict()
        #: name -> [penalty until, throttle: next request let through] (clock seconds);
        #: apart from the LRU of histories, so evicting a history never lifts a penalty
        #: (bounded by the key names; dropped once expired)
        self._penalties: dict[str, list[float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryWatch:
        """The gateway's watch: ``SHUFFLEGUARD_DETECT_*``, a secret hash key per process."""
        spec = FingerprintSpec(
            size=settings.detect_size,
            step=settings.detect_step,
            window=settings.detect_window,
            keep=settings.detect_keep,
            key=secrets.randbits(63),
        )
        return cls(
            spec=spec,
            history=settings.detect_history,
            clients=settings.detect_clients,
            match=settings.detect_match,
            frames=settings.detect_frames,
            hits=settings.detect_hits,
            recent=settings.detect_recent,
            policy=settings.detect_policy,
            penalty_s=settings.detect_penalty_s,
            throttle_s=settings.detect_throttle_s,
        )

    def client(self, name: str) -> ClientHistory:
        """``name``'s history (created, and the least recently seen client evicted, as needed)."""
        with self._lock:
            return self._client(name)

    def _client(self, name: str) -> ClientHistory:
        hist = self._clients.get(name)
        if hist is None:
            hist = self._clients[name] = ClientHistory(self.history, self.recent)
            while len(self._clients) > self.clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(name)
        return hist

    def tracked(self) -> tuple[int, int]:
        """(clients held, queries held in all)."""
        with self._lock:
            return len(self._clients), sum(len(h.queries) for h in self._clients.values())

    def gate(self, name: str) -> Gate | None:
        """Before a request: the penalty ``name`` is under, if any (a throttled client is
        let through once per ``throttle_s``)."""
        with self._lock:
            penalty = self._penalties.get(name)
            now = self.clock()
            if penalty is None or now >= penalty[0]:
                self._penalties.pop(name, None)
                return None
            if self.policy == "refuse":
                return Gate("refuse", penalty[0] - now)
            if now < penalty[1]:
                return Gate("throttle", penalty[1] - now)
            penalty[1] = now + self.throttle_s
            return None

    def observe(self, name: str, frames: np.ndarray) -> Observation:
        """Fingerprint ``frames`` (uint8 ``[T, H, W, 3]``), score them against ``name``'s
        history, add them to it, and on a detection start the policy's penalty."""
        digest = hashlib.blake2b(np.ascontiguousarray(frames).data, digest_size=16).digest()
        prints = fingerprint(frames, self.spec)
        need = max(1, math.ceil(self.frames * prints.shape[0] - 1e-9))
        with self._lock:
            hist = self._client(name)
            if hist.seen(digest):
                zero = np.zeros(prints.shape[0], np.int64)
                return Observation(zero, 0, False, True, False)
            scores = hist.lookup(prints)
            matched = int((scores >= self.match).sum())
            near = matched >= need
            hist.add(digest, prints, near)
            detected = near and sum(hist.recent) >= self.hits
            if detected:
                hist.clear()
                if self.policy in ("throttle", "refuse"):
                    now = self.clock()
                    self._penalties[name] = [now + self.penalty_s, now + self.throttle_s]
        return Observation(scores, matched, near, False, detected)
