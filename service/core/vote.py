"""The decision rule, written once: the ensemble vote, its tie-break and the
``suspected_adversarial`` flag, plus early stopping (:class:`EarlyStop`).

This module imports numpy only. The gateway calls it on the logits the model
server returns; the research harness (:func:`service.core.ensemble.majority_vote_batch`,
:class:`service.core.ensemble.ShuffleEnsemble`, the ``shuffle`` row of the evaluation)
hands its torch logits to the same :func:`vote_batch`, so a published figure measures
the rule the gateway serves.

The rule
--------
* each copy votes for its argmax (the first maximal class on exact ties);
* the label is the most voted class; a tie between classes goes to the tied class
  with the higher mean softmax over the copies (computed in float64 whatever the
  logits' dtype; an exact tie there goes to the lower class index);
* the clip is *suspected adversarial* when the label differs from the undefended
  prediction (the unshuffled clip's argmax), or when the label's vote share is under
  the threshold (:func:`suspected`).

Early stopping (:class:`EarlyStop`) classifies the shuffled copies in rounds and
stops as soon as the label and the flag of the full ``N``-copy vote can no longer
change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EarlyStop", "VoteOutcome", "softmax", "suspected", "vote", "vote_batch"]


@dataclass(frozen=True)
class VoteOutcome:
    """A clip's ensemble vote.

    ``counts[k]``: copies whose argmax is class ``k``; ``mean_probs``: mean softmax
    over those copies; ``label``: the most voted class, ties to the higher mean
    softmax (:func:`vote_batch`).
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


def vote_batch(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The majority vote of ``n`` copies for each of ``B`` clips.

    Args:
        logits: float ``[B, n, K]`` (any float dtype; the rule works in float64).

    Returns:
        ``(labels [B] int64, counts [B, K] int64, mean_probs [B, K] float64)``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3 or 0 in logits.shape:
        raise ValueError(f"logits must be [B >= 1, n >= 1, K >= 1], got {logits.shape}")
    K = logits.shape[-1]
    votes = logits.argmax(axis=-1)  # [B, n]
    counts = (votes[..., None] == np.arange(K)).sum(axis=1, dtype=np.int64)  # [B, K]
    mean_probs = softmax(logits).mean(axis=1)
    tied = counts == counts.max(axis=-1, keepdims=True)
    labels = np.where(tied, mean_probs, -1.0).argmax(axis=-1).astype(np.int64)
    return labels, counts, mean_probs


def vote(logits: np.ndarray) -> VoteOutcome:
    """The majority vote of one clip's ``n`` copies; ``logits`` float ``[n, K]`` (n >= 1)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [n >= 1, K >= 1], got {logits.shape}")
    labels, counts, mean_probs = vote_batch(logits[None])
    return VoteOutcome(label=int(labels[0]), counts=counts[0], mean_probs=mean_probs[0])


def suspected(undefended: int, label: int, share: float, threshold: float) -> bool:
    """The ``suspected_adversarial`` flag: a label flip (``label != undefended``), or a
    vote ``share`` (votes for ``label`` over the ensemble size) under ``threshold``."""
    return undefended != label or share < threshold


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
        """Fewest votes for the label whose share clears the threshold (by :func:`suspected`
        itself); ``ensemble + 1`` when none does."""
        N = self.ensemble
        return next((c for c in range(N + 1) if not self._low(c)), N + 1)

    def _low(self, votes_for_label: int) -> bool:
        """Whether :func:`suspected` flags a vote (label = undefended) with these votes."""
        return suspected(0, 0, votes_for_label / self.ensemble, self.threshold)

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
        lead = int(counts[leader])
        return not self._low(lead) or self._low(lead + remaining)

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
