"""The defense's numpy half: Algorithm 1's frame indices, the vote, and early stopping.

This module imports numpy only. It is the one implementation of Algorithm 1
(paper Sec. 5.1): :func:`service.defense.shuffle_indices` (the SPEC's
torch-returning function, used by the research harness) is a thin wrapper that
draws its uniforms from a ``torch.Generator`` and maps them here, and the gateway
calls :func:`ensemble_indices` directly, so a gateway process needs no torch for
the indices or the vote.

Randomness
----------
Algorithm 1 needs one uniform draw in ``[0, 1)`` per (shuffle, group).
:func:`indices_from_uniforms` is the deterministic map from those draws to frame
indices; where the draws come from is the caller's choice:

* the research harness (``service.defense.shuffle_indices`` with a
  ``torch.Generator``) draws them with ``torch.rand(..., dtype=float64)``, exactly
  as before this module existed, so recorded research results reproduce;
* the gateway (:func:`ensemble_indices`) draws them with numpy's PCG64
  (``np.random.default_rng(seed)``): a request's ``seed`` reproduces its
  shuffles on any machine, without torch.

Early stopping (:class:`EarlyStop`) classifies the shuffled copies in rounds and
stops as soon as the label and the ``suspected_adversarial`` flag of the full
``N``-copy vote can no longer change.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "count_shuffles",
    "EarlyStop",
    "ShufflePreset",
    "VoteOutcome",
    "check_shuffle_args",
    "ensemble_indices",
    "indices_from_uniforms",
    "num_groups",
    "softmax",
    "source_window",
    "suspected",
    "vote",
]


@dataclass(frozen=True)
class ShufflePreset:
    """Defense hyper-parameters: window ``h1``, group length ``h2``, ensemble size."""

    h1: int
    h2: int
    ensemble: int = 10

    def __post_init__(self) -> None:
        if self.h1 < 0:
            raise ValueError(f"h1 must be >= 0, got {self.h1}")
        if self.h2 < 1:
            raise ValueError(f"h2 must be >= 1, got {self.h2}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# --------------------------------------------------------------------------- #
# Algorithm 1
# --------------------------------------------------------------------------- #
def source_window(t: int, T: int, h1: int, h2: int) -> tuple[int, int]:
    """Inclusive 0-based window ``[lo, hi]`` of source starts for the group at ``t``.

    This is the paper's ``[max(t-h1, 1), min(t+h1, T-h2+1)]`` shifted to 0-based
    indices; the group start ``t`` itself is excluded by the caller. ``hi < lo``
    means the window is empty.
    """
    return max(t - h1, 0), min(t + h1, T - h2)


def check_shuffle_args(T: int, h1: int, h2: int, n: int) -> None:
    """ValueError unless ``T >= 1``, ``h1 >= 0``, ``h2 >= 1`` and ``n >= 1``."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if h1 < 0:
        raise ValueError(f"h1 must be >= 0, got {h1}")
    if h2 < 1:
        raise ValueError(f"h2 must be >= 1, got {h2}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


def num_groups(T: int, h2: int) -> int:
    """Groups of Algorithm 1 for a ``T``-frame clip: one uniform draw each per shuffle."""
    return -(-T // h2)


@dataclass(frozen=True)
class _Plan:
    """Everything about Algorithm 1 that depends only on ``(T, h1, h2)``.

    ``table[g, :count[g]]`` lists group ``g``'s candidate source starts (its
    window minus ``t``); a group with an empty window has the single candidate
    ``t`` (identity) and ``count = 1``.
    """

    table: np.ndarray  # [G, W] int64
    count: np.ndarray  # [G] float64, >= 1
    last: np.ndarray  # [G] int64, count - 1
    group_of_pos: np.ndarray  # [T] int64
    offset_in_group: np.ndarray  # [T] int64


@functools.lru_cache(maxsize=512)
def _plan(T: int, h1: int, h2: int) -> _Plan:
    rows: list[list[int]] = []
    for t in range(0, T, h2):
        lo, hi = source_window(t, T, h1, h2)
        rows.append([c for c in range(lo, hi + 1) if c != t] or [t])
    width = max(len(r) for r in rows)
    table = np.array([r + [r[0]] * (width - len(r)) for r in rows], dtype=np.int64)
    count = np.array([len(r) for r in rows], dtype=np.int64)
    pos = np.arange(T, dtype=np.int64)
    for arr in (table, count, pos):
        arr.setflags(write=False)
    return _Plan(
        table=table,
        count=count.astype(np.float64),
        last=count - 1,
        group_of_pos=pos // h2,
        offset_in_group=pos % h2,
    )


def indices_from_uniforms(T: int, h1: int, h2: int, u: np.ndarray) -> np.ndarray:
    """Algorithm 1 given its random draws: ``u`` float64 ``[n, G]`` in ``[0, 1)`` ->
    int64 ``[n, T]`` frame indices (row ``k``, column ``t``: the source frame copied to
    output position ``t`` in shuffle ``k``).

    Walk the group starts ``t = 0, h2, 2*h2, ...`` (``G = ceil(T / h2)`` groups).
    Group ``g`` takes source start ``t'`` = candidate ``floor(u[k, g] * count)`` of
    its window ``[max(t-h1, 0), min(t+h1, T-h2)]`` without ``t``, and copies source
    frames ``t'..t'+h2-1`` to positions ``t..t+h2-1`` (positions past ``T-1``
    dropped). Draws are independent across groups and shuffles (sources may repeat:
    a resampling, not a permutation).

    Defined edge cases (no loops, nothing can spin): a group whose window holds no
    start other than ``t`` (``h1 = 0``; ``T < h2``; a short last group with
    ``t - h1 > T - h2``) keeps its own frames ``t..t+h2-1``. Every index lies in
    ``[0, T)``.
    """
    check_shuffle_args(T, h1, h2, 1)
    u = np.asarray(u, dtype=np.float64)
    G = num_groups(T, h2)
    if u.ndim != 2 or u.shape[1] != G:
        raise ValueError(f"u must be [n, {G}] for T={T}, h2={h2}; got shape {u.shape}")
    # h1 beyond T widens nothing (the window is clamped to the clip); clamping it
    # keeps request values of any size cheap and shares the cached plan.
    plan = _plan(T, min(h1, T), h2)
    # the clamp guards u * count rounding up to count
    pick = np.minimum((u * plan.count).astype(np.int64), plan.last)
    src = plan.table[np.arange(G)[None, :], pick]  # [n, G] source starts
    return src[:, plan.group_of_pos] + plan.offset_in_group


def count_shuffles(T: int, h1: int, h2: int) -> int:
    """How many distinct index rows Algorithm 1 can draw for ``(T, h1, h2)``.

    Groups draw independently and each candidate source start gives its group a
    different first index, so the count is the product of the groups' candidate
    counts (1 for a group that keeps its frames). The identity is never among them
    unless every group keeps its frames (``h1 = 0``, ``T <= h2``): a group with
    candidates always moves. E.g. ``T = 16``: ``h1 = 1, h2 = 4`` gives 4, the default
    ``h1 = 2, h2 = 4`` gives 64.
    """
    check_shuffle_args(T, h1, h2, 1)
    return int(np.prod(_plan(T, min(h1, T), h2).last + 1, dtype=object))


def ensemble_indices(T: int, h1: int, h2: int, n: int, seed: int) -> np.ndarray:
    """The gateway's frame indices for one request: int64 ``[n + 1, T]``.

    Row 0 is the identity (the unshuffled clip, the undefended prediction); rows
    ``1..n`` are ``n`` shuffles of Algorithm 1 drawn from numpy's PCG64 seeded with
    ``seed`` (>= 0), so a seed gives the same shuffles on any machine.
    """
    check_shuffle_args(T, h1, h2, n)
    rng = np.random.default_rng(int(seed))
    shuffles = indices_from_uniforms(T, h1, h2, rng.random((n, num_groups(T, h2))))
    return np.concatenate([np.arange(T, dtype=np.int64)[None, :], shuffles])


# --------------------------------------------------------------------------- #
# Vote
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class VoteOutcome:
    """A clip's ensemble vote.

    ``counts[k]``: copies whose argmax is class ``k``; ``mean_probs``: mean softmax
    over those copies; ``label``: the most voted class, ties to the higher mean
    softmax (as :func:`service.defense.majority_vote`).
    """

    label: int
    counts: np.ndarray  # [K] int64
    mean_probs: np.ndarray  # [K] float64

    @property
    def cast(self) -> int:
        return int(self.counts.sum())

    @property
    def share(self) -> float:
        """Votes for the label over the votes cast."""
        return float(self.counts[self.label]) / self.cast


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (max-subtracted, so large logits do not overflow)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def vote(logits: np.ndarray) -> VoteOutcome:
    """Majority vote of ``n`` copies; ``logits`` float ``[n, K]`` (n >= 1)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits must be [n >= 1, K >= 1], got {logits.shape}")
    K = logits.shape[1]
    counts = np.bincount(logits.argmax(axis=1), minlength=K).astype(np.int64)
    mean_probs = softmax(logits).mean(axis=0)
    tied = counts == counts.max()
    label = int(np.argmax(np.where(tied, mean_probs, -1.0)))
    return VoteOutcome(label=label, counts=counts, mean_probs=mean_probs)


def suspected(
    undefended: int, label: int, votes_for_label: int, ensemble: int, threshold: float
) -> bool:
    """The ``suspected_adversarial`` flag of a full vote: a label flip, or a vote share
    ``votes_for_label / ensemble`` under ``threshold``."""
    return undefended != label or votes_for_label / ensemble < threshold


# --------------------------------------------------------------------------- #
# Early stopping
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class EarlyStop:
    """When the copies of an ``ensemble``-vote may stop being classified.

    The copies are classified in rounds, in index order (copy 1, 2, ...). After a
    round with ``counts`` cast and ``remaining = ensemble - cast`` copies not yet
    classified, the vote stops when both the full vote's label and its
    ``suspected_adversarial`` flag are already certain, whatever the remaining
    copies vote:

    * label: the leader ``L`` has strictly more votes than any other class could
      reach, ``counts[L] > counts[j] + remaining`` for all ``j != L``. A class that
      could *tie* the leader blocks the stop, because a tie is broken by the mean
      softmax over all ``ensemble`` copies, which the unseen copies change;
    * flag (when ``L`` equals the undefended label): ``counts[L] >= threshold *
      ensemble`` (the share can only grow: not suspected) or ``counts[L] +
      remaining < threshold * ensemble`` (it cannot reach the threshold:
      suspected). A flip (``L`` != undefended) is suspected whatever the share.

    Round sizes: the first round is the smallest that lets a unanimous clip stop
    (a strict majority of ``ensemble``, and enough votes to reach the threshold),
    so clean clips finish in one round; each later round is the fewest copies
    that could decide the vote if they all voted for the leader, and the last
    allowed round (``max_rounds``) takes every copy left.
    """

    ensemble: int
    threshold: float
    max_rounds: int = 3

    def __post_init__(self) -> None:
        if self.ensemble < 1 or self.max_rounds < 1:
            raise ValueError(f"ensemble and max_rounds must be >= 1: {self}")

    def _needed_for_flag(self) -> int:
        """Fewest votes for the label whose share reaches the threshold (the same float
        comparison as :func:`suspected`); ``ensemble + 1`` when none does."""
        N = self.ensemble
        return next((c for c in range(N + 1) if not c / N < self.threshold), N + 1)

    def first_round(self) -> int:
        majority = self.ensemble // 2 + 1
        return min(self.ensemble, max(majority, self._needed_for_flag()))

    def decided(self, counts: np.ndarray, undefended: int) -> bool:
        """True when the full vote's label and flag are certain after ``counts``."""
        cast = int(counts.sum())
        remaining = self.ensemble - cast
        if remaining <= 0:
            return True
        leader = int(np.argmax(counts))
        others = np.delete(counts, leader)
        runner_up = int(others.max()) if others.size else 0
        if int(counts[leader]) <= runner_up + remaining:
            return False
        if leader != undefended:
            return True
        N, lead = self.ensemble, int(counts[leader])
        return not lead / N < self.threshold or (lead + remaining) / N < self.threshold

    def next_round(self, counts: np.ndarray, rounds_done: int) -> int:
        """Copies to classify next (0: the vote is complete). ``counts`` so far."""
        cast = int(counts.sum())
        remaining = self.ensemble - cast
        if remaining <= 0:
            return 0
        if rounds_done + 1 >= self.max_rounds:
            return remaining
        if rounds_done == 0:
            return self.first_round()
        leader = int(np.argmax(counts))
        others = np.delete(counts, leader)
        runner_up = int(others.max()) if others.size else 0
        # k copies all for the leader decide the label when
        # counts[L] + k > runner_up + (remaining - k)
        k_label = (runner_up + remaining - int(counts[leader])) // 2 + 1
        k_flag = self._needed_for_flag() - int(counts[leader])
        return min(remaining, max(1, k_label, k_flag))
