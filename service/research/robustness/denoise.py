"""Denoised smoothing (Salman et al., NeurIPS 2020): a per-frame DnCNN denoiser.

* :class:`DnCNN` -- the residual denoiser of Zhang et al. (2017), 2-D, applied to
  single frames ``[N, C, H, W]``.
* :func:`train_denoiser` -- MSE training on Gaussian-noised frames of clips.
* :class:`DenoisedClassifier` -- denoise every frame of ``[B, 3, T, H, W]``, then
  classify; smoothing it with the same ``sigma`` (see
  :class:`service.research.robustness.smoothing.Smooth`) is denoised smoothing.

Pixel space throughout: frames are float in ``[0, 1]``, noise is added there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["DenoisedClassifier", "DnCNN", "train_denoiser"]

logger = logging.getLogger(__name__)


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


class DnCNN(nn.Module):
    """DnCNN (Zhang et al., 2017): predicts the noise, returns ``input - noise``.

    ``depth`` conv layers of 3x3: conv+activation, ``depth - 2`` x conv+norm+activation,
    conv to ``channels``. Defaults are the paper's (17 layers, 64 features), which
    Salman et al. also use for their image denoisers.

    ``forward(frames)``: float ``[N, channels, H, W]`` (``[0, 1]`` plus noise) ->
    denoised ``[N, channels, H, W]`` (not clamped).
    """

    def __init__(
        self,
        *,
        channels: int = 3,
        depth: int = 17,
        features: int = 64,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
        activation: Callable[[], nn.Module] = _relu,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        if channels < 1 or features < 1:
            raise ValueError(f"channels and features must be >= 1, got {channels}, {features}")
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), activation()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), norm(features)]
            layers.append(activation())
        layers.append(nn.Conv2d(features, channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        self.channels = channels
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        assert len(convs) == depth, (len(convs), depth)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != self.channels:
            raise ValueError(
                f"frames must be [N, {self.channels}, H, W], got {tuple(frames.shape)}"
            )
        return frames - self.body(frames)


def _frames(videos: torch.Tensor, temporal_dim: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` (time at ``temporal_dim``) -> ``[B * T, C, H, W]``."""
    moved = videos.movedim(temporal_dim, 1)  # [B, T, C, H, W]
    return moved.reshape(-1, *moved.shape[2:])


class DenoisedClassifier(nn.Module):
    """``model(denoise(every frame))``: a video classifier behind a per-frame denoiser.

    ``forward(videos)``: float ``[B, C, T, H, W]`` (pixel space, possibly noisy) ->
    logits ``[B, K]``. The denoised frames are clamped to ``[0, 1]`` (``clamp=True``,
    default) so the model sees its contract's range. Fully differentiable, so
    gradient attacks go through the denoiser. ``frame_batch`` bounds how many frames
    the denoiser sees per pass (``None`` = all ``B * T`` at once).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        model: nn.Module,
        *,
        temporal_dim: int = 2,
        clamp: bool = True,
        frame_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.model = model
        self.temporal_dim = temporal_dim
        self.clamp = clamp
        self.frame_batch = frame_batch

    def denoise(self, videos: torch.Tensor) -> torch.Tensor:
        """Denoised clips, same layout and shape as ``videos``."""
        if videos.dim() != 5:
            raise ValueError(f"videos must be [B, C, T, H, W], got {tuple(videos.shape)}")
        dim = self.temporal_dim % 5
        frames = _frames(videos, dim)
        if self.frame_batch is None:
            out = self.denoiser(frames)
        else:
            out = torch.cat([self.denoiser(f) for f in frames.split(self.frame_batch)])
        if self.clamp:
            out = out.clamp(0.0, 1.0)
        moved = videos.movedim(dim, 1)
        return out.view(moved.shape).movedim(1, dim)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.model(self.denoise(videos))


def train_denoiser(
    clips: torch.Tensor,
    sigma: float,
    *,
    epochs: int = 20,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    lr: float = 1e-3,
    denoiser: DnCNN | None = None,
    depth: int = 17,
    features: int = 64,
    temporal_dim: int = 2,
    progress: bool = True,
) -> DnCNN:
    """Train a per-frame DnCNN to remove Gaussian noise of std ``sigma`` (MSE).

    Salman et al.'s "MSE" objective: ``|D(x + sigma * n) - x|^2`` with ``n ~ N(0, I)``
    drawn afresh for every batch, ``x`` the clean frames. Adam at ``lr``.

    Args:
        clips: float ``[N, 3, T, H, W]`` in ``[0, 1]`` (time at ``temporal_dim``); every
            frame of every clip is a training sample.
        sigma: noise std in pixel units (use the smoothing ``sigma``).
        epochs: passes over the frames.
        seed: seeds the initialization (when ``denoiser`` is None), the frame order
            and the noise, so the result is reproducible on a given device.
        device: where to train.
        batch_size: frames per step.
        denoiser: continue training this one instead of a fresh ``DnCNN(depth=,
            features=)``.
        progress: show a tqdm bar over epochs.

    Returns:
        The denoiser, in eval mode, on ``device``.
    """
    if clips.dim() != 5:
        raise ValueError(f"clips must be [N, C, T, H, W], got {tuple(clips.shape)}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if denoiser is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            denoiser = DnCNN(channels=clips.shape[1], depth=depth, features=features)
    denoiser = denoiser.to(device).train()
    frames = _frames(clips.float(), temporal_dim % 5)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=lr)
    bar = tqdm(range(epochs), desc="denoiser", unit="epoch", disable=not progress)
    for epoch in bar:
        mse = _train_epoch(denoiser, optimizer, frames, sigma, batch_size, gen, device)
        bar.set_postfix(mse=mse)
        logger.info("denoiser epoch %d/%d: mse %.6f", epoch + 1, epochs, mse)
    return denoiser.eval()


def _train_epoch(
    denoiser: nn.Module, optimizer: torch.optim.Optimizer, frames: torch.Tensor, sigma: float,
    batch_size: int, gen: torch.Generator, device: torch.device,
) -> float:  # fmt: skip
    """One pass over ``frames`` (a seeded order, fresh noise per batch); the mean MSE."""
    order = torch.randperm(frames.shape[0], generator=gen)
    total, count = 0.0, 0
    for batch_idx in order.split(batch_size):
        clean = frames[batch_idx].to(device)
        noise = torch.randn(clean.shape, generator=gen).to(device)
        loss = F.mse_loss(denoiser(clean + sigma * noise), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * clean.shape[0]
        count += clean.shape[0]
    return total / count
