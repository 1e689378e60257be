"""DnCNN shapes, denoiser training, and the per-frame denoised classifier."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from service.research.robustness.attacks import IFGSM
from service.research.robustness.denoise import DenoisedClassifier, DnCNN, train_denoiser


def test_dncnn_shapes_and_depth() -> None:
    net = DnCNN(depth=5, features=6)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 5
    frames = torch.rand(4, 3, 10, 12)
    assert net(frames).shape == frames.shape
    assert DnCNN().body[0].out_channels == 64  # the paper's default width
    with pytest.raises(ValueError):
        net(torch.rand(2, 3, 4, 10, 12))
    with pytest.raises(ValueError):
        DnCNN(depth=1)


def test_training_reduces_the_denoising_error(toy) -> None:
    sigma = 0.1
    clips = toy.train_clips[:16, :, :4]  # 64 frames of 16x16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # no BatchNorm: its batch statistics make a 30-step run noisy
        start = DnCNN(depth=3, features=16, norm=lambda _: nn.Identity())
    before = copy.deepcopy(start).eval()
    trained = train_denoiser(
        clips, sigma, epochs=30, seed=0, batch_size=16, lr=3e-3, denoiser=start, progress=False
    )
    assert not trained.training

    held_out = toy.clips[:, :, 0]  # frames the denoiser never saw
    noisy = held_out + sigma * torch.randn(
        held_out.shape, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        mse_before = F.mse_loss(before(noisy), held_out).item()
        mse_after = F.mse_loss(trained(noisy), held_out).item()
    assert mse_after < 0.5 * mse_before
    assert mse_after < sigma**2  # it removes noise, rather than just undoing its own init


def test_training_is_reproducible(toy) -> None:
    clips = toy.train_clips[:2, :, :2]
    a = train_denoiser(clips, 0.1, epochs=1, seed=3, depth=3, features=4, progress=False)
    b = train_denoiser(clips, 0.1, epochs=1, seed=3, depth=3, features=4, progress=False)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


class Square(nn.Module):
    """A per-pixel "denoiser", so the expected result is known without reshaping."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        assert frames.dim() == 4 and frames.shape[1] == 3
        return frames.square()


@pytest.mark.parametrize("frame_batch", [None, 5])
def test_denoised_classifier_denoises_every_frame(toy, frame_batch: int | None) -> None:
    clips = toy.clips[:3]
    wrapped = DenoisedClassifier(Square(), toy.model, frame_batch=frame_batch)
    with torch.no_grad():
        assert torch.equal(wrapped.denoise(clips), clips.square())
        assert torch.allclose(wrapped(clips), toy.model(clips.square()))
    # time on another axis: [B, T, C, H, W]
    moved = DenoisedClassifier(Square(), nn.Identity(), temporal_dim=1)
    assert torch.equal(moved.denoise(clips.transpose(1, 2)), clips.square().transpose(1, 2))


def test_denoised_classifier_clamps_and_passes_gradients(toy, model: nn.Module) -> None:
    class Shift(nn.Module):
        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            return frames + 2.0

    assert float(DenoisedClassifier(Shift(), model).denoise(toy.clips).min()) == 1.0
    wrapped = DenoisedClassifier(DnCNN(depth=3, features=4), model)
    adv = IFGSM(wrapped, steps=2)(toy.clips[:2], toy.labels[:2])
    assert float((adv - toy.clips[:2]).abs().max()) > 0  # the gradient reached the input
