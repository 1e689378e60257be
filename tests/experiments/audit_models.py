"""Tiny models that span the audit's verdicts, trained in seconds and archived as real .mar.

* :class:`Conv3dNet` on toy dataset 3 (only the motion carries the class): a model that
  needs the frame order;
* the same :class:`Conv3dNet` on toy dataset 1 (background, object and motion all carry
  it): a model that can lean on spatial cues, like the paper's Kinetics models;
* :class:`PerFrame2dNet` (2D convolutions on every frame, logits averaged over time) on
  toy dataset 2: order-insensitive by construction.

Clips are 8 frames of 16 x 16 px. Every net takes float ``[B, 3, T, H, W]`` in ``[0, 1]``
and returns logits ``[B, 8]``.
Training is seeded (one generator for the init, one for the batch order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FRAMES, SIZE = 8, 16
#: the archive preset of every tiny model (X3D-like: a wide window of single frames)
PRESET = {"h1": 4, "h2": 1, "ensemble": 10}


class Conv3dNet(nn.Module):
    """Three 3x3x3 convolutions, global max pool, linear head."""

    def __init__(self, classes: int = 8, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv3d(width, 2 * width, 3, stride=(1, 2, 2), padding=1), nn.ReLU(),
            nn.Conv3d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3, 4)))


class PerFrame2dNet(nn.Module):
    """Two 3x3 2D convolutions on every frame, global max pool; logits averaged over time."""

    def __init__(self, classes: int = 8, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.transpose(1, 2).flatten(0, 1)  # [B * T, 3, H, W]
        logits = self.head(self.features(frames).amax(dim=(2, 3)))
        return logits.view(x.shape[0], x.shape[2], -1).mean(dim=1)


@dataclass
class Audited:
    """An archived tiny model and the directory of clips to audit it on."""

    mar: Path
    data: Path
    dataset: int


def train(net: nn.Module, clips: torch.Tensor, labels: torch.Tensor, *, epochs: int,
          seed: int = 0, lr: float = 3e-3) -> nn.Module:  # fmt: skip
    """Adam on uint8 ``[N, T, H, W, 3]`` clips; seeded; returns ``net`` in eval mode."""
    from service.research.train import clips_to_input

    x = clips_to_input(clips)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], 16):
            idx = order[start : start + 16]
            loss = F.cross_entropy(net(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def build(
    root: Path, name: str, make: Callable[[], nn.Module], dataset: int, *, epochs: int,
    mp4_every: int = 0,
) -> Audited:  # fmt: skip
    """Train ``make()`` (initialized under ``torch.manual_seed(0)``) on 128 clips of toy
    ``dataset`` (seed 0), archive it with
    :func:`service.modelserver.archive.build_mar` and write 40 fresh clips of the same
    dataset (seed 1) to audit it on (:func:`write_clips`)."""
    from service.modelserver.archive import build_mar
    from service.research.toy.data import generate_toy_dataset, label_names

    torch.manual_seed(0)
    net = make()
    train_set = generate_toy_dataset(dataset, 128, seed=0, frames=FRAMES, size=SIZE,
                                     speed_reference=32).as_clipset()  # fmt: skip
    train(net, train_set.clips, train_set.labels, epochs=epochs)
    meta = {
        "name": name, "arch": type(net).__name__, "clip_len": FRAMES, "frame_interval": 1,
        "crop_size": SIZE, "labels": label_names(dataset), "preset": dict(PRESET),
        "weights": "trained",
    }  # fmt: skip
    mar = build_mar(net, meta, root / "store")
    data = write_clips(root / f"clips-{name}", dataset, seed=1, mp4_every=mp4_every)
    return Audited(mar, data, dataset)


def write_clips(data: Path, dataset: int, *, seed: int, mp4_every: int = 0) -> Path:
    """40 fresh clips of toy ``dataset`` (``seed``) in ``data`` with their labels.csv; with
    ``mp4_every = k``, every k-th of them as an .mp4 instead of .npy."""
    import csv

    from service.research.toy.data import generate_toy_dataset, write_mp4, write_toy_dataset

    clips = generate_toy_dataset(dataset, 40, seed=seed, frames=FRAMES, size=SIZE,
                                 speed_reference=32)  # fmt: skip
    write_toy_dataset(clips, data)
    if mp4_every:
        with open(data / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for i, row in enumerate(rows):
            if i % mp4_every == 0:
                write_mp4(clips.clips[i], data / row["file"].replace(".npy", ".mp4"))
                (data / row["file"]).unlink()
                row["file"] = row["file"].replace(".npy", ".mp4")
        with open(data / "labels.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return data
