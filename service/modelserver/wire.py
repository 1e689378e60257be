"""The binary batch protocol between the gateway and the model backend.

Request body (``Content-Type: application/x-npy``), one of two modes:

* **copy mode**: one ``.npy`` array, uint8 ``[B, T, H, W, 3]`` RGB 0..255 -- the
  clips themselves (e.g. the unshuffled clip and its N shuffled copies);
* **index mode**: two ``.npy`` arrays back to back, the clip once as uint8
  ``[T, H, W, 3]`` and int64 (little-endian) ``[R, T]`` frame indices; the backend
  classifies the ``R`` clips ``clip[indices[r]]``, gathered on its own device. The
  body is one clip plus ``8 R T`` bytes, whatever ``R``.

Pixels travel as bytes, never as JSON floats. The receiver
(:meth:`service.modelserver.handler.ShuffleGuardHandler.parse`) reads each npy header,
checks dtype, shape and size against its limits before any memory is spent, and
reads the data in place.

Response body (``application/x-npy``): one ``.npy`` float32 array ``[B, K]`` of
logits, row ``b`` for clip ``b`` of the request.

The npy format is used because numpy reads it without pickle, it carries dtype
and shape, and any client can write it. Both sides read it with
:mod:`service.decoder.npy` (numpy's header parser, the header bounded, the dtype
checked, the data read in place); the archive packs that module beside the
handler. This module imports numpy only.
"""

from __future__ import annotations

import io

import numpy as np

from service.decoder import npy

CONTENT_TYPE = "application/x-npy"


class WireError(ValueError):
    """A payload that is not the expected npy array."""


def encode_array(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_array(payload: bytes, *, dtype: np.dtype | type, ndim: int) -> np.ndarray:
    """Parse an npy payload and check its dtype, rank and size; the array is read in
    place (read-only when ``payload`` is ``bytes``)."""
    try:
        header = npy.read_header(payload, dtypes=(np.dtype(dtype),))
        array = header.view(payload)
    except npy.NpyError as exc:
        raise WireError(f"payload is not a valid .npy array: {exc}") from exc
    if header.end != len(payload):
        raise WireError(f"payload is {len(payload)} bytes, its .npy array declares {header.end}")
    if array.ndim != ndim:
        raise WireError(f"expected a {ndim}-d array, got shape {array.shape}")
    return array


def encode_clips(clips: np.ndarray) -> bytes:
    """uint8 ``[B, T, H, W, 3]`` -> request body."""
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise WireError(f"clips must be uint8 [B, T, H, W, 3], got {clips.dtype} {clips.shape}")
    return encode_array(clips)


def encode_indexed(clip: np.ndarray, indices: np.ndarray) -> bytes:
    """Index-mode request body: uint8 ``[T, H, W, 3]`` clip + int64 ``[R, T]`` indices."""
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise WireError(f"clip must be uint8 [T, H, W, 3], got {clip.dtype} {clip.shape}")
    if indices.ndim != 2 or indices.shape[1] != clip.shape[0]:
        raise WireError(f"indices must be [R, {clip.shape[0]}], got shape {indices.shape}")
    return encode_array(clip) + encode_array(np.asarray(indices, dtype="<i8"))


def decode_clips(payload: bytes) -> np.ndarray:
    clips = decode_array(payload, dtype=np.uint8, ndim=5)
    if clips.shape[-1] != 3:
        raise WireError(f"clips must have 3 channels last, got shape {clips.shape}")
    return clips


def encode_logits(logits: np.ndarray) -> bytes:
    return encode_array(np.asarray(logits, dtype=np.float32))


def decode_logits(payload: bytes) -> np.ndarray:
    return decode_array(payload, dtype=np.float32, ndim=2)
