"""Randomized smoothing and the common interface of the defenses we compare.

* :class:`Smooth` -- randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019) of a
  video classifier with Gaussian noise in pixel space, with an explicit
  :attr:`Smooth.ABSTAIN`; optionally each noisy copy is first passed through a copy
  transform (a temporal shuffle: :class:`ShuffleCopies`).
* :class:`Defense` -- what the evaluation loops over: a ``name``,
  ``vote(videos, generator) -> (labels [B], counts [B, K] or None)`` and ``predict``
  (``ABSTAIN = -1`` allowed).
* Rows: :class:`NoDefense` ("none"), :class:`ShuffleVote` ("shuffle"),
  :class:`SmoothedDefense` ("rs", "denoise", "shuffle+rs", "shuffle+denoise"); the
  row registry (:mod:`service.research.robustness.registry`) declares and builds them.

Everything works on float ``[B, 3, T, H, W]`` clips in ``[0, 1]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from scipy.stats import binomtest, norm
from torch import nn

from service.core.ensemble import ShuffleEnsemble, apply_shuffles, shuffle_indices
from service.core.presets import ShufflePreset
from service.core.stats import clopper_pearson_lower
from service.research.robustness.attacks import attack_mode
from service.research.robustness.denoise import DenoisedClassifier

__all__ = [
    "ABSTAIN",
    "CopyTransform",
    "Defense",
    "NoDefense",
    "ShuffleCopies",
    "RS_ALPHA",
    "RS_N",
    "SIGMA",
    "ShuffleVote",
    "Smooth",
    "SmoothedDefense",
    "VotingDefense",
]

logger = logging.getLogger(__name__)

#: Label of a smoothed prediction that abstains.
ABSTAIN: int = -1

#: ``(clip [1, C, T, H, W], m, generator) -> [m, C, T, H, W]``: ``m`` randomized copies.
CopyTransform = Callable[[torch.Tensor, int, "torch.Generator | None"], torch.Tensor]


class ShuffleCopies:
    """Copy transform: ``m`` copies of a clip, each with its own temporal shuffle.

    Draws ``m`` shuffles with :func:`service.core.ensemble.shuffle_indices` (``h1``, ``h2``
    of ``preset``) and applies them with one gather (:func:`apply_shuffles`).
    """

    def __init__(self, preset: ShufflePreset, *, temporal_dim: int = 2) -> None:
        self.preset = preset
        self.temporal_dim = temporal_dim

    def __call__(
        self, clip: torch.Tensor, m: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        T = clip.shape[self.temporal_dim]
        idx = shuffle_indices(T, self.preset.h1, self.preset.h2, m, generator=generator)
        return apply_shuffles(clip, idx, self.temporal_dim)[:, 0]


def _randn(
    shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Standard normal noise of ``shape`` from ``generator`` (on its device), moved to ``like``."""
    device = generator.device if generator is not None else like.device
    noise = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)


class Smooth:
    """A randomized-smoothing video classifier (after locuslab/smoothing ``core.Smooth``).

    The smoothed classifier is ``g(x) = argmax_c P(f(t(x) + sigma * n) = c)`` with
    ``n ~ N(0, I)`` in pixel space (``[0, 1]`` scale) and ``t`` the copy transform
    (identity unless given, e.g. :class:`ShuffleCopies`). With ``clamp=True`` the
    noisy clip is clamped to ``[0, 1]`` before ``f``; the clamp is then part of the
    base classifier, so the certificate is unaffected. Default ``clamp=False``, as
    in Cohen et al.

    :meth:`predict` decides by a **two-sided binomial test** (``scipy.stats.binomtest``,
    ``p = 0.5``) of the top class count against the runner-up's: if its p-value
    exceeds ``alpha`` it returns :attr:`ABSTAIN`. Guarantee (Cohen et al., Thm. 2 of
    their appendix): the probability of returning a class other than ``g(x)`` is at
    most ``alpha``.

    :meth:`certify` (only without a copy transform) uses the one-sided
    Clopper-Pearson lower bound ``pA`` at level ``alpha`` and, when ``pA > 1/2``,
    returns the label with the L2 radius ``sigma * Phi^-1(pA)``, in pixel units; with
    probability at least ``1 - alpha`` ``g`` is constant within that radius.

    Args:
        base_classifier: ``[N, 3, T, H, W]`` float -> logits ``[N, K]``.
        num_classes: ``K`` (>= 2).
        sigma: noise std in pixel units.
        transform: optional copy transform applied before the noise.
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        sigma: float,
        *,
        clamp: bool = False,
        transform: CopyTransform | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.clamp = clamp
        self.transform = transform

    def _sample_counts(
        self, clip: torch.Tensor, num: int, batch_size: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Class counts ``[K]`` (int64) of ``f`` over ``num`` noisy copies of ``clip [1, ...]``."""
        counts = torch.zeros(self.num_classes, dtype=torch.int64)
        remaining = num
        while remaining > 0:
            m = min(batch_size, remaining)
            remaining -= m
            if self.transform is not None:
                copies = self.transform(clip, m, generator)
            else:
                copies = clip.expand(m, *clip.shape[1:])
            noisy = copies + self.sigma * _randn(copies.shape, generator, copies)
            if self.clamp:
                noisy = noisy.clamp(0.0, 1.0)
            preds = self.base_classifier(noisy).argmax(dim=1).cpu()
            counts += torch.bincount(preds, minlength=self.num_classes)
        return counts

    def _check(self, x: torch.Tensor, n: int, batch_size: int) -> None:
        if x.dim() != 5:
            raise ValueError(f"x must be [B, C, T, H, W], got {tuple(x.shape)}")
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got {n}, {batch_size}")

    @torch.no_grad()
    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Smoothed labels ``[B]`` (int64, :attr:`ABSTAIN` allowed) of clips ``x [B, 3, T, H, W]``.

        ``n`` noisy copies per clip, ``batch_size`` copies per forward pass; abstain
        unless the two-sided binomial test of top vs runner-up count rejects
        ``p = 1/2`` at level ``alpha``.
        """
        self._check(x, n, batch_size)
        labels = torch.full((x.shape[0],), ABSTAIN, dtype=torch.int64)
        with attack_mode(self.base_classifier):
            for i in range(x.shape[0]):
                counts = self._sample_counts(x[i : i + 1], n, batch_size, generator)
                top2 = counts.topk(2)
                n_a, n_b = int(top2.values[0]), int(top2.values[1])
                if binomtest(n_a, n_a + n_b, p=0.5).pvalue <= alpha:
                    labels[i] = int(top2.indices[0])
        return labels.to(x.device)

    @torch.no_grad()
    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Certified labels ``[B]`` and L2 radii ``[B]`` (pixel units; 0 when abstaining).

        ``n0`` copies pick the candidate class, ``n`` fresh copies bound its
        probability from below (Clopper-Pearson, one-sided, level ``alpha``).
        """
        if self.transform is not None:
            raise ValueError("certify needs a plain Gaussian smoothing (no copy transform)")
        self._check(x, n, batch_size)
        B = x.shape[0]
        labels = torch.full((B,), ABSTAIN, dtype=torch.int64)
        radii = torch.zeros(B, dtype=torch.float64)
        with attack_mode(self.base_classifier):
            for i in range(B):
                clip = x[i : i + 1]
                c_a = int(self._sample_counts(clip, n0, batch_size, generator).argmax())
                n_a = int(self._sample_counts(clip, n, batch_size, generator)[c_a])
                p_a = clopper_pearson_lower(n_a, n, alpha)
                if p_a > 0.5:
                    labels[i] = c_a
                    radii[i] = self.sigma * float(norm.ppf(p_a))
        return labels.to(x.device), radii


# --------------------------------------------------------------------------- #
# The defenses the evaluation compares (the rows: service.research.robustness.registry)
# --------------------------------------------------------------------------- #
#: Smoothing defaults: ``sigma = 0.25`` (a middle value of Cohen et al.'s grid
#: 0.12/0.25/0.5, pixel units); ``n = 100`` copies per clip and ``alpha = 0.001``
#: (Cohen et al. predict with ``n = 100,000`` for images; a video forward is ~two
#: orders of magnitude dearer, so ``n`` is the main knob, reported by the evaluation).
SIGMA: float = 0.25
RS_N: int = 100
RS_ALPHA: float = 0.001


@runtime_checkable
class Defense(Protocol):
    """A defended classifier as the evaluation sees it.

    ``vote(videos, generator)``: float ``[B, 3, T, H, W]`` in ``[0, 1]`` -> int64
    labels ``[B]`` on ``videos``' device (:data:`ABSTAIN` = -1 allowed) and the vote
    counts ``[B, K]`` of an ensemble (None for other defenses); ``predict`` returns
    the labels only. All randomness comes from ``generator`` (the global RNG when None).
    """

    name: str

    def vote(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def predict(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


class VotingDefense:
    """``predict`` = the labels of ``vote``."""

    def vote(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def predict(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.vote(videos, generator)[0]


class NoDefense(VotingDefense):
    """Row "none": the undefended model's argmax."""

    name = "none"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def vote(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, None]:
        with attack_mode(self.model):
            return self.model(videos).argmax(dim=1), None


class ShuffleVote(VotingDefense):
    """Row "shuffle": the paper's ensemble, :class:`service.core.ensemble.ShuffleEnsemble`,
    with the generator given per call (one set of ``preset.ensemble`` shuffles for the
    batch, majority vote, ties to the higher mean softmax)."""

    name = "shuffle"

    def __init__(self, model: nn.Module, preset: ShufflePreset, *, temporal_dim: int = 2) -> None:
        self.model = model
        self.preset = preset
        self.temporal_dim = temporal_dim

    @torch.no_grad()
    def vote(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ensemble = ShuffleEnsemble(
            self.model, self.preset, temporal_dim=self.temporal_dim, generator=generator
        )
        with attack_mode(self.model):
            return ensemble.predict(videos)


class SmoothedDefense(VotingDefense):
    """Rows "rs", "denoise", "shuffle+rs", "shuffle+denoise": :class:`Smooth` variants.

    * ``denoiser=None, preset=None`` -> "rs": Gaussian randomized smoothing of ``model``.
    * ``denoiser`` given -> "denoise": smoothing of
      ``DenoisedClassifier(denoiser, model)`` (Salman et al.'s denoised smoothing).
    * ``preset`` given -> "shuffle+...": every one of the ``n`` copies gets its own
      temporal shuffle before its noise (:class:`ShuffleCopies`), and the vote runs
      over all ``n`` copies -- a shuffle ensemble whose members are also noised (and
      denoised). Same ``n``, ``alpha`` and abstain test as "rs", so rows compare.

    Defaults: :data:`SIGMA`, :data:`RS_N`, :data:`RS_ALPHA`.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        sigma: float = SIGMA,
        n: int = RS_N,
        alpha: float = RS_ALPHA,
        batch_size: int = 32,
        preset: ShufflePreset | None = None,
        denoiser: nn.Module | None = None,
        clamp: bool = False,
        temporal_dim: int = 2,
    ) -> None:
        self.model = model
        self.n = n
        self.alpha = alpha
        self.batch_size = batch_size
        self.preset = preset
        base: nn.Module = model
        if denoiser is not None:
            base = DenoisedClassifier(denoiser, model, temporal_dim=temporal_dim)
        transform = ShuffleCopies(preset, temporal_dim=temporal_dim) if preset else None
        self.smooth = Smooth(base, num_classes, sigma, clamp=clamp, transform=transform)
        kind = "denoise" if denoiser is not None else "rs"
        self.name = f"shuffle+{kind}" if preset is not None else kind

    def vote(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, None]:
        labels = self.smooth.predict(videos, self.n, self.alpha, self.batch_size, generator)
        return labels, None
