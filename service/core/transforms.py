"""Analysis transforms of the paper (Sec. 3-4): how much a model leans on time.

* :func:`uniformize` -- every frame replaced by frame ``i`` (Table 1, Table 3).
* :func:`chunk_shuffle_indices` -- frame order randomized inside chunks of ``N``
  consecutive frames (Fig. 2, Fig. 5, Fig. 8). ``N = 1`` is the identity,
  ``N = T`` a full random permutation.
* :func:`row_shuffle_indices` -- the spatial counterpart (Fig. 2): rows permuted
  inside groups of ``N`` rows, with the same row order for every frame.
* :func:`monotonic_ratio` -- the share of a first conv layer's temporal windows
  (kernel ``k``, stride ``s``, zero padding ``p``) that see their frames in
  increasing order (Fig. 7).

Like :mod:`service.core.ensemble`, this module imports torch only; transforms work on
indices and apply them with one ``index_select``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "apply_row_shuffle",
    "chunk_shuffle",
    "chunk_shuffle_indices",
    "monotonic_ratio",
    "row_shuffle_indices",
    "uniformize",
]


def uniformize(clip: torch.Tensor, i: int, temporal_dim: int) -> torch.Tensor:
    """Every frame of ``clip`` replaced by frame ``i`` (negative ``i`` counts from the end).

    Works for any layout and batch; the result has ``clip``'s shape and device.
    """
    dim = temporal_dim % clip.dim()
    T = clip.shape[dim]
    if not -T <= i < T:
        raise IndexError(f"frame {i} out of range for T={T}")
    idx = torch.full((T,), i % T, dtype=torch.int64, device=clip.device)
    return clip.index_select(dim, idx)


def _grouped_permutation(
    length: int, group: int, n: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``[n, length]`` int64: independent random permutations inside consecutive groups.

    The last group is shorter when ``group`` does not divide ``length``.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if group < 1:
        raise ValueError(f"group size must be >= 1, got {group}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pos = torch.arange(length, dtype=torch.int64)
    gid = pos // group
    # Sort by (group id, random key): a uniform permutation within every group.
    keys = torch.rand((n, length), generator=generator, dtype=torch.float64)
    order = torch.argsort(gid.to(torch.float64) * 2.0 + keys, dim=1)
    return order


def chunk_shuffle_indices(
    T: int, chunk: int, n: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Frame-order randomization with chunk size ``chunk``: ``[n, T]`` int64 indices.

    The clip is cut into chunks of ``chunk`` consecutive frames and the order of
    the frames inside each chunk is drawn uniformly at random. Apply with
    :func:`service.core.ensemble.apply_shuffles`.
    """
    return _grouped_permutation(T, chunk, n, generator)


def chunk_shuffle(
    clip: torch.Tensor, chunk: int, temporal_dim: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One chunk-wise frame-order randomization of ``clip`` (same shape and device)."""
    dim = temporal_dim % clip.dim()
    idx = chunk_shuffle_indices(clip.shape[dim], chunk, 1, generator)[0]
    return clip.index_select(dim, idx.to(clip.device))


def row_shuffle_indices(
    H: int, group: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Row randomization within groups of ``group`` rows: ``[H]`` int64 indices."""
    return _grouped_permutation(H, group, 1, generator)[0]


def apply_row_shuffle(
    clip: torch.Tensor, group: int, row_dim: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Permute the rows (axis ``row_dim``) inside groups of ``group`` rows.

    One row order is drawn and applied to every frame, so the temporal structure
    is untouched while the spatial one is scrambled.
    """
    dim = row_dim % clip.dim()
    idx = row_shuffle_indices(clip.shape[dim], group, generator)
    return clip.index_select(dim, idx.to(clip.device))


def monotonic_ratio(order: Sequence[int], k: int, s: int = 1, p: int = 0) -> float:
    """Share of temporal conv windows that see their frames in increasing order.

    A first conv layer with temporal kernel ``k``, stride ``s`` and zero padding
    ``p`` slides ``floor((T + 2p - k) / s) + 1`` windows over the (padded) frame
    sequence ``order``. A window is *monotonic* when the real frames it covers
    (padding ignored) have strictly increasing frame numbers. The paper's worked
    example: ``order = [2, 3, 4, 1, 5], k = 3, s = 1, p = 1`` gives ``3/5``.
    """
    if k < 1 or s < 1 or p < 0:
        raise ValueError(f"need k >= 1, s >= 1, p >= 0; got k={k}, s={s}, p={p}")
    seq: list[int | None] = [None] * p + list(order) + [None] * p
    if len(seq) < k:
        raise ValueError(f"kernel {k} is longer than the padded sequence ({len(seq)})")
    windows = range(0, len(seq) - k + 1, s)
    good = 0
    for w in windows:
        frames = [f for f in seq[w : w + k] if f is not None]
        if all(a < b for a, b in zip(frames, frames[1:], strict=False)):
            good += 1
    return good / len(windows)
