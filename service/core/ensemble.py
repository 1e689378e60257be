"""The defense in torch, for the research harness: shuffles as index tensors, one
gather, and the ensemble classifier whose vote is the gateway's.

Pure tensor maths: this module imports torch and numpy only, so it can be used
from a notebook and the attack harness alike. Algorithm 1's index maths live in
:mod:`service.core.shuffle` (:func:`shuffle_indices` wraps it) and the decision rule
in :mod:`service.core.vote` (:func:`majority_vote_batch` hands it the logits): both
are written once, for the gateway and the harness alike.

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

from dataclasses import dataclass

import torch

from service.core.presets import ShufflePreset
from service.core.shuffle import check_shuffle_args, indices_from_uniforms, num_groups
from service.core.vote import vote_batch

__all__ = [
    "ShuffleEnsemble",
    "VoteResult",
    "apply_shuffles",
    "majority_vote",
    "majority_vote_batch",
    "make_generator",
    "shuffle_indices",
]


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
def shuffle_indices(
    T: int,
    h1: int,
    h2: int,
    n: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``n`` temporal shuffles of a ``T``-frame clip (paper Algorithm 1).

    A thin torch wrapper of the one implementation,
    :func:`service.core.shuffle.indices_from_uniforms` (its docstring states the
    semantics and the edge cases): the ``n x ceil(T / h2)`` uniform draws come from
    ``generator`` (``torch.rand``, float64), so a seeded generator gives the same
    shuffles as it always has. Every returned index lies in ``[0, T)``.

    Args:
        T: number of frames (>= 1).
        h1: half-width of the source window (>= 0).
        h2: length of the copied run of consecutive frames (>= 1).
        n: number of independent shuffles (>= 1).
        generator: source of randomness (torch's default generator when None).
        device: where the returned indices live (default: the generator's device).

    Returns:
        int64 tensor ``[n, T]``.
    """
    check_shuffle_args(T, h1, h2, n)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    out_device = torch.device(device) if device is not None else gen_device
    u = torch.rand(
        (n, num_groups(T, h2)), generator=generator, dtype=torch.float64, device=gen_device
    )
    idx = torch.from_numpy(indices_from_uniforms(T, h1, h2, u.cpu().numpy()))
    return idx.to(out_device)


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
    mean_probs: torch.Tensor  # [K] float64


def majority_vote_batch(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Majority vote of ``n`` copies for each of ``B`` clips, by the gateway's rule.

    The logits go to :func:`service.core.vote.vote_batch` (numpy, float64), the one
    decision rule: the label is the most voted argmax; ties go to the tied class with
    the higher mean softmax.

    Args:
        logits: ``[B, n, K]`` (or ``[n, K]`` for one clip), any device and float dtype.

    Returns:
        ``(labels [B] int64, counts [B, K] int64, mean_probs [B, K] float64)`` on
        ``logits``'s device.
    """
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, n, K], got {tuple(logits.shape)}")
    host = logits.detach().to(device="cpu", dtype=torch.float64).numpy()
    labels, counts, mean_probs = vote_batch(host)
    dev = logits.device
    return (
        torch.from_numpy(labels).to(dev),
        torch.from_numpy(counts).to(dev),
        torch.from_numpy(mean_probs).to(dev),
    )


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
