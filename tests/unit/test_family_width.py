"""Model families at reduced width, and ``shuffleguard train --arch FAMILY``.

The paper's families are trained on the toy data at a fraction of their channels.
What the shuffle presets and the monotonic ratio depend on -- every temporal kernel,
stride and padding, and the depth -- must stay the full model's; only channel counts
may change.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.commands import train as train_command
from service.commands.train import TrainCommandConfig
from service.models.checkpoints import load_checkpoint
from service.models.families import build_family, get_family, width_kwargs
from service.research.experiments.common import first_conv_temporal
from service.research.train import (
    ARCH,
    TrainConfig,
    save_checkpoint,
    train_model,
)

#: the paper's four families (PyTorchVideo builders) at the widths trained on the toy
#: data (X3D's widths are rounded to multiples of 8, at least 8: below 1/4 two of its
#: stages get the same width and a shortcut loses its projection norm, so 1/4)
WIDTHS = {"i3d_r50": 0.125, "slowfast_r50": 0.125, "csn_r101": 0.125, "x3d_m": 0.25}
PAPER_FAMILIES = tuple(WIDTHS)
WIDTH = 0.125


def temporal_layout(model: nn.Module) -> list[tuple[str, str, int, int, int]]:
    """``(name, type, kernel, stride, padding)`` along time of every conv and pool
    (the head's average pool excluded: it is sized to the input, not the family)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv3d | nn.MaxPool3d | nn.AvgPool3d):
            if isinstance(m, nn.AvgPool3d) and ".proj" not in name and "head" in name:
                continue
            k, s, p = (m.kernel_size, m.stride, m.padding)
            t = [(v if isinstance(v, int) else v[0]) for v in (k, s, p)]
            out.append((name, type(m).__name__, int(t[0]), int(t[1]), int(t[2])))
    return [row for row in out if not row[0].endswith("pool.pool")]


def channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv3d)]


@pytest.mark.parametrize("name", PAPER_FAMILIES)
def test_reduced_width_keeps_temporal_kernels_strides_and_depth(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        full = build_family(name, num_classes=8)
    small = build_family(name, num_classes=8, width=WIDTHS[name])
    layout = temporal_layout(small)
    assert layout == temporal_layout(full)
    assert len(layout) > 10  # the whole network was compared, not just the stem
    # the same modules (depth and names), fewer channels
    assert [n for n, _ in small.named_modules()] == [n for n, _ in full.named_modules()]
    assert sum(channels(small)) < sum(channels(full)) / 3
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in full.parameters()) / 8
    fam = get_family(name).first_temporal_conv
    assert first_conv_temporal(small) == (fam.kernel, fam.stride, fam.padding)


@pytest.mark.parametrize("name", PAPER_FAMILIES)
def test_reduced_width_runs_on_toy_clips(name: str) -> None:
    """16 frames of 32 x 32, the toy data's shape: logits [B, K], finite."""
    model = build_family(name, num_classes=8, clip_len=16, crop_size=32, width=WIDTHS[name])
    with torch.no_grad():
        out = model(torch.rand(2, 3, 16, 32, 32))
    assert out.shape == (2, 8) and torch.isfinite(out).all()


def test_width_kwargs() -> None:
    assert width_kwargs("i3d_r50", 1.0) == {}
    assert width_kwargs("i3d_r50", WIDTH) == {"stem_dim_out": 8}
    assert width_kwargs("csn_r101", 0.25) == {"stem_dim_out": 16}
    # SlowFast keeps its fast pathway at 1/8 of the slow one's channels
    assert width_kwargs("slowfast_r50", WIDTH) == {"stem_dim_outs": (8, 1)}
    assert width_kwargs("x3d_m", 0.25) == {"width_factor": 0.5, "head_dim_out": 512}
    with pytest.raises(ValueError, match="no width option"):
        width_kwargs("r3d_18", 0.5)
    with pytest.raises(ValueError, match="> 0"):
        width_kwargs("i3d_r50", 0.0)


def test_train_config_checks_arch_and_width() -> None:
    TrainConfig(arch="x3d_m", width=WIDTH)
    with pytest.raises(ValueError, match="base_width"):
        TrainConfig(width=0.5)  # resnet3d_18 has --base-width
    with pytest.raises(ValueError, match="unknown model family"):
        TrainConfig(arch="resnet9000")
    with pytest.raises(ValueError, match="no width option"):
        TrainConfig(arch="r3d_18", width=0.5)
    with pytest.raises(ValueError, match="--arch"):
        TrainCommandConfig(data="d", out="o", arch="resnet9000")
    assert train_command.ARCH == ARCH  # the command's torch-free copy of the name
    cmd = TrainCommandConfig(data="d", out="o", arch="i3d_r50", width=WIDTH).command()
    assert "--arch i3d_r50 --width 0.125" in cmd


def test_train_a_family_and_reload_its_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The training loop of R3D-18 trains a family; its checkpoint rebuilds the same model."""
    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (8, 4, 32, 32, 3), dtype=torch.uint8, generator=gen)
    labels = torch.arange(8) % 4
    config = TrainConfig(epochs=1, batch_size=4, arch="x3d_m", width=WIDTH, augment=False)
    result = train_model(clips, labels, num_classes=4, config=config, progress=False)
    assert len(result.history) == 1 and result.history[0]["loss"] > 0
    path = tmp_path / "x3d.pt"
    save_checkpoint(result, path, labels=list("abcd"), clip_len=4, crop_size=32, config=config)
    model, ckpt = load_checkpoint(path)
    assert ckpt["arch"] == "x3d_m"
    assert ckpt["model_kwargs"] == {
        "name": "x3d_m", "num_classes": 4, "clip_len": 4, "crop_size": 32, "width": WIDTH,
    }  # fmt: skip
    assert ckpt["train_args"]["arch"] == "x3d_m" and ckpt["train_args"]["width"] == WIDTH
    x = clips[:3].permute(0, 4, 1, 2, 3).float() / 255
    with torch.no_grad():
        assert torch.allclose(model(x), result.model.eval()(x), atol=1e-5)
    # a checkpoint of an unknown arch is refused
    torch.save({**ckpt, "arch": "resnet9000"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown arch"):
        load_checkpoint(tmp_path / "bad.pt")
