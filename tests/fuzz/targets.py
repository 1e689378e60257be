"""Fuzz targets: bytes in, and the invariant every input must satisfy.

Every input must end in a clip (or parsed batch / upload) or in one of the
project's typed errors -- :class:`service.decoder.errors.VideoError`,
:class:`service.gateway.errors.GatewayError`, the handler's ``RequestError`` --
within the decode-time limit, with no allocation past the limits. Anything else
(another exception, a clip of the wrong shape, a decode that overruns its time
limit) propagates out of the target, and atheris reports it as a crash with the
input that caused it.

Each target is a plain function ``target(data: bytes) -> None`` so the committed
corpus is replayed by pytest without atheris (:func:`replay`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.decoder.decode import decode_clip
from service.decoder.errors import VideoError
from service.decoder.limits import DecodeLimits
from service.decoder.sniff import NPY_MAGIC
from service.gateway import upload as upload_module
from service.gateway.errors import ERROR_CODES, GatewayError
from service.modelserver import handler as handler_module
from service.modelserver import wire as wire_module

CORPUS = Path(__file__).resolve().parent / "corpus"

#: the model geometry the fuzzed decoder and handler serve (the test model's)
CLIP_LEN, FRAME_INTERVAL, CROP = 8, 1, 32
#: limits of the fuzzed decoder: small, so a hostile input reaches them quickly
LIMITS = DecodeLimits(
    max_bytes=2 * 1024 * 1024, max_pixels=640 * 480, max_frames=300, max_decode_seconds=2.0
)
#: a decode may overrun ``max_decode_seconds`` by one frame's or packet's work, never more
DECODE_SLACK_S = 8.0
#: upload limits of the fuzzed upload reader
UPLOAD_MAX_BYTES = 64 * 1024


class InvariantViolation(AssertionError):
    """An input broke a target's invariant (not an exception the code raised itself)."""


def _check_clip(frames: np.ndarray) -> None:
    if frames.shape != (CLIP_LEN, CROP, CROP, 3) or frames.dtype != np.uint8:
        raise InvariantViolation(f"clip of {frames.dtype} {frames.shape}")


def _decode(data: bytes, content_type: str | None = None) -> None:
    t0 = time.monotonic()
    try:
        clip = decode_clip(
            data,
            clip_len=CLIP_LEN,
            frame_interval=FRAME_INTERVAL,
            crop_size=CROP,
            limits=LIMITS,
            content_type=content_type,
        )
    except VideoError as exc:
        status = ERROR_CODES[exc.code].status
        if not exc.message or status not in (400, 413, 415):
            raise InvariantViolation(f"{type(exc).__name__} {status}: {exc}") from exc
    else:
        _check_clip(clip.frames)
    elapsed = time.monotonic() - t0
    if elapsed > LIMITS.max_decode_seconds + DECODE_SLACK_S:
        raise InvariantViolation(f"decode took {elapsed:.1f} s, limit {LIMITS.max_decode_seconds}")


# --------------------------------------------------------------------------- #
# service.decoder
# --------------------------------------------------------------------------- #
def npy(data: bytes) -> None:
    """The .npy path of :func:`service.decoder.decode.decode_clip` (the magic is always
    prepended)."""
    _decode(NPY_MAGIC + data, content_type="application/x-npy")


def video(data: bytes) -> None:
    """The video path of :func:`service.decoder.decode.decode_clip` (mutated real containers)."""
    _decode(data)


# --------------------------------------------------------------------------- #
# service.gateway.upload
# --------------------------------------------------------------------------- #
def split_upload(data: bytes) -> tuple[bytes, list[bytes]]:
    """Input layout: ``<content-type>\\n<chunk size byte><body>``; the body arrives in
    chunks of 1..256 bytes, as a network would deliver it."""
    content_type, _, rest = data.partition(b"\n")
    size = (rest[0] if rest else 0) + 1
    body = rest[1:]
    return content_type, [body[i : i + size] for i in range(0, len(body), size)] or [b""]


async def _read(content_type: bytes, chunks: list[bytes]) -> upload_module.Upload:
    from starlette.requests import Request

    pending = list(chunks)

    async def receive() -> dict[str, object]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    headers = [(b"content-type", content_type)] if content_type else []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/classify",
        "headers": headers,
        "query_string": b"",
    }
    request = Request(scope, receive)
    return await upload_module.read_upload(
        request, max_bytes=UPLOAD_MAX_BYTES, timeout_s=5.0, linger_s=0.0
    )


_LOOP: asyncio.AbstractEventLoop | None = None


def upload(data: bytes) -> None:
    """:func:`service.gateway.upload.read_upload` on a multipart or raw body."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    content_type, chunks = split_upload(data)
    try:
        result = _LOOP.run_until_complete(_read(content_type, chunks))
    except GatewayError as exc:
        if not 400 <= exc.status_code < 500 or not exc.message:
            raise InvariantViolation(f"{type(exc).__name__} {exc.status_code}: {exc}") from exc
        return
    if not result.data or len(result.data) > UPLOAD_MAX_BYTES:
        raise InvariantViolation(f"upload of {len(result.data)} bytes")


# --------------------------------------------------------------------------- #
# service.modelserver.handler (TorchServe worker)
# --------------------------------------------------------------------------- #
_HANDLER = handler_module.ShuffleGuardHandler()
_HANDLER.meta = {"name": "fuzz", "clip_len": CLIP_LEN, "crop_size": CROP}
_MAX_BATCH_BYTES = handler_module.MAX_REQUEST_CLIPS * CLIP_LEN * CROP * CROP * 3


def _check_batch(parsed: object) -> None:
    """A parsed request: copy mode's uint8 ``[B, T, S, S, 3]`` array, or (the handler's
    ``ClipRequest``, once it parses index mode) ``frames`` with ``indices`` None, or one
    uint8 ``[T, S, S, 3]`` clip with int64 ``[R, T]`` indices in ``[0, T)``."""
    frames = getattr(parsed, "frames", parsed)
    indices = getattr(parsed, "indices", None)
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise InvariantViolation(f"parsed frames {type(frames).__name__}")
    if frames.nbytes > _MAX_BATCH_BYTES:
        raise InvariantViolation(f"batch of {frames.nbytes} bytes")
    if indices is None:
        if frames.shape[1:] != (CLIP_LEN, CROP, CROP, 3) or frames.shape[0] < 1:
            raise InvariantViolation(f"batch of {frames.dtype} {frames.shape}")
        return
    if frames.shape != (CLIP_LEN, CROP, CROP, 3):
        raise InvariantViolation(f"index-mode clip of {frames.shape}")
    rows = indices.shape[0] if indices.ndim == 2 else -1
    if indices.dtype != np.int64 or indices.shape[1:] != (CLIP_LEN,):
        raise InvariantViolation(f"indices of {indices.dtype} {indices.shape}")
    if not 1 <= rows <= handler_module.MAX_REQUEST_CLIPS:
        raise InvariantViolation(f"{rows} index rows")
    if int(indices.min()) < 0 or int(indices.max()) >= CLIP_LEN:
        raise InvariantViolation(f"indices {int(indices.min())}..{int(indices.max())}")


def handler(data: bytes) -> None:
    """The batch parser of the TorchServe handler (copy mode, and index mode where the
    handler has it), on a raw body and as TorchServe's dict."""
    for payload in (data, {"body": bytearray(data)}):
        try:
            parsed = _HANDLER.parse(payload)
        except handler_module.RequestError as exc:
            if not str(exc):
                raise InvariantViolation("RequestError without a message") from exc
            continue
        _check_batch(parsed)


# --------------------------------------------------------------------------- #
# service.modelserver.wire (the gateway reading the backend's answer)
# --------------------------------------------------------------------------- #
def wire(data: bytes) -> None:
    """:func:`service.modelserver.wire.decode_logits` and ``decode_clips`` on a backend payload."""
    for decode, ndim, dtype in (
        (wire_module.decode_logits, 2, np.float32),
        (wire_module.decode_clips, 5, np.uint8),
    ):
        try:
            array = decode(data)
        except wire_module.WireError as exc:
            if not str(exc):
                raise InvariantViolation("WireError without a message") from exc
            continue
        if array.ndim != ndim or array.dtype != dtype:
            raise InvariantViolation(f"decoded {array.dtype} {array.shape}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "npy": npy,
    "video": video,
    "upload": upload,
    "handler": handler,
    "wire": wire,
}


def replay(target: str) -> list[Path]:
    """Run every committed corpus input of ``target``; the files replayed."""
    files = sorted(p for p in (CORPUS / target).glob("*") if p.is_file())
    for path in files:
        TARGETS[target](path.read_bytes())
    return files
