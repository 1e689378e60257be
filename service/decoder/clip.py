"""The decoder's result: one model-ready clip and where it came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DecodedClip"]


@dataclass(frozen=True, eq=False)
class DecodedClip:
    """One model-ready clip and where it came from.

    Attributes:
        frames: uint8 ``[clip_len, crop_size, crop_size, 3]`` RGB 0..255, C-contiguous.
        frame_indices: int64 ``[clip_len]``, the 0-based source frame of each output frame.
        source_format: ``"npy"`` or FFmpeg's demuxer name (e.g. ``"matroska,webm"``).
        source_codec: FFmpeg's decoder name (``"h264"``, ``"vp9"``, ...); None for npy.
        source_frames: the frame count the sampling used (npy: ``T``; video: exact when
            the stream was decoded to its end, else the container's or packet count).
        source_width: displayed width of a source frame (after rotation).
        source_height: displayed height of a source frame (after rotation).
        passthrough: True when an ``.npy`` was already the clip and is returned as is.
        frames_decoded: frames the video decoder produced, all passes (0 for npy).
        rotation: display rotation applied, degrees counter-clockwise (0, 90, 180, 270).
    """

    frames: np.ndarray
    frame_indices: np.ndarray
    source_format: str
    source_codec: str | None
    source_frames: int
    source_width: int
    source_height: int
    passthrough: bool = False
    frames_decoded: int = 0
    rotation: int = 0
