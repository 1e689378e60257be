"""The binary batch protocol between the gateway and the model backend.

Request body (``Content-Type: application/x-npy``): one ``.npy`` array, uint8
``[B, T, H, W, 3]`` RGB 0..255 -- the N shuffled copies and the unshuffled clip
of one classify call. Pixels travel as bytes, never as JSON floats.

Response body (``application/x-npy``): one ``.npy`` float32 array ``[B, K]`` of
logits, row ``b`` for clip ``b`` of the request.

The npy format is used because numpy reads it without pickle
(``allow_pickle=False``), it carries dtype and shape, and any client can write it.
This module imports numpy only; the TorchServe handler keeps its own copy of
the two lines it needs so the archive loads without this package.
"""

from __future__ import annotations

import io

import numpy as np

CONTENT_TYPE = "application/x-npy"


class WireError(ValueError):
    """A payload that is not the expected npy array."""


def encode_array(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_array(payload: bytes, *, dtype: np.dtype | type, ndim: int) -> np.ndarray:
    """Parse an npy payload and check its dtype and rank."""
    try:
        array = np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError on junk
        raise WireError(f"payload is not a valid .npy array: {exc}") from exc
    if array.dtype != np.dtype(dtype):
        raise WireError(f"expected dtype {np.dtype(dtype)}, got {array.dtype}")
    if array.ndim != ndim:
        raise WireError(f"expected a {ndim}-d array, got shape {array.shape}")
    return array


def encode_clips(clips: np.ndarray) -> bytes:
    """uint8 ``[B, T, H, W, 3]`` -> request body."""
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise WireError(f"clips must be uint8 [B, T, H, W, 3], got {clips.dtype} {clips.shape}")
    return encode_array(clips)


def decode_clips(payload: bytes) -> np.ndarray:
    clips = decode_array(payload, dtype=np.uint8, ndim=5)
    if clips.shape[-1] != 3:
        raise WireError(f"clips must have 3 channels last, got shape {clips.shape}")
    return clips


def encode_logits(logits: np.ndarray) -> bytes:
    return encode_array(np.asarray(logits, dtype=np.float32))


def decode_logits(payload: bytes) -> np.ndarray:
    return decode_array(payload, dtype=np.float32, ndim=2)
