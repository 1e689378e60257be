"""R3D-18 builder: shapes, normalization inside, TorchScript trace, injected layers."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from service.models.resnet3d import Normalize, resnet3d_18


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; these models are small
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_model() -> nn.Module:
    torch.manual_seed(0)
    return resnet3d_18(num_classes=5, base_width=8).eval()


@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 32), (1, 3, 4, 16, 24), (3, 3, 16, 20, 20)])
def test_output_shape(small_model: nn.Module, shape: tuple[int, ...]) -> None:
    with torch.no_grad():
        out = small_model(torch.rand(shape))
    assert out.shape == (shape[0], 5) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_normalization_is_the_first_layer(small_model: nn.Module) -> None:
    first_name, first = next(iter(small_model.named_children()))
    assert first_name == "normalize" and isinstance(first, Normalize)
    assert first.mean.shape == (1, 3, 1, 1, 1) and first.std.shape == (1, 3, 1, 1, 1)
    assert torch.allclose(first.mean.flatten(), torch.tensor([0.45] * 3))
    state = small_model.state_dict()
    assert "normalize.mean" in state and "normalize.std" in state
    # The model on pixels == the same network without its Normalize on normalized input.
    bare = copy.deepcopy(small_model)
    bare.normalize = nn.Identity()
    x = torch.rand(2, 3, 4, 16, 16)
    with torch.no_grad():
        assert torch.allclose(small_model(x), bare((x - 0.45) / 0.225), atol=1e-5)
        assert not torch.allclose(small_model(x), bare(x), atol=1e-3)


def test_traced_matches_eager(small_model: nn.Module) -> None:
    example = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(small_model, example)
        for shape in [(2, 3, 8, 32, 32), (5, 3, 8, 32, 32), (1, 3, 16, 24, 24)]:
            x = torch.rand(shape)
            assert torch.allclose(traced(x), small_model(x), atol=1e-5), shape


def test_build_and_forward_asserts() -> None:
    with pytest.raises(AssertionError):
        resnet3d_18(num_classes=0)
    with pytest.raises(AssertionError):
        resnet3d_18(num_classes=4, base_width=0)
    with pytest.raises(AssertionError):
        resnet3d_18(num_classes=4, mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(AssertionError):
        resnet3d_18(num_classes=4, std=(0.2, 0.0, 0.2))
    model = resnet3d_18(num_classes=4, base_width=4).eval()
    with pytest.raises(AssertionError):
        model(torch.rand(1, 1, 4, 16, 16))  # wrong channel count
    with pytest.raises(AssertionError):
        model(torch.rand(3, 4, 16, 16))  # no batch axis


def test_injected_norm_and_activation() -> None:
    model = resnet3d_18(
        num_classes=3,
        base_width=8,
        norm=lambda c: nn.GroupNorm(4, c),
        activation=nn.SiLU,
        in_channels=1,
        mean=(0.5,),
        std=(0.25,),
    )
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds and nn.SiLU in kinds
    assert nn.BatchNorm3d not in kinds and nn.ReLU not in kinds
    assert model(torch.rand(2, 1, 4, 16, 16)).shape == (2, 3)


def test_architecture_layout() -> None:
    model = resnet3d_18(num_classes=8, base_width=16)
    stem_conv = model.stem[0]
    assert stem_conv.kernel_size == (3, 7, 7) and stem_conv.stride == (1, 2, 2)
    blocks = [m for m in model.modules() if m.__class__.__name__ == "BasicBlock3d"]
    assert len(blocks) == 8
    assert all(b.conv1.kernel_size == (3, 3, 3) for b in blocks)
    assert [b.conv2.out_channels for b in blocks[::2]] == [16, 32, 64, 128]
    assert model.fc.in_features == 128


def test_same_size_as_torchvision_r3d_18() -> None:
    video = pytest.importorskip("torchvision.models.video")
    with torch.device("meta"):  # shapes only: skip allocating and initializing 33M weights
        ours = resnet3d_18(num_classes=400, base_width=64)
        ref = video.r3d_18(weights=None, num_classes=400)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(ref)
