"""White-box attacks on video classifiers, in pixel space.

Every attack takes a model with the project's contract -- float ``[B, 3, T, H, W]``
RGB in ``[0, 1]`` in (normalization is the model's first layer), logits ``[B, K]``
out -- and returns adversarial clips of the same shape, also in ``[0, 1]``, within
an L-inf ball of radius ``eps`` around the input.

The :class:`Attack` base class owns the chores (eval mode and restoring every
module's training flag, freezing the parameters so no gradient reaches them,
device, clamping to the eps-ball and to ``[0, 1]``, the random generator); each
subclass implements only its maths in :meth:`Attack.forward`. Hyper-parameters are
constructor keywords with the defaults of the paper each attack comes from.

* :class:`IFGSM` -- the paper's eqs. (1)-(2), untargeted.
* :class:`StaticIFGSM` -- paper Sec. 4.2 Case 1: one perturbation shared by all frames.
* :class:`FramewiseIFGSM` -- Sec. 4.2 Case 2: one one-frame perturbation per frame.
* :class:`OneFrameAttack` -- Hwang et al., ICCV 2021 ("Just One Moment").
* :class:`Flickering` -- Pony et al., CVPR 2021 (over-the-air flickering).
* :class:`EOT` -- adaptive I-FGSM through a defense's randomness (shuffles, noise,
  a denoiser).

Attacks are meant to be measured at full strength: the defaults are the papers'
settings, and gradients always flow through whatever the attacked model contains.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from service.core.ensemble import ShuffleEnsemble, apply_shuffles, shuffle_indices
from service.core.presets import ShufflePreset
from service.research.robustness.denoise import DenoisedClassifier

__all__ = [
    "EOT",
    "EOT_LOSSES",
    "SCHEDULES",
    "IFGSM",
    "Attack",
    "Flickering",
    "FramewiseIFGSM",
    "OneFrameAttack",
    "StaticIFGSM",
    "attack_mode",
    "flicker_metrics",
    "per_clip_loss",
]

logger = logging.getLogger(__name__)

LossName = Literal["ce", "cw"]
#: EOT's losses: per copy (``ce``, ``cw``, ``vote``, averaged over the draws) or on the
#: mean logits over the draws (``ce_mean``, ``cw_mean``); see :class:`EOT`.
EOTLoss = Literal["ce", "cw", "vote", "ce_mean", "cw_mean"]
EOT_LOSSES: tuple[str, ...] = ("ce", "cw", "vote", "ce_mean", "cw_mean")
#: the mean-logit losses and the per-copy loss each applies to the mean (and to the
#: identity copy, which is not part of the mean)
MEAN_LOSS_BASE: dict[str, LossName] = {"ce_mean": "ce", "cw_mean": "cw"}
#: Step-size schedules of :class:`EOT`.
Schedule = Literal["constant", "cosine", "step"]
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with frozen parameters for the duration of the block.

    Every submodule's ``training`` flag and every parameter's ``requires_grad`` flag
    is recorded and restored on exit (also on error), so a model that was half in
    train mode comes back exactly as it was, and no ``.grad`` is ever written to
    its parameters (gradients are taken w.r.t. the input only).
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def per_clip_loss(logits: torch.Tensor, labels: torch.Tensor, loss: LossName) -> torch.Tensor:
    """Loss to *ascend*, one value per clip: ``[B]``.

    ``"ce"``: cross-entropy of the true label. ``"cw"``: the Carlini-Wagner margin on
    logits, ``max_{j != y} z_j - z_y`` (not clipped, so it keeps pushing past the
    decision boundary).
    """
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    if loss == "cw":
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        return other.max(dim=1).values - true
    raise ValueError(f"unknown loss {loss!r}; use 'ce' or 'cw'")


class Attack:
    """Base class: the chores around an attack's maths.

    Subclasses implement :meth:`forward` on clips already on the attack's device,
    inside :func:`attack_mode` and ``torch.enable_grad()``; the result is projected
    onto the eps-ball around the input and onto ``[0, 1]`` here, so every attack
    honours ``|adv - videos|_inf <= eps`` and ``0 <= adv <= 1`` whatever its maths.

    Args:
        model: classifier, ``[B, 3, T, H, W]`` float in ``[0, 1]`` -> logits ``[B, K]``.
        eps: L-inf radius in pixel units (``[0, 1]`` scale).
        steps: iterations of the attack (>= 1; each subclass gives its default).
        seed: seeds a fresh ``torch.Generator`` at every call, so the same seed gives
            the same result; ``None`` draws fresh entropy (logged, so still
            reproducible).
        generator: use this generator instead (it advances across calls; ``seed`` is
            then ignored).
        device: where the attack runs (default: the model's parameters' device).
    """

    name: str = "attack"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        steps: int = 1,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model = model
        self.eps = float(eps)
        self.seed = seed
        self._user_generator = generator
        self.generator: torch.Generator | None = None
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)

    # ------------------------------------------------------------------ chores
    def _fresh_generator(self) -> torch.Generator:
        if self._user_generator is not None:
            return self._user_generator
        gen = torch.Generator(device="cpu")
        if self.seed is None:
            gen.seed()
            logger.info("%s: no seed given, drew seed %d", self.name, gen.initial_seed())
        else:
            gen.manual_seed(int(self.seed))
        return gen

    def project(self, clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """Clip ``adv`` to the L-inf ball of radius ``eps`` around ``clean``, then to ``[0, 1]``."""
        adv = torch.minimum(torch.maximum(adv, clean - self.eps), clean + self.eps)
        return adv.clamp(0.0, 1.0)

    def __call__(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial clips for ``videos`` (float ``[B, 3, T, H, W]`` in ``[0, 1]``).

        ``labels`` are the true labels ``[B]`` (int64); the attacks are untargeted.
        Returns a detached tensor of ``videos``' shape, dtype and device.
        """
        if videos.dim() != 5:
            raise ValueError(f"videos must be [B, C, T, H, W], got {tuple(videos.shape)}")
        if labels.shape != videos.shape[:1]:
            raise ValueError(f"labels must be [B]={videos.shape[0]}, got {tuple(labels.shape)}")
        clean = videos.detach().to(self.device, torch.float32)
        y = labels.detach().to(self.device, torch.int64)
        self.generator = self._fresh_generator()
        with attack_mode(self.model), torch.enable_grad():
            adv = self.forward(clean, y)
        adv = self.project(clean, adv.detach())
        return adv.to(device=videos.device, dtype=videos.dtype)

    def forward(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The attack's maths: adversarial clips for clean ``videos`` on ``self.device``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        keys = [k for k in vars(self) if not k.startswith("_") and k not in ("model", "generator")]
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- #
# I-FGSM family
# --------------------------------------------------------------------------- #
class IFGSM(Attack):
    """Iterative FGSM, the paper's eqs. (1)-(2) (Kurakin et al.), untargeted.

    ``x_0 = x``; ``x_{m+1} = clip_{x,eps}(x_m + alpha * sign(grad_x L(x_m, y)))``,
    clipped to the eps-ball and to ``[0, 1]`` after every step; no random start.

    Args:
        eps: L-inf radius, default ``4/255`` (the paper's).
        steps: iterations ``M``, default 30 (the paper's).
        alpha: step size, default ``eps / steps`` (the paper's).
        loss: ``"ce"`` (cross-entropy, the paper's) or ``"cw"`` (logit margin).
    """

    name = "ifgsm"
    #: the losses this attack accepts
    LOSSES: tuple[str, ...] = ("ce", "cw")

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 4 / 255,
        steps: int = 30,
        alpha: float | None = None,
        loss: LossName = "ce",
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(model, eps=eps, steps=steps, seed=seed, generator=generator, device=device)
        if loss not in self.LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {self.LOSSES}")
        self.alpha = float(alpha) if alpha is not None else self.eps / self.steps
        self.loss = loss

    def clip_loss(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-clip loss ``[B]`` of the attacked model at ``videos``."""
        return per_clip_loss(self.model(videos), labels, self.loss)

    def input_grad(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Gradient of the summed per-clip loss w.r.t. ``videos`` (same shape)."""
        x = videos.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.clip_loss(x, labels).sum(), x)
        return grad

    def iterate(
        self, clean: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the ``steps`` I-FGSM updates from ``clean``.

        ``mask`` (broadcastable to the clip, 0/1) restricts the perturbation to part
        of the clip, e.g. one frame ``[1, 1, T, 1, 1]``.
        """
        x = clean
        for _ in range(self.steps):
            step = self.alpha * self.input_grad(x, labels).sign()
            if mask is not None:
                step = step * mask
            x = self.project(clean, x + step)
        return x

    def forward(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.iterate(videos, labels)


class StaticIFGSM(IFGSM):
    """Static perturbation (paper Sec. 4.2, Case 1): one perturbation for all frames.

    The perturbation ``p`` is ``[B, 3, 1, H, W]`` (one image per clip) broadcast over
    the ``T`` frames; I-FGSM runs on ``p`` itself (its gradient is the sum of the
    frame gradients): ``p <- clip_eps(p + alpha * sign(grad_p L(clip_01(x + p), y)))``.
    Where the clip to ``[0, 1]`` saturates a pixel, that frame's effective
    perturbation is smaller than ``p``; otherwise every frame gets exactly ``p``.
    Defaults as :class:`IFGSM`.
    """

    name = "static"

    def forward(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, C, _, H, W = videos.shape
        p = torch.zeros((B, C, 1, H, W), device=videos.device, dtype=videos.dtype)
        for _ in range(self.steps):
            p.requires_grad_(True)
            loss = self.clip_loss((videos + p).clamp(0.0, 1.0), labels).sum()
            (grad,) = torch.autograd.grad(loss, p)
            p = (p.detach() + self.alpha * grad.sign()).clamp(-self.eps, self.eps)
        return videos + p


def _frame_mask(T: int, frame: int, like: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros((1, 1, T, 1, 1), device=like.device, dtype=like.dtype)
    mask[:, :, frame] = 1.0
    return mask


class FramewiseIFGSM(IFGSM):
    """Framewise perturbation (paper Sec. 4.2, Case 2).

    For every frame position ``i`` an I-FGSM perturbation that lives on frame ``i``
    only (a one-frame attack, all other frames untouched) is crafted against the
    clean clip; the ``T`` perturbations are then merged -- frame ``i`` gets the
    perturbation crafted for it -- and clipped to the eps-ball. Costs ``T * steps``
    gradient evaluations. Defaults as :class:`IFGSM`.
    """

    name = "framewise"

    def forward(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        T = videos.shape[2]
        delta = torch.zeros_like(videos)
        for i in range(T):
            mask = _frame_mask(T, i, videos)
            delta = delta + (self.iterate(videos, labels, mask) - videos) * mask
        return videos + delta


class OneFrameAttack(IFGSM):
    """One frame attack (Hwang et al., ICCV 2021, "Just One Moment").

    I-FGSM whose perturbation lives on a single frame, at that clip's most vulnerable
    position. Position choice (``frame=None``, the default): exhaustive search --
    the one-frame I-FGSM is run at *every* position and, per clip, the result that
    fools the model is kept, ties (and clips fooled nowhere) broken by the highest
    loss. This is the strongest choice (it upper-bounds any heuristic such as the
    largest gradient norm) at ``T * steps`` gradient evaluations. ``frame=i`` attacks
    position ``i`` only. The chosen positions of the last call are in
    :attr:`last_frames` (``[B]`` int64).

    Budget: the same ``eps = 4/255``, ``steps = 30``, ``alpha = eps / steps`` as
    :class:`IFGSM`, applied to one frame. The original paper studies a range of
    one-frame budgets; we do not rely on a specific value from it, so the default is
    the defended paper's I-FGSM budget and any other is a constructor keyword (the
    evaluation reports the one it used).
    """

    name = "one_frame"

    def __init__(self, model: nn.Module, *, frame: int | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.frame = frame
        self.last_frames: torch.Tensor | None = None

    def forward(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, T = videos.shape[0], videos.shape[2]
        positions = range(T) if self.frame is None else [self.frame % T]
        best = videos.clone()
        best_fooled = torch.zeros(B, dtype=torch.bool, device=videos.device)
        best_loss = torch.full((B,), float("-inf"), device=videos.device)
        best_frame = torch.zeros(B, dtype=torch.int64, device=videos.device)
        for i in positions:
            adv = self.iterate(videos, labels, _frame_mask(T, i, videos))
            with torch.no_grad():
                logits = self.model(adv)
                loss = per_clip_loss(logits, labels, self.loss)
                fooled = logits.argmax(dim=1) != labels
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best = torch.where(better.view(B, 1, 1, 1, 1), adv, best)
            best_fooled = torch.where(better, fooled, best_fooled)
            best_loss = torch.where(better, loss, best_loss)
            best_frame = torch.where(better, torch.full_like(best_frame, i), best_frame)
        self.last_frames = best_frame.cpu()
        logger.debug("one-frame attack: positions %s", self.last_frames.tolist())
        return best


class EOT(IFGSM):
    """Adaptive I-FGSM on the expectation over a defense's randomness (EOT, Athalye et al.).

    The one EOT of the project: every randomized defense row of the evaluation gets
    it, configured with that row's randomness (the row registry,
    :mod:`service.research.robustness.registry`, says which), in the defense's own order
    ``f(D(S(x) + sigma * n))``:

    * a temporal shuffle ``S`` (Algorithm 1: :func:`service.core.ensemble.shuffle_indices` +
      :func:`service.core.ensemble.apply_shuffles`; the gather is differentiable),
    * additive Gaussian noise of std ``sigma`` in pixel space (optionally clamped to
      ``[0, 1]`` as the defense does),
    * a per-frame denoiser ``D`` (:class:`~service.research.robustness.denoise.DenoisedClassifier`,
      differentiated through, no straight-through approximation).

    Each step draws ``draws`` randomizations -- shuffle indices first (one
    ``shuffle_indices(T, h1, h2, draws)`` call), then the noise -- and ascends the
    loss over them: ``d <- clip_eps(d + alpha_m * sign(g))``, ``x = clip_01(x0 + d)``.

    Losses (``loss``), ascended:

    * ``"ce"`` / ``"cw"``: the mean over the draws of each copy's cross-entropy /
      Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (the paper's EOT is ``"ce"``);
    * ``"ce_mean"`` / ``"cw_mean"``: cross-entropy / CW margin of the *mean logits*
      over the draws (computed exactly also when the draws are chunked: a no-grad
      pass gives the mean, a second pass back-propagates its gradient chunk by chunk);
    * ``"vote"``: vote-aware, ``mean_k min(margin_k, kappa)``: a copy already fooled
      by ``kappa`` stops pulling, so the step goes to the copies still voting right.

    Strength options: ``alpha`` (default ``eps / steps``, the paper's), ``schedule``
    (``constant``; ``cosine``: ``alpha * (1 + cos(pi m / steps)) / 2``; ``step``:
    alpha halved at 50% and 75% of the steps), ``momentum`` (MI-FGSM: the sign of
    ``g_m = mu g_{m-1} + grad / mean|grad|``), ``restarts`` (restart 0 starts at the
    clean clip, the others at a uniform point of the eps-ball; per clip the restart
    whose copies vote least for the true label on a fresh set of the attacker's own
    draws is kept) and ``static`` (one perturbation ``[B, 3, 1, H, W]`` shared by all
    frames: its gradient is the sum of the frames'). ``patience`` (None: off) lets a
    clip leave the batch once *every* copy of ``patience`` consecutive steps was
    fooled by a margin of at least ``kappa`` (with the vote-aware loss its gradient
    was then zero). The saturated variants use ``kappa = 2`` (logits); on the
    default model ``kappa = 0`` and ``kappa = 2`` both left 6 of 32 clips defended, and
    every clip that left ``eot_vote``'s batch ended with at most 1% of fresh 10-draw
    votes right (all 64 shuffles scored): the patience rule did not free a clip early.
    ``record_at`` keeps the iterates
    of the first restart after those step counts in :attr:`trajectory`.

    Flag-aware options (the gateway's ``suspected_adversarial`` flag compares the
    shuffled vote with the unshuffled prediction): ``include_identity`` adds the
    unshuffled, noise-free clip as one extra copy to every step, its loss weighted
    ``identity_weight`` against the mean over the draws (1: as much as the whole
    ensemble), so the undefended prediction is pushed off the true label too;
    ``agree`` (lambda >= 0) subtracts ``lambda`` times the spread of the copies'
    softmax around their mean, ``mean_k ||p_k - p_bar||^2`` (over the draws and the
    identity copy), so the copies (and the unshuffled prediction) fall on the *same*
    wrong class. With ``patience``, a clip then also counts as fooled only when the
    identity copy is fooled (and, with ``agree``, predicts the copies' mean class).

    With ``preset=None`` or ``h1 = 0`` every shuffle is the identity and, without
    noise, the attack is I-FGSM with the same options on the undefended model (a
    plumbing test; the sanity checks of :mod:`service.research.experiments.adaptive` are the
    strength tests).

    Memory: at most ``batch_size`` copies per forward pass (draws chunked, gradients
    summed), whatever ``draws``; ``progress=True`` shows a bar over the steps.

    Args:
        model: the undefended classifier, float ``[B, 3, T, H, W]`` in ``[0, 1]`` ->
            logits ``[B, K]`` (see :meth:`for_ensemble` for a
            :class:`~service.core.ensemble.ShuffleEnsemble`).
        preset: shuffle hyper-parameters (``h1``, ``h2``; ``ensemble`` unused) or None.
        sigma: std of the Gaussian noise in pixel units, or None for no noise.
        denoiser: per-frame denoiser applied after the noise (needs ``sigma``).
        clamp_noise: clamp the noisy clip to ``[0, 1]`` (default False, as
            :class:`~service.research.robustness.smoothing.Smooth`).
        draws: randomizations per step (default 10).
        batch_size: at most this many copies per forward pass; None = all at once.
        eps, steps, alpha: as :class:`IFGSM` (``4/255``, 30, ``eps / steps``).
        loss, kappa, schedule, momentum, restarts, static, record_at, progress: above.
        include_identity, identity_weight, agree: the flag-aware options above.
    """

    name = "eot"
    LOSSES = EOT_LOSSES

    def __init__(
        self,
        model: nn.Module,
        preset: ShufflePreset | None = None,
        *,
        sigma: float | None = None,
        denoiser: nn.Module | None = None,
        clamp_noise: bool = False,
        draws: int = 10,
        eps: float = 4 / 255,
        steps: int = 30,
        alpha: float | None = None,
        loss: EOTLoss = "ce",
        kappa: float = 0.0,
        schedule: Schedule = "constant",
        momentum: float = 0.0,
        restarts: int = 1,
        static: bool = False,
        patience: int | None = None,
        include_identity: bool = False,
        identity_weight: float = 1.0,
        agree: float = 0.0,
        record_at: tuple[int, ...] = (),
        progress: bool = False,
        temporal_dim: int = 2,
        batch_size: int | None = None,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        _check_eot(sigma, denoiser, draws, batch_size)
        _check_strength(schedule, momentum, restarts)
        classifier: nn.Module = model
        if denoiser is not None:
            classifier = DenoisedClassifier(denoiser, model, temporal_dim=temporal_dim)
        super().__init__(
            classifier, eps=eps, steps=steps, alpha=alpha, loss=loss,  # type: ignore[arg-type]
            seed=seed, generator=generator, device=device,
        )  # fmt: skip
        self.preset, self.sigma = preset, sigma
        self.denoised = denoiser is not None
        self.clamp_noise = clamp_noise
        self.draws = int(draws)
        self.kappa = float(kappa)
        self.schedule = schedule
        self.momentum = float(momentum)
        self.restarts = int(restarts)
        self.static = bool(static)
        _check_flag_options(patience, identity_weight, agree)
        self.patience = patience
        self.include_identity = bool(include_identity)
        self.identity_weight = float(identity_weight)
        self.agree = float(agree)
        self.last_fooled: torch.Tensor | None = None
        self.record_at = tuple(sorted({int(s) for s in record_at if 1 <= s <= self.steps}))
        self.progress = progress
        self.temporal_dim = temporal_dim
        self.batch_size = batch_size
        self.clip_generators: list[torch.Generator] | None = None
        self.trajectory: dict[int, torch.Tensor] = {}

    @classmethod
    def for_ensemble(cls, ensemble: ShuffleEnsemble, **kwargs: object) -> EOT:
        """EOT against a :class:`~service.core.ensemble.ShuffleEnsemble` (model, preset, axis)."""
        return cls(
            ensemble.model,
            ensemble.preset,
            temporal_dim=ensemble.temporal_dim,
            **kwargs,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------- randomness
    def set_clip_generators(self, generators: list[torch.Generator] | None) -> EOT:
        """Draw each clip's randomness from its own generator (one per clip of the next call).

        Clip ``b``'s shuffles and noise then come from ``generators[b]`` exactly as a
        one-clip call with that generator would draw them, so a clip's attack does not
        depend on the other clips batched with it (up to float round-off of batched
        kernels). ``None`` goes back to one set of draws shared by the batch.
        """
        self.clip_generators = generators
        return self

    def _draw(self, T: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """``[draws, T]`` shuffle indices (identity rows without a preset)."""
        if self.preset is None:
            return torch.arange(T, dtype=torch.int64).expand(self.draws, T)
        gen = gen if gen is not None else self.generator
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
        """``[draws, T]`` shuffle indices shared by the batch, or ``[draws, B, T]`` per clip."""
        if self.clip_generators is None:
            return self._draw(T)
        self._check_generators(B)
        return torch.stack([self._draw(T, g) for g in self.clip_generators], dim=1)

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
    # ------------------------------------------------------------- gradients
    def _chunks(self, B: int) -> list[tuple[int, int]]:
        """Draw ranges ``[start, stop)`` with at most ``batch_size`` copies each."""
        per = self.draws if self.batch_size is None else max(1, self.batch_size // B)
        return [(s, min(s + per, self.draws)) for s in range(0, self.draws, per)]

    def _copy_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-copy loss ``[n]``: the per-copy losses (``ce``, ``cw``, ``vote``) as named;
        the mean-logit losses' base loss (``ce`` / ``cw``) on one copy (the identity
        copy, which is not part of the mean)."""
        if self.loss == "vote":
            return per_clip_loss(logits, labels, "cw").clamp(max=self.kappa)
        base = MEAN_LOSS_BASE.get(self.loss, self.loss)
        return per_clip_loss(logits, labels, base)  # type: ignore[arg-type]

    def _copy_logits(
        self, x: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None, a: int, b: int
    ) -> torch.Tensor:
        """Logits ``[b - a, B, K]`` of draws ``a..b-1``."""
        chunk_noise = None if noise is None else noise[a:b]
        return self.model(self._copies(x, idx[a:b], chunk_noise)).view(b - a, x.shape[0], -1)

    def _mean_logit_weights(
        self, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """``dL / d(mean logits)`` ``[B, K]`` for the mean-logit losses (no-grad pass)."""
        with torch.no_grad():
            mean = sum(self._copy_logits(x, idx, noise, a, b).sum(0) for a, b in self._chunks(
                x.shape[0])) / self.draws  # fmt: skip
        m = torch.as_tensor(mean).detach().requires_grad_(True)
        (w,) = torch.autograd.grad(per_clip_loss(m, labels, MEAN_LOSS_BASE[self.loss]).sum(), m)
        return w

    def _mean_probs(
        self, x: torch.Tensor, idx: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean softmax ``[B, K]`` over the draws (and the identity copy), no grad."""
        with torch.no_grad():
            total = sum(
                self._copy_logits(x, idx, noise, a, b).softmax(-1).sum(0)
                for a, b in self._chunks(x.shape[0])
            )
            if self.include_identity:
                total = total + self.model(x).softmax(-1)
        return torch.as_tensor(total) / (self.draws + int(self.include_identity))

    def _spread(self, logits: torch.Tensor, p_bar: torch.Tensor | None) -> torch.Tensor:
        """``agree`` times the copies' summed ``||p_k - p_bar||^2`` over the copy count
        (``logits [n, B, K]``; 0 without ``agree``). ``p_bar`` is held fixed: the exact
        gradient of the spread, since the deviations from the mean sum to zero."""
        if p_bar is None:
            return logits.new_zeros(())
        n = self.draws + int(self.include_identity)
        return self.agree * (logits.softmax(-1) - p_bar).square().sum() / n

    def _identity_term(
        self, x: torch.Tensor, labels: torch.Tensor, p_bar: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of the unshuffled copy and whether it is fooled (and agrees) per clip."""
        logits = self.model(x)
        margin = per_clip_loss(logits.detach(), labels, "cw")
        fooled = margin >= self.kappa
        if p_bar is not None:
            fooled &= logits.detach().argmax(-1) == p_bar.argmax(-1)
        loss = self.identity_weight * self._copy_loss(logits, labels).sum()
        return loss - self._spread(logits[None], p_bar), fooled

    def input_grad(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Gradient of the EOT loss (summed over clips) at ``videos``, fresh draws."""
        B = videos.shape[0]
        idx = self._draw_shuffles(videos.shape[self.temporal_dim], B)
        noise = self._draw_noise(videos.shape, videos)
        x = videos.detach().requires_grad_(True)
        weights = None
        if self.loss in MEAN_LOSS_BASE:
            weights = self._mean_logit_weights(x.detach(), labels, idx, noise)
        p_bar = self._mean_probs(x.detach(), idx, noise) if self.agree > 0 else None
        grad = torch.zeros_like(videos)
        fooled = torch.ones(B, dtype=torch.bool, device=videos.device)
        for a, b in self._chunks(B):
            logits = self._copy_logits(x, idx, noise, a, b)
            margin = per_clip_loss(logits.detach().flatten(0, 1), labels.repeat(b - a), "cw")
            fooled &= (margin.view(b - a, B) >= self.kappa).all(dim=0)
            if weights is None:
                loss = self._copy_loss(logits.flatten(0, 1), labels.repeat(b - a)).sum()
            else:
                loss = (logits.sum(0) * weights).sum()
            (g,) = torch.autograd.grad(loss / self.draws - self._spread(logits, p_bar), x)
            grad = grad + g
        if self.include_identity:
            loss, id_fooled = self._identity_term(x, labels, p_bar)
            fooled &= id_fooled
            grad = grad + torch.autograd.grad(loss, x)[0]
        self.last_fooled = fooled
        return grad

    def clip_loss(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-clip per-copy loss ``[B]`` averaged over ``draws`` fresh randomizations."""
        idx = self._draw_shuffles(videos.shape[self.temporal_dim], videos.shape[0])
        noise = self._draw_noise(videos.shape, videos)
        logits = self.model(self._copies(videos, idx, noise))
        d, B = self.draws, videos.shape[0]
        return self._copy_loss(logits, labels.repeat(d)).view(d, B).mean(dim=0)

    @torch.no_grad()
    def true_vote_share(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Share ``[B]`` of ``draws`` fresh copies (the attacker's draws) voting ``labels``."""
        idx = self._draw_shuffles(videos.shape[self.temporal_dim], videos.shape[0])
        noise = self._draw_noise(videos.shape, videos)
        right = [
            (self._copy_logits(videos, idx, noise, a, b).argmax(-1) == labels).float().sum(0)
            for a, b in self._chunks(videos.shape[0])
        ]
        return torch.stack(right).sum(0) / self.draws

    # ------------------------------------------------------------- the steps
    def step_size(self, m: int) -> float:
        """Step size of step ``m`` (0-based) under :attr:`schedule`."""
        if self.schedule == "cosine":
            return self.alpha * 0.5 * (1.0 + math.cos(math.pi * m / self.steps))
        if self.schedule == "step":
            return self.alpha * (
                0.5 ** int(m >= self.steps / 2) * 0.5 ** int(m >= 0.75 * self.steps)
            )
        return self.alpha

    def _direction(self, grad: torch.Tensor, velocity: torch.Tensor | None) -> torch.Tensor:
        """``grad`` (summed over time if :attr:`static`) with MI-FGSM momentum."""
        if self.static:
            grad = grad.sum(dim=self.temporal_dim, keepdim=True)
        if self.momentum <= 0 or velocity is None:
            return grad
        scale = grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12)
        return self.momentum * velocity + grad / scale.view(-1, *[1] * (grad.dim() - 1))

    def _run(
        self, clean: torch.Tensor, labels: torch.Tensor, start: torch.Tensor, bar: Any
    ) -> torch.Tensor:
        """One restart from perturbation ``start``; returns the adversarial clips.

        Static: the shared perturbation ``delta`` is the iterate (clipped to the ball,
        broadcast over the frames); otherwise the clip itself, projected every step
        exactly as :meth:`IFGSM.iterate` does."""
        delta = start
        x = self.project(clean, clean + delta)
        velocity: torch.Tensor | None = torch.zeros_like(delta) if self.momentum > 0 else None
        record = not self.trajectory
        active = torch.ones(clean.shape[0], dtype=torch.bool, device=clean.device)
        streak = torch.zeros(clean.shape[0], dtype=torch.int64, device=clean.device)
        for m in range(self.steps):
            if not bool(active.any()):
                bar.update(self.steps - m)
                break
            grad, fooled = self._grad_on(x, labels, active)
            g = self._direction(grad, velocity)
            velocity = g if velocity is not None else None
            step = self.step_size(m) * g.sign() * active.view(-1, *[1] * (x.dim() - 1))
            if self.static:
                delta = (delta + step).clamp(-self.eps, self.eps)
                x = (clean + delta).clamp(0.0, 1.0)
            else:
                x = self.project(clean, x + step)
            if self.patience is not None:
                streak = torch.where(fooled & active, streak + 1, torch.zeros_like(streak))
                active &= streak < self.patience
            if record and m + 1 in self.record_at:
                self.trajectory[m + 1] = x.detach().cpu()
            bar.update(1)
        for s in self.record_at if record else ():
            self.trajectory.setdefault(s, x.detach().cpu())
        return x

    def _grad_on(
        self, x: torch.Tensor, labels: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`input_grad` on the active clips only (zeros elsewhere) and which
        clips had every copy fooled this step."""
        if bool(active.all()):
            grad = self.input_grad(x, labels)
            assert self.last_fooled is not None
            return grad, self.last_fooled
        act = active.nonzero().flatten()
        gens = self.clip_generators
        if gens is not None:
            self.clip_generators = [gens[i] for i in act.tolist()]
        try:
            part = self.input_grad(x[act], labels[act])
        finally:
            self.clip_generators = gens
        grad = torch.zeros_like(x)
        grad[act] = part
        fooled = torch.zeros_like(active)
        assert self.last_fooled is not None
        fooled[act] = self.last_fooled
        return grad, fooled

    def _start(self, clean: torch.Tensor, r: int) -> torch.Tensor:
        """Restart ``r``'s initial perturbation (0: none; else uniform in the ball)."""
        shape = list(clean.shape)
        if self.static:
            shape[self.temporal_dim] = 1
        if r == 0:
            return torch.zeros(shape, device=clean.device, dtype=clean.dtype)
        u = torch.rand(shape, generator=self.generator, dtype=clean.dtype)
        return ((2 * u - 1) * self.eps).to(clean.device)

    def forward(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from tqdm.auto import tqdm

        self.trajectory = {}
        best, best_share = videos, torch.full((videos.shape[0],), 2.0, device=videos.device)
        with tqdm(
            total=self.steps * self.restarts, desc=f"eot {self.loss}", unit="step",
            disable=not self.progress, leave=False,
        ) as bar:  # fmt: skip
            for r in range(self.restarts):
                adv = self._run(videos, labels, self._start(videos, r), bar)
                share = self.true_vote_share(adv, labels) if self.restarts > 1 else best_share - 1
                better = share < best_share
                best = torch.where(better.view(-1, *[1] * (videos.dim() - 1)), adv, best)
                best_share = torch.where(better, share, best_share)
        return best

    def describe(self) -> dict[str, object]:
        """The attack's settings, JSON-able (for records)."""
        shuffle = None if self.preset is None else {"h1": self.preset.h1, "h2": self.preset.h2}
        return {
            "attack": "eot", "shuffle": shuffle, "sigma": self.sigma,
            "denoiser": self.denoised, "clamp_noise": self.clamp_noise, "draws": self.draws,
            "eps": self.eps, "steps": self.steps, "alpha": self.alpha, "loss": self.loss,
            "kappa": self.kappa, "schedule": self.schedule, "momentum": self.momentum,
            "restarts": self.restarts, "static": self.static, "patience": self.patience,
            "include_identity": self.include_identity, "identity_weight": self.identity_weight,
            "agree": self.agree,
        }  # fmt: skip


def _check_flag_options(patience: int | None, identity_weight: float, agree: float) -> None:
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if identity_weight < 0 or agree < 0:
        raise ValueError("identity_weight and agree must be >= 0")


def _check_strength(schedule: str, momentum: float, restarts: int) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if not 0.0 <= momentum < 1.0 + 1e-9:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")


def _check_eot(
    sigma: float | None, denoiser: nn.Module | None, draws: int, batch_size: int | None
) -> None:
    if denoiser is not None and sigma is None:
        raise ValueError("a denoiser row needs its noise sigma")
    if sigma is not None and sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


# --------------------------------------------------------------------------- #
# Flickering
# --------------------------------------------------------------------------- #
def flicker_metrics(perturbation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thickness and roughness of flickering perturbations, in % of the pixel range.

    ``perturbation`` is ``[B, 3, T, ...]`` in pixel units (``adv - clean`` works: a
    flicker is constant over each frame, so the spatial mean is the offset).
    Thickness = mean ``|delta|``; roughness = mean ``|delta_t - delta_{t-1}|``
    (cyclic), as in Pony et al.'s reported metrics. Returns two ``[B]`` tensors.
    """
    delta = perturbation.flatten(3).mean(dim=3)  # [B, 3, T]
    thickness = delta.abs().mean(dim=(1, 2)) * 100.0
    roughness = (delta - delta.roll(1, dims=2)).abs().mean(dim=(1, 2)) * 100.0
    return thickness, roughness


class Flickering(Attack):
    """Adversarial flickering (Pony et al., CVPR 2021), untargeted, white-box.

    The perturbation is one RGB offset per frame, ``delta [B, 3, T, 1, 1]``, broadcast
    over the frame; ``adv = clip_01(x + delta)``. ``delta`` is optimized with Adam for
    ``steps`` steps on, per clip,

    ``loss = l_adv + reg_weight * (beta1 * mean(d^2) + beta2 * mean((d - roll(d, 1))^2)
    + beta3 * mean((roll(d, 1) - 2 d + roll(d, -1))^2))``

    (thickness, first and second cyclic temporal differences; the ``roll`` is over
    ``T``), where ``d = 2 * delta`` is the offset on the ``[-1, 1]`` input scale of
    the authors' code, so their weights and learning rate carry over unchanged, and
    ``l_adv`` is their margin loss on probabilities: with ``l = p_y - max_{j!=y} p_j
    + margin``, ``l_adv = max(0, min(l^2 / margin, l))``. After every step ``delta``
    is projected to ``[-eps, eps]``.

    Returned, per clip: the latest iterate that fooled the model, else the last.

    Parameters (defaults from the authors' released single-video configuration,
    ``run_config.yml`` of roiponytch/Flickering_Adversarial_Video):

    * ``steps = 2500`` (their ``MAX_NUM_STEP``; they keep going past it until the
      clip is fooled -- we stop at ``steps`` and return the best iterate);
    * ``lr = 1e-3`` Adam on the ``[-1, 1]`` scale (theirs);
    * ``margin = 0.05`` on probabilities (their ``PROB_MARGIN``);
    * ``reg_weight = 1.0`` (their ``LAMBDA``), ``beta1 = beta2 = beta3 = 0.5`` (their
      ``BETA_1``, ``BETA_2``; their script sets ``beta_3 = BETA_2``);
    * ``eps = 0.2``: their code clips the offset to ``+-0.4`` on the ``[-1, 1]``
      scale, i.e. ``+-0.2`` of the ``[0, 1]`` range. This is *not* the I-FGSM budget:
      a flicker has only ``3T`` free values and relies on the regularizers, not on
      the bound, to stay inconspicuous; :func:`flicker_metrics` reports how thick
      and rough the result is. Pass ``eps=4/255`` to compare at the I-FGSM budget.
    """

    name = "flickering"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 0.2,
        steps: int = 2500,
        lr: float = 1e-3,
        margin: float = 0.05,
        reg_weight: float = 1.0,
        beta1: float = 0.5,
        beta2: float = 0.5,
        beta3: float = 0.5,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(model, eps=eps, steps=steps, seed=seed, generator=generator, device=device)
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.lr = float(lr)
        self.margin = float(margin)
        self.reg_weight = float(reg_weight)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.beta3 = float(beta3)

    def adversarial_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pony et al.'s margin loss on probabilities, ``[B]``; 0 once fooled by ``margin``."""
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
        p_true = (probs * onehot).sum(dim=1)
        p_other = (probs - onehot).max(dim=1).values
        lin = p_true - p_other + self.margin
        return torch.minimum(lin.square() / self.margin, lin).clamp_min(0.0)

    def regularizer(self, d: torch.Tensor) -> torch.Tensor:
        """Thickness + roughness penalty of offsets ``d [B, 3, T, 1, 1]``: ``[B]``."""
        right, left = d.roll(1, dims=2), d.roll(-1, dims=2)
        thick = d.square().flatten(1).mean(dim=1)
        first = (d - right).square().flatten(1).mean(dim=1)
        second = (right - 2 * d + left).square().flatten(1).mean(dim=1)
        return self.beta1 * thick + self.beta2 * first + self.beta3 * second

    def forward(self, videos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, C, T = videos.shape[:3]
        bound = 2.0 * self.eps  # on the [-1, 1] scale of d
        d = torch.zeros((B, C, T, 1, 1), device=videos.device, dtype=videos.dtype)
        d.requires_grad_(True)
        optimizer = torch.optim.Adam([d], lr=self.lr)
        kept = torch.zeros_like(d)
        ever = torch.zeros(B, dtype=torch.bool, device=videos.device)
        for _ in range(self.steps):
            logits = self.model((videos + d / 2).clamp(0.0, 1.0))
            with torch.no_grad():
                fooled = logits.argmax(dim=1) != labels
                kept = torch.where(fooled.view(B, 1, 1, 1, 1), d, kept)
                ever |= fooled
            loss = self.adversarial_loss(logits, labels) + self.reg_weight * self.regularizer(d)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            with torch.no_grad():
                d.clamp_(-bound, bound)
        with torch.no_grad():
            fooled_last = self.model((videos + d / 2).clamp(0.0, 1.0)).argmax(dim=1) != labels
            use_last = fooled_last | ~ever
            final = torch.where(use_last.view(B, 1, 1, 1, 1), d.detach(), kept)
        return videos + final / 2
