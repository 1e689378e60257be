"""The decoder's entry point: :func:`decode_clip` (see :mod:`service.decoder` for what
it accepts and which error a rejected upload gets)."""

from __future__ import annotations

from service.decoder.clip import DecodedClip
from service.decoder.errors import ACCEPTED, BadVideoError
from service.decoder.limits import DEFAULT_LIMITS, Budget, DecodeLimits
from service.decoder.npy_clip import decode_npy
from service.decoder.pyav import VideoDecoder
from service.decoder.resize import Geometry, Resize
from service.decoder.sniff import (
    NPY_CONTENT_TYPE,
    NPY_MAGIC,
    is_npy_content_type,
    looks_like_text,
)

__all__ = ["decode_clip"]


def decode_clip(
    data: bytes,
    *,
    clip_len: int,
    frame_interval: int,
    crop_size: int,
    limits: DecodeLimits = DEFAULT_LIMITS,
    content_type: str | None = None,
    resize: Resize | None = None,
    transform: str = "shuffleguard",
    seek: bool = True,
) -> DecodedClip:
    """Decode an uploaded video or ``.npy`` clip into one model-ready clip.

    Args:
        data: the upload, in memory (never written to disk).
        clip_len: frames in the clip (the model's ``clip_len``, >= 1).
        frame_interval: stride of the sampled frames (>= 1).
        crop_size: side of the square output frames (>= 1).
        resize: before the crop, resize the short side to this int (default:
            ``crop_size``), or the frame to a fixed ``(h, w)``; each >= ``crop_size``.
        transform: the resize/crop arithmetic, ``"shuffleguard"`` (default; the toy
            models') or ``"torchvision"`` (torchvision's and PyTorchVideo's Kinetics
            transforms); see :func:`service.decoder.resize.resize_crop`.
        limits: resource limits, each checked before its cost is paid.
        content_type: the request's Content-Type, if any. Only used to report an
            ``application/x-npy`` body that is not an ``.npy``; formats are
            detected from the bytes, never trusted from this header.
        seek: decode only the packet runs the sampled frames need (the default; the
            same frames as ``False``, see "Skipping to keyframes" in
            :mod:`service.decoder.pyav`); ``False`` decodes every frame up to the last
            sampled one (the benchmark's baseline and the tests' reference).

    Returns:
        A :class:`DecodedClip` whose ``frames`` are uint8
        ``[clip_len, crop_size, crop_size, 3]`` RGB 0..255.

    Raises:
        BadVideoError: ``bad_video``, undecodable/empty/corrupt upload.
        NotAVideoError: ``not_a_video``, a still image or a file without a video stream.
        LimitExceededError: a limit code, over a limit of ``limits``.
        ValueError: a sampling or geometry argument out of range (a caller bug).
    """
    _check_sampling(clip_len=clip_len, frame_interval=frame_interval, crop_size=crop_size)
    geometry = Geometry.checked(crop_size, resize, transform)
    budget = Budget(limits)
    _check_size(data, budget)
    if data.startswith(NPY_MAGIC):
        return decode_npy(data, clip_len, frame_interval, geometry, budget)
    _refuse_before_ffmpeg(data, content_type)
    return VideoDecoder(data, clip_len, frame_interval, geometry, budget, seek=seek).decode()


def _check_sampling(**values: int) -> None:
    """ValueError (a caller bug) on a ``clip_len``, ``frame_interval`` or ``crop_size`` < 1."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _check_size(data: bytes, budget: Budget) -> None:
    """Over ``max_bytes`` (checked before anything is parsed), or empty."""
    budget.check_bytes(len(data))
    if not data:
        raise BadVideoError(
            "the upload is empty; send the video as the multipart field 'file' or as the raw"
            " request body"
        )


def _refuse_before_ffmpeg(data: bytes, content_type: str | None) -> None:
    """Bodies that never reach FFmpeg: one declared ``.npy`` without the npy magic, and
    text (so it never reaches FFmpeg's subtitle and playlist parsers)."""
    if is_npy_content_type(content_type):
        raise BadVideoError(
            f"the Content-Type is {NPY_CONTENT_TYPE} but the body is not an .npy file (it does"
            " not start with the npy magic \\x93NUMPY); write it with numpy.save"
        )
    if looks_like_text(data):
        raise BadVideoError(f"the upload is text, not an encoded video; {ACCEPTED}")
