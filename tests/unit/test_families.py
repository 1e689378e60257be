"""The model-family registry: specs read off the libraries, wrappers, exports.

Families are built at a reduced input (crop 32 and the shortest clip each one takes):
the layers and parameter shapes are the libraries' real ones.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from service.core.presets import PRESETS
from service.models.families import (
    FAMILY_NAMES,
    VideoClassifier,
    build_family,
    get_family,
    kinetics400_labels,
)
from service.research.experiments.common import first_conv_temporal

#: shortest clip each family takes at crop 32 (measured: one less fails in the builder)
SMALL_CLIP = {
    "i3d_r50": 2,
    "slowfast_r50": 4,
    "csn_r101": 2,
    "x3d_xs": 2,
    "x3d_s": 2,
    "x3d_m": 2,
    "r3d_18": 2,
    "mc3_18": 2,
    "r2plus1d_18": 2,
    "s3d": 8,
    "mvit_v2_s": 2,
    "swin3d_t": 2,
    "i3d_inception": 2,
}
SMALL_CROP = 32
#: TorchScript trace vs eager, max |difference| / max(1, max |logit|) (measured: 0.0)
EXPORT_RTOL = 1e-5


def small_shape(name: str) -> tuple[int, int]:
    """``(clip_len, crop_size)`` the tests build ``name`` at."""
    return SMALL_CLIP[name], SMALL_CROP


@functools.cache
def small_model(name: str) -> VideoClassifier:
    t, crop = small_shape(name)
    return build_family(name, num_classes=7, clip_len=t, crop_size=crop, seed=1)


def test_registry_lists_the_thirteen_families() -> None:
    assert set(FAMILY_NAMES) == {
        "i3d_r50",
        "slowfast_r50",
        "csn_r101",
        "x3d_xs",
        "x3d_s",
        "x3d_m",
        "r3d_18",
        "mc3_18",
        "r2plus1d_18",
        "s3d",
        "mvit_v2_s",
        "swin3d_t",
        "i3d_inception",
    }
    with pytest.raises(KeyError, match="known"):
        get_family("resnet9000")


@pytest.mark.parametrize(
    "name", ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t"]
)
def test_torchvision_specs_are_the_weights_transforms(name: str) -> None:
    import torchvision.models.video as tvm

    enum = get_family(name).extra["weights_enum"].split(".")[0]
    preset = getattr(tvm, enum).KINETICS400_V1.transforms()
    spec = get_family(name).spec
    resize = [spec.resize] if isinstance(spec.resize, int) else list(spec.resize)
    assert resize == list(preset.resize_size)
    assert [spec.crop_size] * 2 == list(preset.crop_size)
    assert list(spec.mean) == list(preset.mean) and list(spec.std) == list(preset.std)
    assert spec.transform == "torchvision"
    # R3D/MC3/R(2+1)D: 16 frames at 15 fps of 30 fps video; MViT 16 at 7.5 fps
    expected = {"s3d": (128, 2), "mvit_v2_s": (16, 4), "swin3d_t": (32, 2)}
    assert (spec.clip_len, spec.frame_interval) == expected.get(name, (16, 2))


def test_pytorchvideo_specs() -> None:
    rows = {n: get_family(n).spec for n in FAMILY_NAMES if get_family(n).library == "pytorchvideo"}
    got = {n: (s.clip_len, s.frame_interval, s.resize, s.crop_size) for n, s in rows.items()}
    assert got == {
        "i3d_r50": (8, 8, 256, 256),
        "slowfast_r50": (32, 2, 256, 256),
        "csn_r101": (32, 2, 256, 256),
        "x3d_xs": (4, 12, 182, 182),
        "x3d_s": (13, 6, 182, 182),
        "x3d_m": (16, 5, 256, 256),
    }
    assert all(s.mean == (0.45,) * 3 and s.std == (0.225,) * 3 for s in rows.values())
    assert "ir-CSN-R152" in get_family("csn_r101").note


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_first_temporal_conv_and_head_match_the_built_model(name: str) -> None:
    fam = get_family(name)
    model = small_model(name)
    conv = dict(model.net.named_modules())[fam.first_temporal_conv.module]
    assert isinstance(conv, nn.Conv3d)
    assert (conv.kernel_size[0], conv.stride[0], conv.padding[0]) == (
        fam.first_temporal_conv.kernel,
        fam.first_temporal_conv.stride,
        fam.first_temporal_conv.padding,
    )
    # no earlier conv mixes frames
    for other_name, other in model.net.named_modules():
        if other_name == fam.first_temporal_conv.module:
            break
        if isinstance(other, nn.Conv3d) and "multipathway_blocks.0" not in other_name:
            assert other.kernel_size[0] == 1, other_name
    assert model.net.state_dict()[fam.head_weight].shape[0] == 7
    # what the monotonic-ratio analysis (analyze fig7) reads off a model
    assert first_conv_temporal(model) == (
        fam.first_temporal_conv.kernel,
        fam.first_temporal_conv.stride,
        fam.first_temporal_conv.padding,
    )


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_paper_presets(name: str) -> None:
    fam = get_family(name)
    if fam.library == "torchvision":
        assert fam.preset_arch is None
    else:
        key = name.split("_")[0]
        assert fam.preset_arch == key and PRESETS[key].ensemble == 10


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_interface_and_torchscript_export(name: str, tmp_path: Path) -> None:
    model = small_model(name)
    t, crop = small_shape(name)
    assert isinstance(model.normalize.mean, torch.Tensor) and not model.training
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, t, crop, crop, generator=gen)
    probe = torch.rand(3, 3, t, crop, crop, generator=gen)
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(tmp_path / "model.pt"))
        loaded = torch.jit.load(str(tmp_path / "model.pt"))
        ref = model(probe)
        got = loaded(probe)
    assert ref.shape == (3, 7) and ref.dtype == torch.float32
    err = (ref - got).abs().max().item() / max(1.0, ref.abs().max().item())
    assert err <= EXPORT_RTOL, f"{name}: export differs by {err:.2e}"


def test_exports_load_without_the_project(tmp_path: Path) -> None:
    """TorchScript files of three families run in an isolated interpreter (no
    ``service`` importable, no pytorchvideo imported) and give the eager logits."""
    expected = {}
    for name in ("slowfast_r50", "x3d_xs", "swin3d_t"):
        model = small_model(name)
        t, crop = small_shape(name)
        x = torch.rand(1, 3, t, crop, crop, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.jit.trace(model, x, check_trace=False).save(str(tmp_path / f"{name}.pt"))
            expected[name] = model(x)[0].tolist()
        torch.save(x, tmp_path / f"{name}.in")
    code = (
        "import json, sys, torch\n"
        "out = {}\n"
        f"for name in {sorted(expected)!r}:\n"
        "    m = torch.jit.load(name + '.pt')\n"
        "    out[name] = m(torch.load(name + '.in'))[0].tolist()\n"
        "assert 'service' not in sys.modules and 'pytorchvideo' not in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for name, ref in expected.items():
        assert torch.allclose(torch.tensor(got[name]), torch.tensor(ref), atol=1e-5), name


def test_slowfast_packs_its_pathways_as_pytorchvideo() -> None:
    """slow = frames at linspace(0, T-1, T // 4), fast = all T (PyTorchVideo's PackPathway)."""
    model = build_family("slowfast_r50", num_classes=3, clip_len=16, crop_size=SMALL_CROP)
    seen: list[list[torch.Tensor]] = []
    handle = model.net.register_forward_pre_hook(
        lambda _m, args: seen.append([p.clone() for p in args[0]])  # the net rewrites the list
    )
    x = torch.rand(1, 3, 16, SMALL_CROP, SMALL_CROP)
    with torch.no_grad():
        model(x)
    handle.remove()
    slow, fast = seen[0]
    normalized = model.normalize(x)
    assert torch.equal(fast, normalized)
    # torch.linspace(0, 15, 16 // 4) = [0, 5, 10, 15]
    assert torch.equal(slow, normalized[:, :, [0, 5, 10, 15]])


def test_reduced_input_keeps_every_parameter() -> None:
    full = build_family("i3d_r50")
    small = small_model("i3d_r50")
    assert {k: tuple(v.shape) for k, v in full.net.state_dict().items() if "proj" not in k} == {
        k: tuple(v.shape) for k, v in small.net.state_dict().items() if "proj" not in k
    }
    mvit_full = build_family("mvit_v2_s").net.state_dict()
    mvit_small = small_model("mvit_v2_s").net.state_dict()
    assert {k: v.shape for k, v in mvit_full.items() if "head" not in k} == {
        k: v.shape for k, v in mvit_small.items() if "head" not in k
    }


def test_kinetics400_labels() -> None:
    labels = kinetics400_labels()
    assert len(labels) == 400 == len(set(labels))
    assert labels[0] == "abseiling" and labels[-1] == "zumba"


def test_import_service_stays_light() -> None:
    code = (
        "import sys, service, service.models, service.gateway.app, service.modelserver.archive\n"
        "heavy = [m for m in ('pytorchvideo', 'torchvision', 'fvcore') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "name", [n for n in FAMILY_NAMES if get_family(n).library == "pytorchvideo"]
)
def test_pytorchvideo_checkpoint_sources_are_the_hubs(name: str) -> None:
    import importlib

    module = importlib.import_module(get_family(name).builder.split(":")[0])
    paths = getattr(module, "checkpoint_paths", None)
    if paths is None:  # pytorchvideo.models.hub re-exports the builders; read their modules
        builder = getattr(module, name)
        paths = importlib.import_module(builder.__module__).checkpoint_paths
    assert paths[name] == get_family(name).checkpoint_source
