"""Algorithm 1 (paper Sec. 5.1): the temporal shuffles' frame indices, written once.

This module imports numpy only, so a gateway process needs no torch for it.

A *shuffle* is an index array ``[n, T]`` (int64): row ``k``, column ``t`` is the
0-based source frame copied to output position ``t`` in shuffle ``k``. Frames are
only moved by one gather, on whatever device the clip lives on
(:func:`service.core.ensemble.apply_shuffles` in torch, ``np.take`` at the gateway).

Randomness
----------
Algorithm 1 needs one uniform draw in ``[0, 1)`` per (shuffle, group).
:func:`indices_from_uniforms` is the deterministic map from those draws to frame
indices; where the draws come from is the caller's choice:

* the research harness (:func:`service.core.ensemble.shuffle_indices` with a
  ``torch.Generator``) draws them with ``torch.rand(..., dtype=float64)``, so
  recorded research results reproduce;
* the gateway (:func:`ensemble_indices`) draws them with numpy's PCG64
  (``np.random.default_rng(seed)``): a request's ``seed`` reproduces its
  shuffles on any machine, without torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "check_shuffle_args",
    "count_shuffles",
    "ensemble_indices",
    "indices_from_uniforms",
    "num_groups",
    "source_window",
]


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
