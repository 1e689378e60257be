"""Query-based black-box attacks on a classifier seen only through its answers.

The attacked system is an *oracle*: a callable that takes one clip, uint8
``[T, H, W, 3]`` (0..255), and returns an :class:`Answer` -- the label index and, when
the service reveals them, scores. Nothing here knows about HTTP (the gateway client is
:mod:`service.research.experiments.redteam`); a numpy or torch model wrapped as an oracle is
attacked the same way.

:class:`QueryBudget` owns the chores: it counts every answered query against the
budget (:class:`BudgetExhausted` past it) and confirms a success by ``confirm`` fresh
re-queries (the clip counts as adversarial when a strict majority of them is wrong),
so a lucky draw of a randomized defense is not reported as a success.

* :class:`SquareAttack` -- score-based, L-inf: Square Attack (Andriushchenko et al.,
  ECCV 2020), written here from the paper's description. Random square updates of
  +-eps per channel, the square's area a fraction ``p`` of the frame that shrinks on
  the paper's schedule, an update kept when the margin loss does not get worse.
  For video, the square is a spatial square repeated in every frame (``frames="all"``,
  the default), a spatio-temporal cube of a random run of frames (``"window"``), or a
  square of its own in each frame (``"each"``).
* :class:`RaySAttack` -- label-only (hard-label), L-inf: RayS (Chen & Gu, KDD 2020),
  written from the paper's description. It searches a sign direction ``d`` and, for
  each, the smallest radius ``r`` at which ``x + r d`` is misclassified; block sign
  flips are kept when they shrink that radius; a success is a radius <= eps.

Randomized defenses: a service that draws a fresh shuffle seed per request (the
gateway when the request gives none, i.e. every production request) answers the
same clip differently from query to query, so the scores and labels these attacks
see are noisy. Neither attack averages queries; an update accepted on a lucky draw
is an honest outcome of the attacker's procedure, and the confirmation re-queries
keep the reported success rate honest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "Answer",
    "AttackResult",
    "BlackBoxAttack",
    "BudgetExhausted",
    "QueryBudget",
    "RaySAttack",
    "SquareAttack",
    "margin",
    "perturbation_norms",
    "square_p_schedule",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What one query returned.

    ``label_index``: the service's label. ``shares``: label index -> vote share (sums
    to 1; research mode with the defense on). ``confidence``: the winning score (the
    vote share, or with the defense off the softmax probability of ``label_index``).
    A production service gives the label only (both None).
    """

    label_index: int
    shares: dict[int, float] | None = None
    confidence: float | None = None


Oracle = Callable[[np.ndarray], Answer]


def margin(answer: Answer, label: int) -> float:
    """The score margin of the true ``label``: its score minus the best other score
    (< 0 means misclassified). From vote shares when given; from the top-1 probability
    ``c`` otherwise: ``2c - 1`` when the label is right (the other classes share at
    most ``1 - c``), ``-c`` when wrong. Raises ValueError on a label-only answer."""
    if answer.shares is not None:
        own = answer.shares.get(label, 0.0)
        others = [v for k, v in answer.shares.items() if k != label]
        return own - max(others, default=0.0)
    if answer.confidence is None:
        raise ValueError("a score-based attack needs scores; this service answers labels only")
    c = float(answer.confidence)
    return 2 * c - 1 if answer.label_index == label else -c


class BudgetExhausted(Exception):
    """The query budget is spent."""


@dataclass
class QueryBudget:
    """Counts the answered queries of one clip's attack against ``budget``."""

    oracle: Oracle
    budget: int
    used: int = 0
    history: list[int] = field(default_factory=list)  #: label index of every answer

    def left(self) -> int:
        return self.budget - self.used

    def __call__(self, clip: np.ndarray) -> Answer:
        if self.used >= self.budget:
            raise BudgetExhausted(f"{self.budget} queries spent")
        self.used += 1
        answer = self.oracle(clip)
        self.history.append(answer.label_index)
        return answer

    def confirm(self, clip: np.ndarray, label: int, k: int) -> tuple[bool, list[int]]:
        """``k`` fresh queries of ``clip``: (strict majority wrong, their labels)."""
        labels = [self(clip).label_index for _ in range(k)]
        return sum(lab != label for lab in labels) * 2 > k, labels


@dataclass
class AttackResult:
    """One clip's outcome. ``adversarial``: uint8 ``[T, H, W, 3]``, the final clip
    (the confirmed adversarial clip on success, else the attack's last iterate).
    ``clean_label``: the service's label of the clean clip; ``skipped`` when it was
    already wrong (no attack run). ``confirm_labels``: the confirming answers."""

    adversarial: np.ndarray
    success: bool
    queries: int
    clean_label: int
    skipped: bool = False
    confirm_labels: list[int] = field(default_factory=list)
    failed_confirmations: int = 0


def perturbation_norms(clean: np.ndarray, adversarial: np.ndarray) -> tuple[int, float]:
    """(L-inf, L2) of ``adversarial - clean`` in pixel levels (0..255)."""
    delta = adversarial.astype(np.int32) - clean.astype(np.int32)
    return int(np.abs(delta).max(initial=0)), float(np.sqrt((delta.astype(np.float64) ** 2).sum()))


class BlackBoxAttack:
    """Base: clean check, budget, confirmation; a subclass implements :meth:`search`.

    ``eps`` in pixel levels (4 = 4/255); ``confirm``: re-queries that confirm a
    success (odd keeps the majority clear); ``seed``: the attack's numpy Generator.
    """

    name = "blackbox"

    def __init__(self, *, eps: int = 4, confirm: int = 5, seed: int = 0) -> None:
        if not 1 <= eps <= 255:
            raise ValueError(f"eps must be 1..255 pixel levels, got {eps}")
        if confirm < 1:
            raise ValueError(f"confirm must be >= 1, got {confirm}")
        self.eps, self.confirm, self.seed = eps, confirm, seed

    def __call__(self, oracle: Oracle, clip: np.ndarray, label: int, budget: int) -> AttackResult:
        """Attack one uint8 ``[T, H, W, 3]`` clip of true class ``label`` with at most
        ``budget`` answered queries (the clean check and confirmations included)."""
        if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"expected uint8 [T, H, W, 3], got {clip.dtype} {clip.shape}")
        q = QueryBudget(oracle, budget)
        rng = np.random.default_rng(self.seed)
        state = _Search(self, q, clip, label)
        try:
            first = q(clip)
            if first.label_index != label:
                return AttackResult(clip.copy(), False, q.used, first.label_index, skipped=True)
            state.clean_label = first.label_index
            self.search(state, first, rng)
        except BudgetExhausted:
            pass
        return state.result()

    def search(self, state: _Search, clean_answer: Answer, rng: np.random.Generator) -> None:
        """Run until ``state.candidate(...)`` confirms a success (returns True) or the
        budget runs out (``BudgetExhausted`` propagates)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, confirm={self.confirm}, seed={self.seed})"


class _Search:
    """The mutable state of one clip's attack (owned by :class:`BlackBoxAttack`)."""

    def __init__(self, attack: BlackBoxAttack, q: QueryBudget, clip: np.ndarray, label: int):
        self.attack, self.q, self.clip, self.label = attack, q, clip, label
        self.clean_label = label
        self.last = clip.copy()
        self.success = False
        self.confirm_labels: list[int] = []
        self.failed = 0
        self.lo = np.clip(clip.astype(np.int16) - attack.eps, 0, 255)
        self.hi = np.clip(clip.astype(np.int16) + attack.eps, 0, 255)

    def project(self, candidate: np.ndarray) -> np.ndarray:
        """Into the eps-ball and 0..255, as uint8."""
        return np.clip(candidate, self.lo, self.hi).astype(np.uint8)

    def candidate(self, adv: np.ndarray) -> bool:
        """``adv`` was answered with a wrong label: confirm it by fresh re-queries."""
        self.last = adv
        ok, labels = self.q.confirm(adv, self.label, self.attack.confirm)
        self.confirm_labels = labels
        if ok:
            self.success = True
        else:
            self.failed += 1
        return ok

    def result(self) -> AttackResult:
        return AttackResult(
            self.last, self.success, self.q.used, self.clean_label,
            confirm_labels=self.confirm_labels, failed_confirmations=self.failed,
        )  # fmt: skip


# --------------------------------------------------------------------------- #
# Square Attack (score-based)
# --------------------------------------------------------------------------- #
#: iterations (of 10 000) at which the paper halves p
_SQUARE_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p_schedule(p_init: float, i: int, budget: int) -> float:
    """The fraction of the frame a square covers at iteration ``i`` of ``budget``: the
    paper's schedule for 10 000 iterations (p halved at 10, 50, 200, 500, 1k, 2k, 4k,
    6k and 8k), rescaled to ``budget``."""
    scaled = i * 10_000 / max(budget, 1)
    return p_init / 2 ** sum(scaled > k for k in _SQUARE_HALVINGS)


class SquareAttack(BlackBoxAttack):
    """Score-based L-inf Square Attack on the margin loss (:func:`margin`).

    Start: vertical stripes, each column and channel +eps or -eps at random (the
    paper's initialization), the same in every frame. Step ``i``: a square of side
    ``round(sqrt(p_i * H * W))`` at a random place (in every frame, or with
    ``frames="window"`` in a random run of ``round(sqrt(p_i) * T)`` frames) whose
    perturbation is set to +-eps per channel; kept when the margin is not larger
    than the best seen (ties kept: vote shares move in steps of 1/N). ``p_init``:
    0.05, the paper's value for L-inf. ``frames="each"``: every frame gets a square of
    its own (place and signs) at each step, so the perturbation differs from frame to
    frame (the start stays the stripes shared by every frame).

    ``frames="all"`` is the default because a perturbation that is the same in every
    frame is unchanged by any frame shuffle: against a shuffling defense it is the
    natural choice of an attacker who knows the defense's principle.
    """

    name = "square"

    def __init__(
        self, *, p_init: float = 0.05, frames: Literal["all", "window", "each"] = "all", **kw: int
    ) -> None:
        super().__init__(**kw)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        if frames not in ("all", "window", "each"):
            raise ValueError(f"frames must be 'all', 'window' or 'each', got {frames!r}")
        self.p_init, self.frames = p_init, frames

    def search(self, state: _Search, clean_answer: Answer, rng: np.random.Generator) -> None:
        T, H, W, C = state.clip.shape
        eps, x = self.eps, state.clip.astype(np.int16)
        stripes = rng.choice([-eps, eps], size=(1, 1, W, C))
        delta = np.broadcast_to(stripes, (T, H, W, C)).astype(np.int16)
        adv = state.project(x + delta)
        best = self._margin(state, adv)
        if best is None:
            return
        for i in range(1, state.q.budget):
            delta = adv.astype(np.int16) - x
            p = square_p_schedule(self.p_init, i, state.q.budget)
            new = self._update(delta, p, rng)
            cand = state.project(x + new)
            m = self._margin(state, cand)
            if m is None:
                return
            if m <= best:
                adv, best = cand, m

    def _margin(self, state: _Search, adv: np.ndarray) -> float | None:
        """The margin of ``adv``, or None when it is a confirmed success (``m < 0`` with a
        failed confirmation counts as 0: the clip stays a candidate, not a success)."""
        answer = state.q(adv)
        if answer.label_index != state.label:
            if state.candidate(adv):
                return None
            return 0.0
        state.last = adv
        return margin(answer, state.label)

    def _update(self, delta: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
        T, H, W, C = delta.shape
        side = int(min(max(round(np.sqrt(p * H * W)), 1), H - 1, W - 1)) or 1
        if self.frames == "each":
            return self._update_each(delta, side, rng)
        length = T if self.frames == "all" else max(1, min(T, round(np.sqrt(p) * T)))
        t0 = int(rng.integers(0, T - length + 1))
        r0, c0 = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        window = (slice(t0, t0 + length), slice(r0, r0 + side), slice(c0, c0 + side))
        new = delta.copy()
        for _ in range(10):  # redraw when the square would not change (paper)
            signs = rng.choice([-self.eps, self.eps], size=(1, 1, 1, C)).astype(np.int16)
            if not np.all(new[window] == signs):
                break
        new[window] = signs
        return new

    def _update_each(self, delta: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
        """``frames="each"``: every frame gets its own square (place and signs)."""
        T, H, W, C = delta.shape
        new = delta.copy()
        for t in range(T):
            r0, c0 = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
            signs = rng.choice([-self.eps, self.eps], size=(1, 1, C)).astype(np.int16)
            new[t, r0 : r0 + side, c0 : c0 + side] = signs
        return new

    def __repr__(self) -> str:
        return (
            f"SquareAttack(eps={self.eps}, p_init={self.p_init}, frames={self.frames!r}, "
            f"confirm={self.confirm}, seed={self.seed})"
        )


# --------------------------------------------------------------------------- #
# RayS (label-only)
# --------------------------------------------------------------------------- #
class RaySAttack(BlackBoxAttack):
    """Label-only L-inf RayS: a sign direction ``d`` in {-1, +1}^D over the clip's
    ``D = T*H*W*3`` values (in ``[T, H, W, C]`` order, so early blocks are runs of
    frames, later ones rows), and ``r(d)``, the smallest radius in pixel levels at
    which ``clip(x + r d)`` is answered wrongly (binary search over integers 0..255:
    at most 8 queries). Stage ``s`` cuts ``d`` into ``2**s`` blocks and tries flipping
    each; a flip costs one query at the current best radius and is kept (with a new
    binary search) when that query is wrong. Success: ``r(d) <= eps`` (the clip at
    that radius is confirmed by re-queries). ``d`` starts all +1 (the paper's start).
    """

    name = "rays"

    def search(self, state: _Search, clean_answer: Answer, rng: np.random.Generator) -> None:
        x = state.clip.astype(np.int16)
        d = np.ones(x.size, np.int16)
        r_best = self._radius(state, x, d, 255)
        stage = 0
        while True:
            blocks = 2**stage
            size = -(-d.size // blocks)
            for j in rng.permutation(blocks):
                if r_best <= self.eps:
                    if state.candidate(self._at(x, d, r_best)):
                        return
                    r_best = self._radius(state, x, d, 255)  # measured afresh
                    continue
                trial = d.copy()
                trial[j * size : (j + 1) * size] *= -1
                probe = min(r_best, 255)
                if self._wrong(state, self._at(x, trial, probe)):
                    d, r_best = trial, self._radius(state, x, trial, probe)
            stage = stage + 1 if size > 1 else stage

    @staticmethod
    def _at(x: np.ndarray, d: np.ndarray, r: int) -> np.ndarray:
        return np.clip(x + r * d.reshape(x.shape), 0, 255).astype(np.uint8)

    @staticmethod
    def _wrong(state: _Search, clip: np.ndarray) -> bool:
        return state.q(clip).label_index != state.label

    def _radius(self, state: _Search, x: np.ndarray, d: np.ndarray, hi: int) -> int:
        """Smallest integer radius <= ``hi`` answered wrongly along ``d`` (``hi`` known
        wrong, except at the start where 256 means "not even at 255")."""
        if hi >= 255 and not self._wrong(state, self._at(x, d, 255)):
            return 256
        lo = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._wrong(state, self._at(x, d, mid)):
                hi = mid
            else:
                lo = mid
        state.last = self._at(x, d, min(hi, self.eps))
        return hi
