"""An ``.npy`` upload -> one clip: the header checked before any data is touched, then
the array passed through bit-exact (already the clip) or sampled, resized and cropped
like a video."""

from __future__ import annotations

import numpy as np

from service.decoder import npy
from service.decoder.clip import DecodedClip
from service.decoder.errors import ACCEPTED, BadVideoError, LimitExceededError, NotAVideoError
from service.decoder.limits import Budget
from service.decoder.resize import Geometry
from service.decoder.sampling import sample_frame_indices

__all__ = ["decode_npy"]

#: The dtypes an .npy clip may have (any spelling of uint8: byte order is meaningless).
_NPY_DTYPES = (np.dtype(np.uint8),)
_NPY_EXPECTED = "an .npy clip must be uint8 [T, H, W, 3] RGB 0..255"


def _read_npy_header(data: bytes) -> npy.NpyHeader:
    """The upload's ``.npy`` header, parsed by :mod:`service.decoder.npy` (numpy's
    parser, the header bounded before it is read, uint8 only); nothing is allocated.

    Raises:
        BadVideoError: on anything malformed, with what is wrong.
    """
    try:
        return npy.read_header(data, dtypes=_NPY_DTYPES)
    except npy.NpyError as exc:
        raise BadVideoError(f"{exc}; {_NPY_EXPECTED}, written with numpy.save") from None


def _checked_header(data: bytes, budget: Budget) -> npy.NpyHeader:
    """The header of a ``[T, H, W, 3]`` clip within the limits whose data fills the body."""
    limits = budget.limits
    header = _read_npy_header(data)
    shape = header.shape
    expected = f"{_NPY_EXPECTED}, got uint8 {shape}"
    if len(shape) != 4:
        raise BadVideoError(f"{expected}: wrong number of dimensions")
    if shape[-1] != 3:
        raise BadVideoError(f"{expected}: the last axis must hold the 3 RGB channels")
    t, h, w = (int(v) for v in shape[:3])
    if t == 0 or h == 0 or w == 0:
        raise BadVideoError(f"{expected}: the clip is empty")
    budget.check_pixels(w, h, "an .npy frame")
    if t > limits.max_frames:
        raise LimitExceededError(
            "max_frames",
            t,
            limits.max_frames,
            f"the .npy holds {t} frames, over max_frames={limits.max_frames}; send at most"
            f" {limits.max_frames} frames",
        )
    if header.end != len(data):
        raise BadVideoError(
            f"the .npy header declares {header.nbytes} bytes of uint8 data but the body holds"
            f" {len(data) - header.start} (truncated or padded file)"
        )
    return header


def decode_npy(
    data: bytes, clip_len: int, frame_interval: int, geometry: Geometry, budget: Budget
) -> DecodedClip:
    """An ``.npy`` upload: header checked before any data is touched, then either
    passed through bit-exact or sampled/resized/cropped like a video."""
    header = _checked_header(data, budget)
    t, h, w = (int(v) for v in header.shape[:3])
    array = header.view(data)  # in place
    crop_size = geometry.crop_size
    if array.shape == (clip_len, crop_size, crop_size, 3):
        return DecodedClip(
            frames=np.array(array, order="C", copy=True),  # bit-exact, writable
            frame_indices=np.arange(clip_len, dtype=np.int64),
            source_format="npy",
            source_codec=None,
            source_frames=t,
            source_width=w,
            source_height=h,
            passthrough=True,
        )
    if t < 2:
        raise NotAVideoError(
            f"the .npy holds a single frame {header.shape}, a still image, not a video; {ACCEPTED}"
        )
    indices = sample_frame_indices(t, clip_len, frame_interval)
    resized: dict[int, np.ndarray] = {}
    for index in np.unique(indices).tolist():
        budget.check_time()
        resized[index] = geometry.apply(array[index])
    return DecodedClip(
        frames=np.stack([resized[i] for i in indices.tolist()]),
        frame_indices=indices,
        source_format="npy",
        source_codec=None,
        source_frames=t,
        source_width=w,
        source_height=h,
    )
