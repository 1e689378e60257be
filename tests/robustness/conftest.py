"""A tiny video classifier that can be fooled, trained once per session.

Task: the colour (R, G or B tint) of a small blob moving over a noisy grey
background. The tint is faint, so I-FGSM at 4/255 flips every label (1/255 about half of them),
while the clean accuracy is ~100% after a few seconds of training.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

NUM_CLASSES = 3
T, SIZE = 8, 16


def blob_clips(
    n: int, generator: torch.Generator, *, tint: float = 0.04, noise: float = 0.03
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clips float ``[n, 3, T, SIZE, SIZE]`` in ``[0, 1]`` and labels ``[n]``."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    clips = 0.5 + noise * torch.randn((n, 3, T, SIZE, SIZE), generator=generator)
    r = 3
    start = torch.randint(0, SIZE - r, (n, 2), generator=generator)
    velocity = torch.randint(-1, 2, (n, 2), generator=generator)
    for i in range(n):
        for t in range(T):
            y, x = ((start[i] + velocity[i] * t) % (SIZE - r)).tolist()
            clips[i, :, t, y : y + r, x : x + r] -= tint / 2
            clips[i, labels[i], t, y : y + r, x : x + r] += 1.5 * tint
    return clips.clamp(0.0, 1.0), labels


class TinyVideoNet(nn.Module):
    """Conv3d classifier with the project's contract: ``[B, 3, T, H, W]`` in [0, 1] -> logits."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1, 1), 0.25))
        self.net = nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1),
            nn.BatchNorm3d(8),
            nn.ReLU(),
            nn.Conv3d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool3d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.net((videos - self.mean) / self.std)


@dataclass
class Toy:
    model: TinyVideoNet
    clips: torch.Tensor  # [B, 3, T, H, W] held-out, all classified correctly
    labels: torch.Tensor  # [B]
    clean_accuracy: float  # on a larger held-out set
    train_clips: torch.Tensor


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast and shares the 2-core machine better."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy() -> Toy:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    train_x, train_y = blob_clips(256, gen)
    test_x, test_y = blob_clips(64, gen)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyVideoNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        idx = torch.randint(0, train_x.shape[0], (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    torch.set_num_threads(threads)
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        correct = model(test_x).argmax(dim=1) == test_y
    accuracy = float(correct.float().mean())
    assert accuracy >= 0.9, f"toy model did not learn the task (accuracy {accuracy:.2f})"
    keep = correct.nonzero().squeeze(1)[:8]
    return Toy(model, test_x[keep], test_y[keep], accuracy, train_x)


@pytest.fixture()
def model(toy: Toy) -> TinyVideoNet:
    """A private copy of the toy model, so a test may change its flags."""
    return copy.deepcopy(toy.model)
