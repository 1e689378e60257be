"""Starting inputs of each fuzz target: valid files of every accepted kind and a
few near-misses, generated deterministically (real encoders, ``numpy.save``)."""

from __future__ import annotations

import io
import logging

import numpy as np

from tests import media

logger = logging.getLogger(__name__)

_MAGIC = b"\x93NUMPY"


def _npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=True)
    return buf.getvalue()


def _clips(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return media.synthetic_frames(t, h, w, seed=seed)


def npy() -> dict[str, bytes]:
    """.npy files without their magic (the target prepends it)."""
    files = {
        "passthrough_v1": _npy(_clips(8, 32, 32)),
        "sampled_v1": _npy(_clips(10, 24, 40, seed=1)),
        "v2": _npy(_clips(8, 32, 32), version=(2, 0)),
        "v3": _npy(_clips(8, 32, 32), version=(3, 0)),
        "fortran": _npy(np.asfortranarray(_clips(9, 16, 20))),
        "one_frame": _npy(_clips(1, 32, 32)),
        "float": _npy(np.zeros((8, 8, 8, 3), np.float32)),
        "five_d": _npy(np.zeros((1, 8, 8, 8, 3), np.uint8)),
        "objects": _npy(np.array([{"x": 1}], dtype=object)),
        "header_only": media.npy_header_only((8, 32, 32, 3)),
    }
    return {name: data.removeprefix(_MAGIC) for name, data in files.items()}


def video() -> dict[str, bytes]:
    frames = _clips(10, 48, 64, seed=2)
    files: dict[str, bytes] = {}
    for kind in media.VIDEO_KINDS:
        if media.missing_encoders([kind]):
            continue
        files[kind] = media.write_kind(None, frames, kind)
    files["png"] = media.write_image(None, frames[0], "png")
    files["audio_only"] = media.write_audio_only(seconds=0.2)
    return files


def _multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str) -> bytes:
    out = b""
    for name, filename, ctype, body in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        out += head.encode() + b"\r\n" + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def upload() -> dict[str, bytes]:
    """``<content-type>\\n<chunk-size byte><body>`` (see targets.split_upload)."""
    clip = _npy(_clips(8, 8, 8))[:300]
    b = "sg-boundary-42"
    mp = f"multipart/form-data; boundary={b}".encode()
    return {
        "raw": b"application/x-npy\n\x40" + clip,
        "raw_untyped": b"\n\x07" + clip,
        "multipart": mp + b"\n\x10" + _multipart([("file", "c.npy", "application/x-npy", clip)], b),
        "multipart_two_parts": mp
        + b"\n\xff"
        + _multipart([("note", None, None, b"hello"), ("clip", "c.mp4", "video/mp4", clip)], b),
        "multipart_no_file": mp + b"\n\x03" + _multipart([("x", None, None, b"1")], b),
        "multipart_no_boundary": b"multipart/form-data\n\x01--x--\r\n",
        "empty": b"video/mp4\n\x00",
    }


def handler() -> dict[str, bytes]:
    """Copy mode (one [B, T, S, S, 3] array) and index mode (a [T, S, S, 3] clip followed
    by int64 [R, T] frame indices), right and wrong."""
    clip = _npy(np.full((8, 32, 32, 3), 9, np.uint8))
    rows = np.stack([np.random.default_rng(r).permutation(8) for r in range(4)])
    return {
        "index_mode": clip + _npy(rows.astype("<i8")),
        "index_mode_out_of_range": clip + _npy(np.full((2, 8), 8, "<i8")),
        "index_mode_int32": clip + _npy(rows.astype("<i4")),
        "index_mode_no_indices": clip,
        "batch": _npy(np.zeros((2, 8, 32, 32, 3), np.uint8)),
        "one": _npy(np.full((1, 8, 32, 32, 3), 7, np.uint8)),
        "wrong_shape": _npy(np.zeros((2, 8, 16, 16, 3), np.uint8)),
        "float": _npy(np.zeros((1, 8, 32, 32, 3), np.float32)),
        "objects": _npy(np.array([{"x": 1}], dtype=object)),
    }


def wire() -> dict[str, bytes]:
    return {
        "logits": _npy(np.linspace(-3, 3, 33, dtype=np.float32).reshape(11, 3)),
        "clips": _npy(np.zeros((2, 8, 8, 8, 3), np.uint8)),
        "float64": _npy(np.zeros((2, 3), np.float64)),
        "scalar": _npy(np.array(1.0, np.float32)),
    }


SEEDS = {"npy": npy, "video": video, "upload": upload, "handler": handler, "wire": wire}
