"""Temporal-shuffling defense core (paper Sec. 5.1, Algorithm 1).

Pure tensor maths: this module imports torch only, so it can be used from a
notebook, the gateway, the TorchServe handler and the attack harness alike.

Conventions
-----------
* A *shuffle* is an index tensor ``[n, T]`` (int64): row ``k``, column ``t`` is
  the 0-based source frame copied to output position ``t`` in shuffle ``k``.
  Index tensors are tiny and loggable; frames are only moved by one gather
  (:func:`apply_shuffles`) on whatever device the clip lives on.
* Every random draw takes an explicit ``torch.Generator`` so a result can be
  reproduced from its seed.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "PRESETS",
    "ShuffleEnsemble",
    "ShufflePreset",
    "VoteResult",
    "apply_shuffles",
    "majority_vote",
    "majority_vote_batch",
    "make_generator",
    "preset_for_arch",
    "shuffle_indices",
    "source_window",
]


# --------------------------------------------------------------------------- #
# Presets (paper Sec. 5.2)
# --------------------------------------------------------------------------- #
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


#: The paper's per-architecture presets (Sec. 5.2), all with an ensemble of 10.
PRESETS: dict[str, ShufflePreset] = {
    "i3d": ShufflePreset(h1=3, h2=4, ensemble=10),
    "slowfast": ShufflePreset(h1=2, h2=2, ensemble=10),
    "csn": ShufflePreset(h1=16, h2=2, ensemble=10),
    "x3d": ShufflePreset(h1=16, h2=1, ensemble=10),
}


def preset_for_arch(arch: str) -> ShufflePreset:
    """Paper preset for an architecture (``i3d``, ``slowfast``, ``csn``/``ir_csn``, ``x3d``)."""
    key = arch.lower().replace("-", "_")
    key = {"ir_csn": "csn", "ircsn": "csn", "i3d_r50": "i3d", "slowfast_r50": "slowfast"}.get(
        key, key
    )
    if key.startswith("x3d"):
        key = "x3d"
    if key.startswith("csn"):
        key = "csn"
    try:
        return PRESETS[key]
    except KeyError:
        raise KeyError(f"no paper preset for arch {arch!r}; known: {sorted(PRESETS)}") from None


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device``, seeded with ``seed`` (fresh entropy when None)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


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


def shuffle_indices(
    T: int,
    h1: int,
    h2: int,
    n: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``n`` temporal shuffles of a ``T``-frame clip (paper Algorithm 1).

    Walk the group starts ``t = 0, h2, 2*h2, ...``. For each, draw ``t'``
    uniformly from ``[max(t-h1, 0), min(t+h1, T-h2)]`` without ``t`` itself, and
    copy source frames ``t'..t'+h2-1`` to output positions ``t..t+h2-1``;
    positions past ``T-1`` are dropped. Draws are independent across groups
    and across the ``n`` shuffles (sources may repeat: it is a resampling, not
    a permutation).

    Defined edge cases (no loops, so nothing can spin forever):

    * **Empty window** -- the window holds no start other than ``t`` (``h1 = 0``;
      ``T < h2``; or, for the last group when ``T`` is not a multiple of ``h2``,
      ``t - h1 > T - h2``): that group keeps its own frames ``t..t+h2-1`` (the
      identity). With ``h1 = 0`` the whole shuffle is the identity.
    * ``T`` not a multiple of ``h2``: the last group is cut at ``T``; its source
      run is still a full in-bounds run of ``h2`` frames when the window is not
      empty.

    Every returned index lies in ``[0, T)``.

    Args:
        T: number of frames (>= 1).
        h1: half-width of the source window (>= 0).
        h2: length of the copied run of consecutive frames (>= 1).
        n: number of independent shuffles (>= 1).
        generator: source of randomness (CPU generator unless ``device`` matches it).
        device: where the returned indices live (default: the generator's device).

    Returns:
        int64 tensor ``[n, T]``.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if h1 < 0:
        raise ValueError(f"h1 must be >= 0, got {h1}")
    if h2 < 1:
        raise ValueError(f"h2 must be >= 1, got {h2}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    out_device = torch.device(device) if device is not None else gen_device

    plan = _shuffle_plan(T, h1, h2, str(gen_device))
    # One uniform draw per (shuffle, group). float64 keeps floor(u * count)
    # unbiased for any window a clip can have; the clamp guards u*count rounding
    # up to count.
    u = torch.rand(
        (n, plan.count.numel()), generator=generator, dtype=torch.float64, device=gen_device
    )
    pick = torch.minimum((u * plan.count).long(), plan.last)
    src = plan.table[plan.group_ids, pick]  # [n, G] source starts
    idx = src[:, plan.group_of_pos] + plan.offset_in_group
    return idx if out_device == gen_device else idx.to(out_device)


@dataclass(frozen=True)
class _ShufflePlan:
    """Everything about Algorithm 1 that depends only on ``(T, h1, h2)``.

    ``table[g, :count[g]]`` lists group ``g``'s candidate source starts (its
    window minus ``t``); a group with an empty window has the single candidate
    ``t`` (identity) and ``count = 1``.
    """

    table: torch.Tensor  # [G, W] int64
    count: torch.Tensor  # [G] float64, >= 1
    last: torch.Tensor  # [G] int64, count - 1
    group_ids: torch.Tensor  # [1, G] int64
    group_of_pos: torch.Tensor  # [T] int64
    offset_in_group: torch.Tensor  # [T] int64


@functools.lru_cache(maxsize=512)
def _shuffle_plan(T: int, h1: int, h2: int, device: str) -> _ShufflePlan:
    rows: list[list[int]] = []
    for t in range(0, T, h2):
        lo, hi = source_window(t, T, h1, h2)
        rows.append([c for c in range(lo, hi + 1) if c != t] or [t])
    width = max(len(r) for r in rows)
    table = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.int64)
    count = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    pos = torch.arange(T, dtype=torch.int64)
    dev = torch.device(device)
    return _ShufflePlan(
        table=table.to(dev),
        count=count.to(dev, torch.float64),
        last=(count - 1).to(dev),
        group_ids=torch.arange(len(rows), dtype=torch.int64).unsqueeze(0).to(dev),
        group_of_pos=(pos // h2).to(dev),
        offset_in_group=(pos % h2).to(dev),
    )


def apply_shuffles(clip: torch.Tensor, indices: torch.Tensor, temporal_dim: int) -> torch.Tensor:
    """Apply ``n`` shuffles to a clip (or a batch of clips) with one gather.

    Args:
        clip: any layout with a time axis at ``temporal_dim``, e.g. ``[T, H, W, 3]``
            uint8 0..255, ``[C, T, H, W]`` or ``[B, C, T, H, W]`` float 0..1.
        indices: int64 ``[n, T]`` from :func:`shuffle_indices` (or ``[T]`` for one).
        temporal_dim: the time axis of ``clip`` (negative values allowed).

    Returns:
        ``[n, *clip.shape]``: the ``n`` shuffled copies stacked in a new leading
        axis, on ``clip``'s device and dtype. Differentiable w.r.t. ``clip`` (it is
        an ``index_select``), so gradients flow through the defense.
    """
    if indices.dim() == 1:
        indices = indices.unsqueeze(0)
    if indices.dim() != 2:
        raise ValueError(f"indices must be [n, T], got shape {tuple(indices.shape)}")
    dim = temporal_dim % clip.dim()
    T = clip.shape[dim]
    if indices.shape[1] != T:
        raise ValueError(f"indices are for T={indices.shape[1]} frames, clip has {T} on dim {dim}")
    n = indices.shape[0]
    flat = indices.reshape(-1)
    if flat.device != clip.device or flat.dtype != torch.int64:
        flat = flat.to(device=clip.device, dtype=torch.int64)
    gathered = clip.index_select(dim, flat)  # time axis now n*T
    shape = clip.shape
    gathered = gathered.view(*shape[:dim], n, T, *shape[dim + 1 :])
    return gathered if dim == 0 else gathered.movedim(dim, 0)


# --------------------------------------------------------------------------- #
# Ensemble vote
# --------------------------------------------------------------------------- #
@dataclass
class VoteResult:
    """Outcome of one clip's ensemble.

    ``counts[k]`` is how many of the ``n`` copies voted for class ``k``; ``share``
    is ``counts[label] / n``; ``mean_probs`` is the mean softmax over copies.
    """

    label: int
    counts: torch.Tensor  # [K] int64
    share: float
    mean_probs: torch.Tensor  # [K] float


def majority_vote_batch(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Majority vote of ``n`` copies for each of ``B`` clips.

    Args:
        logits: ``[B, n, K]`` (or ``[n, K]`` for one clip).

    Returns:
        ``(labels [B], counts [B, K], mean_probs [B, K])``. The label is the most
        voted argmax; ties go to the tied class with the higher mean softmax.
    """
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, n, K], got {tuple(logits.shape)}")
    logits = logits.detach().float()
    K = logits.shape[-1]
    votes = logits.argmax(dim=-1)  # [B, n]
    counts = torch.nn.functional.one_hot(votes, K).sum(dim=1)  # [B, K]
    mean_probs = logits.softmax(dim=-1).mean(dim=1)
    tied = counts == counts.max(dim=-1, keepdim=True).values
    score = torch.where(tied, mean_probs, torch.full_like(mean_probs, -1.0))
    return score.argmax(dim=-1), counts, mean_probs


def majority_vote(logits: torch.Tensor) -> VoteResult:
    """Majority vote over the ``n`` copies of one clip; ``logits`` is ``[n, K]``."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [n, K], got {tuple(logits.shape)}")
    labels, counts, mean_probs = majority_vote_batch(logits)
    label = int(labels[0])
    n = logits.shape[0]
    return VoteResult(
        label=label,
        counts=counts[0],
        share=float(counts[0, label]) / n,
        mean_probs=mean_probs[0],
    )


# --------------------------------------------------------------------------- #
# Classifier wrapper
# --------------------------------------------------------------------------- #
class ShuffleEnsemble(torch.nn.Module):
    """A classifier defended by an ensemble of temporal shuffles.

    ``forward(videos)`` takes float ``[B, C, T, H, W]`` in ``[0, 1]`` and returns the
    logits of every shuffled copy, ``[B, n, K]``; :meth:`predict` reduces them by
    majority vote. The shuffle is a gather, so gradients flow through it (this
    is what an adaptive EOT attacker differentiates).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preset: ShufflePreset,
        *,
        temporal_dim: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.preset = preset
        self.temporal_dim = temporal_dim
        self.generator = generator

    def forward(self, videos: torch.Tensor, n: int | None = None) -> torch.Tensor:
        n = n or self.preset.ensemble
        T = videos.shape[self.temporal_dim]
        idx = shuffle_indices(T, self.preset.h1, self.preset.h2, n, generator=self.generator)
        copies = apply_shuffles(videos, idx, self.temporal_dim)  # [n, B, ...]
        B = videos.shape[0]
        logits = self.model(copies.reshape(n * B, *videos.shape[1:]))
        return logits.view(n, B, -1).transpose(0, 1)

    @torch.no_grad()
    def predict(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Majority-vote labels ``[B]`` and vote counts ``[B, K]``."""
        labels, counts, _ = majority_vote_batch(self.forward(videos))
        return labels, counts
