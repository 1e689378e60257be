"""Which source frames make the clip: MMAction2's ``SampleFrames`` in test mode."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_frame_indices"]


def sample_frame_indices(total_frames: int, clip_len: int, frame_interval: int) -> np.ndarray:
    """Source frames of the one test-mode clip of MMAction2 ``SampleFrames``.

    ``clip_len`` frames, ``frame_interval`` apart, centred: with the clip spanning
    ``span = clip_len * frame_interval`` frames, the first index is
    ``(total_frames - span + 1) // 2`` when ``total_frames >= span`` and 0
    otherwise; indices past the end wrap around (``index % total_frames``, the
    ``out_of_bound_opt="loop"`` default), so a short video loops.

    Args:
        total_frames: frames in the video (>= 1; a single frame gives all zeros).
        clip_len: frames in the clip (>= 1).
        frame_interval: stride between sampled frames (>= 1).

    Returns:
        int64 ``[clip_len]``, every value in ``[0, total_frames)``.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    if frame_interval < 1:
        raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
    span = clip_len * frame_interval
    offset = (total_frames - span + 1) // 2 if total_frames > span - 1 else 0
    indices = offset + np.arange(clip_len, dtype=np.int64) * frame_interval
    return np.mod(indices, total_frames)
