"""The gateway's decode gives each family the input its own library's transform gives.

Reference transforms, applied to the same sampled source frames:

* torchvision families: ``<Weights>.KINETICS400_V1.transforms()`` (torchvision's
  ``VideoClassification``: resize, centre crop, normalize) on the uint8 frames,
  de-normalized back to ``[0, 1]``;
* PyTorchVideo families: its Kinetics inference transform as its hub tutorials write
  it, ``x / 255``, ``ShortSideScale(side)``, ``CenterCropVideo(crop)``. PyTorchVideo
  0.1.5's ``pytorchvideo.transforms`` package no longer imports with torchvision 0.29
  (it imports the removed ``torchvision.transforms.functional_tensor``), so its
  ``short_side_scale`` maths (bilinear, ``align_corners=False``, no antialias, long
  side ``floor(long / short * side)``) is written out here; the crop is torchvision's
  ``CenterCropVideo``, the one the tutorials use.

Tolerance: the gateway resizes frame by frame and rounds to uint8 (the wire carries
uint8), the references stay in float (PyTorchVideo) or round once (torchvision), so
pixels may differ by half a level plus float error: ``1 / 255``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.decoder.decode import decode_clip
from service.decoder.sampling import sample_frame_indices
from service.models.families import get_family
from tests.media import npy_bytes

TOL = 1.0 / 255 + 1e-6


def source_video(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[t, h, w, 3]``: smooth gradients plus texture (resampling shows on both)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        base = 127 + 80 * np.sin((xx + 3 * i) / 17.0)[..., None] * np.cos(yy / 23.0)[..., None]
        noise = rng.normal(0, 25, (h, w, 3))
        frames[i] = np.clip(base + noise, 0, 255).astype(np.uint8)
    return frames


def decoded(family: str, video: np.ndarray, clip_len: int) -> tuple[torch.Tensor, np.ndarray]:
    """The gateway's clip as float ``[T, 3, crop, crop]`` in [0, 1], and its frame indices."""
    spec = get_family(family).spec
    clip = decode_clip(
        npy_bytes(video),
        clip_len=clip_len,
        frame_interval=spec.frame_interval,
        crop_size=spec.crop_size,
        resize=spec.resize,
        transform=spec.transform,
    )
    assert clip.frames.shape == (clip_len, spec.crop_size, spec.crop_size, 3)
    return torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255, clip.frame_indices


@pytest.mark.parametrize("family", ["r3d_18", "s3d", "mvit_v2_s", "swin3d_t"])
@pytest.mark.parametrize("size", [(240, 320), (360, 270)])
def test_torchvision_families_match_their_weights_transforms(
    family: str, size: tuple[int, int]
) -> None:
    import torchvision.models.video as tvm

    spec = get_family(family).spec
    clip_len = 4  # the sampling is the same code for any length; 4 keeps it quick
    video = source_video(clip_len * spec.frame_interval + 3, *size)
    ours, indices = decoded(family, video, clip_len)
    assert (
        indices.tolist() == sample_frame_indices(len(video), clip_len, spec.frame_interval).tolist()
    )
    enum = get_family(family).extra["weights_enum"].split(".")[0]
    preset = getattr(tvm, enum).KINETICS400_V1.transforms()
    frames = torch.from_numpy(video[indices]).permute(0, 3, 1, 2)  # uint8 [T, C, H, W]
    ref = preset(frames)  # [C, T, crop, crop], normalized
    mean = torch.tensor(preset.mean).view(3, 1, 1, 1)
    std = torch.tensor(preset.std).view(3, 1, 1, 1)
    ref01 = (ref * std + mean).permute(1, 0, 2, 3)
    err = (ours - ref01).abs().max().item()
    assert err <= TOL, f"{family} {size}: max |diff| {err * 255:.2f} levels"


def pytorchvideo_reference(frames: np.ndarray, side: int, crop: int) -> torch.Tensor:
    """PyTorchVideo's Kinetics test transform on uint8 ``[T, H, W, 3]`` (see module doc)."""
    from torchvision.transforms._transforms_video import CenterCropVideo

    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0  # [C, T, H, W]
    h, w = x.shape[-2:]
    if w < h:
        new_h, new_w = int(math.floor(h / w * side)), side
    else:
        new_h, new_w = side, int(math.floor(w / h * side))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return CenterCropVideo(crop)(x).permute(1, 0, 2, 3)  # [T, C, crop, crop]


@pytest.mark.parametrize("family", ["i3d_r50", "slowfast_r50", "x3d_xs", "x3d_m"])
@pytest.mark.parametrize("size", [(240, 320), (300, 225)])
def test_pytorchvideo_families_match_their_transform(family: str, size: tuple[int, int]) -> None:
    spec = get_family(family).spec
    assert isinstance(spec.resize, int)
    clip_len = 4
    video = source_video(clip_len * spec.frame_interval + 5, *size, seed=1)
    ours, indices = decoded(family, video, clip_len)
    ref = pytorchvideo_reference(video[indices], spec.resize, spec.crop_size)
    err = (ours - ref).abs().max().item()
    assert err <= TOL, f"{family} {size}: max |diff| {err * 255:.2f} levels"


def test_an_encoded_video_decodes_to_the_family_geometry() -> None:
    """A real H.264 file through the video path (not npy) lands at the family's shape."""
    from tests import media

    spec = get_family("r2plus1d_18").spec
    data = media.write_kind(None, media.synthetic_frames(40, 120, 160), "mp4_h264")
    clip = decode_clip(
        data,
        clip_len=spec.clip_len,
        frame_interval=spec.frame_interval,
        crop_size=spec.crop_size,
        resize=spec.resize,
        transform=spec.transform,
    )
    assert clip.frames.shape == (16, 112, 112, 3)
    assert clip.frame_indices.tolist() == list(range(4, 36, 2))


def test_default_geometry_is_unchanged_for_toy_models() -> None:
    """Without resize/transform the toy path is the one it was: short side to crop,
    antialiased, crop offset floored."""
    video = source_video(20, 90, 121)
    a = decode_clip(npy_bytes(video), clip_len=16, frame_interval=1, crop_size=64).frames
    b = decode_clip(npy_bytes(video), clip_len=16, frame_interval=1, crop_size=64, resize=64).frames
    assert np.array_equal(a, b)
    c = decode_clip(
        npy_bytes(video),
        clip_len=16,
        frame_interval=1,
        crop_size=64,
        resize=64,
        transform="torchvision",
    ).frames
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="crop_size"):
        decode_clip(npy_bytes(video), clip_len=4, frame_interval=1, crop_size=64, resize=32)
