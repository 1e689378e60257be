"""A tiny toy dataset, checkpoint and denoiser on disk, built once per session.

Toy dataset 2 (object + motion carry the class) at 8 frames of 16x16 px, an R3D-18 of
base width 8 trained for a few seconds, and a 3-layer DnCNN: small enough that every
experiment runs end to end, at full attack strength, within the test budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

FRAMES, SIZE = 8, 16


@dataclass
class Tiny:
    data: Path
    checkpoint: Path
    denoiser: Path
    root: Path


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast and shares the 2-core machine better."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from service.research.robustness.denoise import train_denoiser
    from service.research.toy.data import generate_toy_dataset, write_toy_dataset
    from service.research.train import TrainConfig, clips_to_input, save_checkpoint, train_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    data = generate_toy_dataset(2, 256, seed=0, frames=FRAMES, size=SIZE)
    write_toy_dataset(data, root / "toy2")
    cs = data.as_clipset()
    train, test = cs.select("train"), cs.select("test")
    config = TrainConfig(epochs=12, batch_size=16, lr=5e-3, base_width=8, seed=0, augment=False)
    result = train_model(
        train.clips,
        train.labels,
        num_classes=8,
        config=config,
        test_clips=test.clips,
        test_labels=test.labels,
        progress=False,
    )
    ckpt = root / "tiny.ckpt"
    save_checkpoint(
        result,
        ckpt,
        labels=cs.label_names,
        clip_len=FRAMES,
        crop_size=SIZE,
        config=config,
        dataset=2,
    )
    den = train_denoiser(
        clips_to_input(train.clips[:16]), 0.25, epochs=1, depth=3, features=8, progress=False
    )
    den_path = root / "dncnn.pt"
    torch.save(
        {
            "state_dict": den.state_dict(),
            "config": {"channels": 3, "depth": 3, "features": 8},
            "sigma": 0.25,
        },
        den_path,
    )
    torch.set_num_threads(threads)
    return Tiny(root / "toy2", ckpt, den_path, root)


@dataclass
class Smoke:
    out: Path
    argv: list[str]


#: The CI smoke evaluation: every row x every column on 4 clips. I-FGSM, OFA and EOT
#: run at full strength; flickering at 100 of its 2500 steps, which stamps every output
#: REDUCED STRENGTH: it tests the plumbing and is never a reported number.
def smoke_argv(tiny: Tiny, out: Path) -> list[str]:
    return [
        "evaluate", "--checkpoint", str(tiny.checkpoint), "--data", str(tiny.data),
        "--denoiser", str(tiny.denoiser), "--clips", "4", "--seeds", "0", "--h1", "2", "--h2", "1",
        "--flicker-steps", "100", "--out", str(out), "--threads", "1", "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def smoke(tiny: Tiny) -> Smoke:
    from service.cli import main

    out = tiny.root / "smoke"
    argv = smoke_argv(tiny, out)
    threads = torch.get_num_threads()
    assert main(argv) == 0
    torch.set_num_threads(threads)
    return Smoke(out, argv)
