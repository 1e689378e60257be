"""3D ResNet-18 (R3D-18) video classifier with normalization inside the model.

The network follows Tran et al., "A Closer Look at Spatiotemporal Convolutions for
Action Recognition" (CVPR 2018), variant R3D-18, the same layout as torchvision's
``r3d_18``: a ``3x7x7`` stem with stride ``(1, 2, 2)``, four stages of two
:class:`BasicBlock3d` each (``3x3x3`` convolutions; stages 2-4 halve time, height and
width), global average pooling and a linear head. The width of the first stage,
``base_width``, is configurable (64 is the published model; 16 or 32 make the toy
models of the paper's Sec. 3.2 train in minutes on a CPU).

Input: float ``[B, C, T, H, W]`` in ``[0, 1]`` (RGB, ``C = in_channels``). The first
layer, :class:`Normalize`, subtracts ``mean`` and divides by ``std``, so attacks and
noise live in pixel space. Output: logits ``[B, num_classes]``.

The model is traceable with :func:`torch.jit.trace` (the serving artifact is a
TorchScript trace): forward-time shape checks are skipped while tracing, and the
traced graph works for any batch size, clip length and frame size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["BasicBlock3d", "Normalize", "ResNet3d", "resnet3d_18"]

NormFactory = Callable[[int], nn.Module]
ActivationFactory = Callable[[], nn.Module]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel for video ``[B, C, T, H, W]``.

    ``mean`` and ``std`` are buffers shaped ``[1, C, 1, 1, 1]``, so they travel with
    the state dict and the TorchScript artifact.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        assert len(mean) == len(std) > 0, f"mean {mean} and std {std} must have equal length"
        assert all(s > 0 for s in std), f"std must be positive, got {std}"
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock3d(nn.Module):
    """Two ``3x3x3`` convolutions with a residual connection (R3D BasicBlock).

    ``stride`` applies to time, height and width alike; a ``1x1x1`` projection
    (conv + norm) matches the shortcut when the stride or the width changes.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        *,
        stride: int = 1,
        norm: NormFactory = nn.BatchNorm3d,
        activation: ActivationFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        assert in_planes > 0 and planes > 0, f"bad widths {in_planes} -> {planes}"
        assert stride in (1, 2), f"stride must be 1 or 2, got {stride}"
        self.conv1 = nn.Conv3d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(planes)
        self.act1 = activation()
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.norm2 = norm(planes)
        self.act2 = activation()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False), norm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + identity)


class ResNet3d(nn.Module):
    """Normalize -> stem -> four residual stages -> global average pool -> linear.

    Build it with :func:`resnet3d_18`. ``forward`` takes float ``[B, C, T, H, W]`` in
    ``[0, 1]`` and returns logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        *,
        normalize: Normalize,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        head_in: int,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.normalize = normalize
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(head_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            assert x.dim() == 5, f"expected [B, C, T, H, W], got shape {tuple(x.shape)}"
            assert x.shape[1] == self.in_channels, (
                f"expected {self.in_channels} channels on dim 1, got shape {tuple(x.shape)}"
            )
        x = self.normalize(x)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.pool(x).flatten(1)
        return self.fc(x)


def resnet3d_18(
    *,
    num_classes: int,
    base_width: int = 64,
    in_channels: int = 3,
    mean: Sequence[float] = (0.45, 0.45, 0.45),
    std: Sequence[float] = (0.225, 0.225, 0.225),
    norm: NormFactory = nn.BatchNorm3d,
    activation: ActivationFactory = nn.ReLU,
    zero_init_residual: bool = False,
) -> ResNet3d:
    """Build an R3D-18: BasicBlocks ``[2, 2, 2, 2]``, widths ``base_width * (1, 2, 4, 8)``.

    Args:
        num_classes: number of output logits ``K``.
        base_width: channels of the stem and stage 1 (64 in the published model).
        in_channels: input channels ``C``.
        mean, std: per-channel normalization of the ``[0, 1]`` input (Kinetics
            defaults), applied by the model's first layer.
        norm: ``norm(channels)`` builds each normalization layer.
        activation: ``activation()`` builds each non-linearity.
        zero_init_residual: start each block's last norm at zero scale (so every
            block starts as the identity); only for norms with a ``weight``.

    Returns:
        A model mapping float ``[B, C, T, H, W]`` in ``[0, 1]`` to logits ``[B, K]``.
    """
    assert num_classes > 0, f"num_classes must be positive, got {num_classes}"
    assert base_width > 0, f"base_width must be positive, got {base_width}"
    assert in_channels > 0, f"in_channels must be positive, got {in_channels}"
    assert len(mean) == in_channels and len(std) == in_channels, (
        f"mean/std need {in_channels} entries, got {len(mean)} and {len(std)}"
    )
    stem = nn.Sequential(
        nn.Conv3d(
            in_channels, base_width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False
        ),
        norm(base_width),
        activation(),
    )
    model = ResNet3d(
        normalize=Normalize(mean, std),
        stem=stem,
        stages=_stages(base_width, norm, activation),
        head_in=base_width * 8,
        num_classes=num_classes,
        in_channels=in_channels,
    )
    _init_weights(model, zero_init_residual)
    return model


def _stages(base_width: int, norm: NormFactory, activation: ActivationFactory) -> list[nn.Module]:
    """Two BasicBlocks per stage at widths ``base_width * (1, 2, 4, 8)``; every stage
    after the first halves the resolution (stride 2)."""
    stages: list[nn.Module] = []
    in_planes = base_width
    for i, planes in enumerate(base_width * m for m in (1, 2, 4, 8)):
        stride = 1 if i == 0 else 2
        stages.append(
            nn.Sequential(
                BasicBlock3d(in_planes, planes, stride=stride, norm=norm, activation=activation),
                BasicBlock3d(planes, planes, stride=1, norm=norm, activation=activation),
            )
        )
        in_planes = planes
    return stages


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """Kaiming (fan-out) convolutions, unit-scale zero-shift norms; with
    ``zero_init_residual`` each block's last norm starts at zero scale."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d | nn.GroupNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock3d) and getattr(m.norm2, "weight", None) is not None:
                nn.init.zeros_(m.norm2.weight)  # type: ignore[arg-type]
