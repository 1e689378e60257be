"""Adaptive EOT attacks against every randomized defense row of the evaluation.

:class:`service.robustness.attacks.EOT` adapts I-FGSM to the temporal shuffles only.
The comparison table (paper Table 5) also has rows whose randomness is Gaussian noise
(randomized smoothing), noise followed by a denoiser (denoised smoothing), and both
with shuffles. An adaptive attack must average its gradient over *that row's*
randomness (Athalye et al., "Obfuscated Gradients", EOT); :class:`AdaptiveEOT` does,
for any combination of

* a temporal shuffle ``S`` (Algorithm 1, :func:`service.defense.shuffle_indices` +
  :func:`service.defense.apply_shuffles`; the gather is differentiable),
* additive Gaussian noise of std ``sigma`` in pixel space (optionally clamped to
  ``[0, 1]``, as the defense does),
* a per-frame denoiser ``D`` (:class:`service.robustness.denoise.DenoisedClassifier`,
  differentiated through, no straight-through approximation),

in the defense's own order: ``f(D(S(x) + sigma * n))``. The loss ascended is
``mean_k CE(f(D(S_k(x) + sigma * n_k)), y)`` over ``draws`` fresh draws per step.

:func:`eot_for_row` builds the attack adapted to one row of
:func:`service.robustness.smoothing.make_defenses` by name. For the undefended row
("none") it is EOT with *identity* shuffles (``h1 = 0``): plain I-FGSM through the
EOT code path, which is the credibility check -- against the undefended model it must
fool at least as many clips as :class:`~service.robustness.attacks.IFGSM`.

Budget: the library's EOT defaults (``eps = 4/255``, 30 steps, ``alpha = eps/steps``,
10 draws per step, cross-entropy); nothing here lowers them.
"""

from __future__ import annotations

import torch
from torch import nn

from service.defense import ShufflePreset, apply_shuffles, shuffle_indices
from service.robustness.attacks import IFGSM, LossName, _per_clip_loss
from service.robustness.denoise import DenoisedClassifier

__all__ = ["ROW_RANDOMNESS", "AdaptiveEOT", "eot_for_row"]

#: Which randomness each defense row has: (shuffles, noise, denoiser).
ROW_RANDOMNESS: dict[str, tuple[bool, bool, bool]] = {
    "none": (False, False, False),
    "rs": (False, True, False),
    "denoise": (False, True, True),
    "shuffle": (True, False, False),
    "shuffle+rs": (True, True, False),
    "shuffle+denoise": (True, True, True),
}

#: Identity shuffles: Algorithm 1 with ``h1 = 0`` keeps every frame in place.
IDENTITY = ShufflePreset(h1=0, h2=1, ensemble=1)


class AdaptiveEOT(IFGSM):
    """I-FGSM on the expectation over a defense's randomness (EOT), untargeted.

    Each step draws ``draws`` randomizations ``R_k`` -- shuffle indices first (one
    ``shuffle_indices(T, h1, h2, draws)`` call), then the noise -- from the attack's
    generator and ascends ``mean_k loss(f(R_k(x)), y)``. With only a shuffle preset
    and no noise, the draws and the arithmetic are those of
    :class:`~service.robustness.attacks.EOT`, so the two give the same clips for the
    same seed (a test checks it).

    Args:
        model: the undefended classifier, float ``[B, 3, T, H, W]`` in ``[0, 1]`` ->
            logits ``[B, K]``.
        preset: shuffle hyper-parameters (``h1``, ``h2``; ``ensemble`` unused), or None
            for no shuffle.
        sigma: std of the Gaussian noise in pixel units, or None for no noise.
        denoiser: per-frame denoiser applied after the noise (needs ``sigma``).
        clamp_noise: clamp the noisy clip to ``[0, 1]`` (match the defense's
            :class:`~service.robustness.smoothing.Smooth` ``clamp``; default False).
        draws: randomizations averaged per step (default 10).
        batch_size: at most this many copies per forward pass (draws are chunked and
            their gradients summed); None = all ``draws * B`` at once.
        eps, steps, alpha, loss: as :class:`~service.robustness.attacks.IFGSM`
            (``4/255``, 30, ``eps / steps``, cross-entropy).
    """

    name = "eot"

    def __init__(
        self,
        model: nn.Module,
        *,
        preset: ShufflePreset | None = None,
        sigma: float | None = None,
        denoiser: nn.Module | None = None,
        clamp_noise: bool = False,
        draws: int = 10,
        eps: float = 4 / 255,
        steps: int = 30,
        alpha: float | None = None,
        loss: LossName = "ce",
        temporal_dim: int = 2,
        batch_size: int | None = None,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if denoiser is not None and sigma is None:
            raise ValueError("a denoiser row needs its noise sigma")
        if sigma is not None and sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        classifier: nn.Module = model
        if denoiser is not None:
            classifier = DenoisedClassifier(denoiser, model, temporal_dim=temporal_dim)
        super().__init__(
            classifier,
            eps=eps,
            steps=steps,
            alpha=alpha,
            loss=loss,
            seed=seed,
            generator=generator,
            device=device,
        )
        self.preset = preset
        self.sigma = sigma
        self.denoised = denoiser is not None
        self.clamp_noise = clamp_noise
        self.draws = int(draws)
        self.temporal_dim = temporal_dim
        self.batch_size = batch_size
        self.clip_generators: list[torch.Generator] | None = None

    # ------------------------------------------------------------- randomness
    def set_clip_generators(self, generators: list[torch.Generator] | None) -> AdaptiveEOT:
        """Draw each clip's randomness from its own generator (one per clip of the next call).

        Clip ``b``'s shuffles and noise then come from ``generators[b]`` exactly as a
        one-clip call with that generator would draw them, so a clip's attack does not
        depend on the other clips batched with it (up to float round-off of batched
        kernels). ``None`` goes back to one set of draws shared by the batch.
        """
        self.clip_generators = generators
        return self

    def _shuffles_from(self, T: int, gen: torch.Generator | None) -> torch.Tensor:
        if self.preset is None:
            return torch.arange(T, dtype=torch.int64).expand(self.draws, T)
        return shuffle_indices(T, self.preset.h1, self.preset.h2, self.draws, generator=gen)

    def _noise_from(
        self, shape: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None
    ) -> torch.Tensor:
        gen_device = gen.device if gen is not None else like.device
        noise = torch.randn(
            (self.draws, *shape), generator=gen, device=gen_device, dtype=like.dtype
        )
        return noise.to(like.device)

    def _draw_shuffles(self, T: int, B: int = 1) -> torch.Tensor:
        """``[draws, T]`` shuffle indices shared by the batch, or ``[draws, B, T]`` per clip
        (identity rows without a preset)."""
        if self.clip_generators is None:
            return self._shuffles_from(T, self.generator)
        self._check_generators(B)
        return torch.stack([self._shuffles_from(T, g) for g in self.clip_generators], dim=1)

    def _draw_noise(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor | None:
        """``[draws, *shape]`` standard normal noise on ``like``'s device (None without noise)."""
        if self.sigma is None:
            return None
        if self.clip_generators is None:
            return self._noise_from(tuple(shape), like, self.generator)
        self._check_generators(shape[0])
        per_clip = [self._noise_from(tuple(shape[1:]), like, g) for g in self.clip_generators]
        return torch.stack(per_clip, dim=1)

    def _check_generators(self, B: int) -> None:
        assert self.clip_generators is not None
        if len(self.clip_generators) != B:
            raise ValueError(f"{len(self.clip_generators)} clip generators for {B} clips")

    def _copies(
        self, x: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """The randomized copies ``[d * B, ...]`` of ``x`` for draws ``idx`` (``[d, T]``
        shared by the batch, or ``[d, B, T]`` per clip)."""
        d = idx.shape[0]
        if idx.dim() == 2:
            copies = apply_shuffles(x, idx, self.temporal_dim)  # [d, B, ...]
        else:
            # per clip: copies[k, b] = x[b] with its frames taken in the order idx[k, b]
            dim = self.temporal_dim % x.dim()
            view = [d, x.shape[0]] + [1] * (x.dim() - 1)
            view[dim + 1] = x.shape[dim]
            index = idx.to(x.device).view(view).expand(d, *x.shape)
            copies = x.unsqueeze(0).expand(d, *x.shape).gather(dim + 1, index)
        if noise is not None and self.sigma is not None:
            copies = copies + self.sigma * noise
            if self.clamp_noise:
                copies = copies.clamp(0.0, 1.0)
        return copies.reshape(d * x.shape[0], *x.shape[1:])

    # ------------------------------------------------------------- gradients
    def input_grad(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        T = videos.shape[self.temporal_dim]
        idx = self._draw_shuffles(T, videos.shape[0])
        noise = self._draw_noise(videos.shape, videos)
        per_chunk = self.draws
        if self.batch_size is not None:
            per_chunk = max(1, self.batch_size // videos.shape[0])
        x = videos.detach().requires_grad_(True)
        grad = torch.zeros_like(videos)
        for start in range(0, self.draws, per_chunk):
            stop = min(start + per_chunk, self.draws)
            chunk_noise = None if noise is None else noise[start:stop]
            copies = self._copies(x, idx[start:stop], chunk_noise)
            d = stop - start
            logits = self.model(copies)
            loss = _per_clip_loss(logits, labels.repeat(d), self.loss).sum() / self.draws
            (g,) = torch.autograd.grad(loss, x)
            grad = grad + g
        return grad

    def clip_loss(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-clip loss ``[B]`` averaged over ``draws`` fresh randomizations."""
        idx = self._draw_shuffles(videos.shape[self.temporal_dim], videos.shape[0])
        noise = self._draw_noise(videos.shape, videos)
        logits = self.model(self._copies(videos, idx, noise))
        d, B = self.draws, videos.shape[0]
        return _per_clip_loss(logits, labels.repeat(d), self.loss).view(d, B).mean(dim=0)

    def describe(self) -> dict[str, object]:
        """The attack's settings, JSON-able (for the evaluation's records)."""
        return {
            "attack": "eot",
            "shuffle": None
            if self.preset is None
            else {"h1": self.preset.h1, "h2": self.preset.h2},
            "sigma": self.sigma,
            "denoiser": self.denoised,
            "clamp_noise": self.clamp_noise,
            "draws": self.draws,
            "eps": self.eps,
            "steps": self.steps,
            "alpha": self.alpha,
            "loss": self.loss,
        }


def eot_for_row(
    row: str,
    model: nn.Module,
    *,
    preset: ShufflePreset,
    sigma: float,
    denoiser: nn.Module | None = None,
    clamp_noise: bool = False,
    draws: int = 10,
    eps: float = 4 / 255,
    steps: int = 30,
    alpha: float | None = None,
    temporal_dim: int = 2,
    batch_size: int | None = None,
    seed: int | None = 0,
    device: torch.device | str | None = None,
) -> AdaptiveEOT:
    """The EOT attack adapted to defense row ``row`` (a key of :data:`ROW_RANDOMNESS`).

    ``preset`` is the shuffle rows' preset, ``sigma``/``denoiser``/``clamp_noise`` the
    smoothing rows' settings: the attacker knows the defense exactly (white box), only
    not the defender's random draws. Row "none" gets identity shuffles (``h1 = 0``).
    """
    try:
        shuffles, noise, denoised = ROW_RANDOMNESS[row]
    except KeyError:
        raise KeyError(f"unknown defense row {row!r}; known: {sorted(ROW_RANDOMNESS)}") from None
    if denoised and denoiser is None:
        raise ValueError(f"row {row!r} needs a denoiser")
    return AdaptiveEOT(
        model,
        preset=preset if shuffles else IDENTITY,
        sigma=sigma if noise else None,
        denoiser=denoiser if denoised else None,
        clamp_noise=clamp_noise,
        draws=draws,
        eps=eps,
        steps=steps,
        alpha=alpha,
        temporal_dim=temporal_dim,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
