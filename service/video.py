"""Video decoding for the gateway: upload bytes in, one model-ready clip out.

:func:`decode_clip` turns an uploaded file (any video PyAV decodes, or an
``.npy`` clip) into uint8 ``[clip_len, crop_size, crop_size, 3]`` RGB 0..255, the
way MMAction2's test pipeline does: ``SampleFrames`` (test mode, one clip), then
resize the short side to ``crop_size`` (or to the model's ``resize``: a short side, or
a fixed ``(h, w)`` as torchvision's R3D/MC3/R(2+1)D transforms), then centre-crop,
with the model's resize arithmetic (``transform``, see :func:`_resize_crop`). This module
imports numpy, av and Pillow only (no torch, no web framework), so the gateway, the CLI
and notebooks share it and a gateway process does not load torch; the gateway maps
:class:`VideoError` to HTTP in one place through its ``status_code`` and ``code``
attributes.

What is accepted, and which error a rejected upload gets
--------------------------------------------------------
* **Videos**: any container and codec PyAV (FFmpeg) decodes whose first video
  stream yields at least 2 frames: mp4/H.264, webm/VP8/VP9, mkv, avi/MJPEG, mov,
  animated GIF, ... Display rotation metadata (phone videos) is applied, so
  portrait clips come out upright.
* **npy**: recognised by its magic bytes ``\\x93NUMPY`` (whatever the
  Content-Type says); it must hold uint8 ``[T, H, W, 3]`` RGB. An array that is
  already ``[clip_len, crop_size, crop_size, 3]`` is used as is, bit-exact (no
  sampling, no resize), so crafted adversarial clips reach the model unchanged.
  Any other shape is sampled, resized and cropped like a video.
* 415 :class:`NotAVideoError` (``not_a_video``) -- the upload is media we can
  identify but it has no motion: a still image (PNG, JPEG, BMP, WebP, a 1-frame
  GIF or any other single-frame file; an image FFmpeg cannot open is still
  recognised by its magic bytes), a file with audio or subtitles but no video
  stream, an ``.npy`` with a single frame.
* 400 :class:`BadVideoError` (``bad_video``) -- anything else that does not
  decode: an empty body, random bytes, text (always 400, whatever it contains,
  so text never reaches FFmpeg's subtitle/playlist parsers), a truncated or
  corrupt file (unreadable container, an incomplete packet or a decoder error
  before the last frame needed), a stream whose codec has no decoder, an
  ``.npy`` with a malformed header (parsed here, not by numpy: see
  :func:`_parse_npy_header`), the wrong dtype/rank/channels or a header that
  does not match its payload, a body declared ``application/x-npy`` that is not
  an ``.npy``.
* 413 :class:`LimitExceededError` -- over one of :class:`DecodeLimits`; each is
  checked *before* its memory or time is spent (see the class).

Frame count and memory
----------------------
Sampling needs the total frame count ``N`` before choosing frames, and frames
are decoded in order. Memory stays at what the decoder holds (its reference
frames, one per thread with frame threading) plus one full-resolution RGB frame
at a time plus ``clip_len`` small output frames -- never the whole video:

1. ``N`` comes from the container when it records it (mp4/mov sample tables, avi
   headers); otherwise (mkv/webm, gif, ...) from a demux-only pass that counts
   the stream's packets -- no decoding, so it costs a fraction of one decode.
   Encoders used in practice emit one packet per shown frame (VP8/VP9
   alt-ref frames are packed into superframes), so this count is exact for them.
2. One decoding pass then converts only the sampled frames to RGB
   (``to_ndarray`` is the expensive step; every other frame it passes is decoded,
   since inter-coded frames depend on each other, but never converted), resizes and
   crops each one immediately, and stops at the last frame it needs. It skips the
   packets no sampled frame depends on (see "Skipping to keyframes").
3. If the stream ends cleanly before that frame (the recorded or packet count
   was too high, e.g. a lying header), the pass has just counted the frames
   exactly, and a second pass samples with the true count. (A file cut short
   mid-packet is rejected instead: the demuxer flags the incomplete packet.)

A one-pass reservoir was rejected: with ``N`` unknown until the end, any frame
from the middle onwards may still be needed, so it would hold about half the
video. If a count is too *low*, the clip is sampled as if the video ended
there (slightly off-centre); no container in the tests does that.

Skipping to keyframes
---------------------
Step 2 need not decode from the first frame. The demux pass of step 1 (run also
when the container records ``N``, except for GIF, whose frames draw over the
previous canvas) notes each packet's ``pts`` and keyframe flag (:class:`_KeyIndex`).
A keyframe packet ``s`` *splits the stream cleanly* when the ``s`` packets before it
hold exactly the first ``s`` frames in presentation order and it is frame ``s``:
decoding from it then gives frames ``s, s+1, ...``, the same pixels as from the
start (closed GOPs, intra-only codecs; an open GOP's keyframe, whose leading
B-frames follow it, does not split). The sampled frames are grouped into runs, each
decoded from the last clean split before its first frame (the decoder flushed,
the packets in between demuxed but not decoded), up to its last frame; runs that
meet are decoded in one go.

Each frame that comes out must be the next one in presentation order (its ``pts``
rank) and the first after a skip a keyframe to the decoder; on any surprise, or a
demuxer or decoder error, the request decodes sequentially from the start instead
(the frames already decoded count towards ``max_frames``). No index is used, and
the decode stays sequential, when ``pts`` are missing or repeated (raw elementary
streams), when the packet count differs from the count sampling uses (a lying
header: the two-pass path of step 3), after a corrupt packet, and for GIF. Files
that start a seek pass and give it up: B-frames whose container timestamps are in
decode order (MPEG-4 with packed B-frames in avi, an mp4 muxed with pts = dts).
tests/unit/test_video_seek.py checks the clips are identical to the sequential
decode (``seek=False``) on toy and real files; ``shuffleguard bench decode`` times both.
"""

from __future__ import annotations

import ast
import io
import logging
import math
import time
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_LIMITS",
    "NPY_CONTENT_TYPE",
    "NPY_MAGIC",
    "BadVideoError",
    "DecodeLimits",
    "DecodedClip",
    "LIMIT_CODES",
    "LimitExceededError",
    "NotAVideoError",
    "TRANSFORMS",
    "VideoError",
    "decode_clip",
    "sample_frame_indices",
]

logger = logging.getLogger(__name__)

NPY_MAGIC = b"\x93NUMPY"
NPY_CONTENT_TYPE = "application/x-npy"
_ACCEPTED = (
    "send a video (mp4, webm, mkv, avi, mov, animated GIF) or an .npy uint8 [T, H, W, 3] clip"
)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #
class VideoError(Exception):
    """An upload that cannot become a clip. ``status_code`` is the HTTP status the
    gateway answers with, ``code`` the snake_case error code of the JSON body,
    ``message`` says what was wrong and what to do."""

    status_code: int = 400
    code: str = "bad_video"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadVideoError(VideoError):
    """400 ``bad_video``: empty, undecodable, corrupt or malformed upload."""

    status_code = 400
    code = "bad_video"


class NotAVideoError(VideoError):
    """415 ``not_a_video``: a still image, audio-only or other non-video media."""

    status_code = 415
    code = "not_a_video"


#: Error code per limit (all 413).
LIMIT_CODES: dict[str, str] = {
    "max_bytes": "video_too_large",
    "max_pixels": "frame_too_large",
    "max_frames": "too_many_frames",
    "max_decode_seconds": "decode_timeout",
}


class LimitExceededError(VideoError):
    """413: over one of :class:`DecodeLimits`.

    ``limit`` is the field name (``max_bytes``, ``max_pixels``, ``max_frames``,
    ``max_decode_seconds``), ``value`` what the upload reached, ``maximum`` the
    limit; ``code`` is ``video_too_large``, ``frame_too_large``,
    ``too_many_frames`` or ``decode_timeout`` respectively.
    """

    status_code = 413

    def __init__(self, limit: str, value: float, maximum: float, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.maximum = maximum
        self.code = LIMIT_CODES[limit]


# --------------------------------------------------------------------------- #
# Limits and result
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class DecodeLimits:
    """Resource limits for one upload (defaults: SPEC "Errors and limits").

    * ``max_bytes``: upload size, checked before anything is parsed.
    * ``max_pixels``: width x height of a frame, checked from the stream header
      before any frame is decoded, handed to the decoder itself (FFmpeg's
      ``max_pixels``, so it refuses to allocate a bigger frame), and checked again
      on every decoded frame; for ``.npy``, from the header before the data is read.
    * ``max_frames``: frames decoded by this request (all passes together),
      counted as they come out of the decoder; checked up front when the
      container's frame count already shows the sampled frames lie beyond it.
      For ``.npy``, ``T`` from the header.
    * ``max_decode_seconds``: wall time (monotonic clock) spent decoding,
      checked after every packet and frame; one frame's decode is not interrupted.
    """

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 3840 * 2160
    max_frames: int = 3000
    max_decode_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_frames", "max_decode_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


DEFAULT_LIMITS = DecodeLimits()


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


# --------------------------------------------------------------------------- #
# Sampling (MMAction2 SampleFrames, test mode)
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# Resize + crop
# --------------------------------------------------------------------------- #
#: resize/crop arithmetic conventions (``transform`` of :func:`decode_clip`)
TRANSFORMS = ("shuffleguard", "torchvision")

Resize = int | tuple[int, int]


def _resize_crop(
    image: np.ndarray,
    crop_size: int,
    resize: Resize | None = None,
    transform: str = "shuffleguard",
) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[crop_size, crop_size, 3]``: resize, then centre crop.

    ``resize``: an int is the short side (default ``crop_size``), ``(h, w)`` a fixed
    size. ``transform`` picks the arithmetic:

    * ``"shuffleguard"`` (the toy models, MMAction2-like): long side
      ``int(long * s + 0.5)`` as mmcv rescales, bilinear with antialiasing (Pillow's
      ``BILINEAR`` resample: the same filter as torch's antialiased uint8 kernel, within
      one level), crop offset ``(size - crop) // 2`` as MMAction2 ``CenterCrop``;
    * ``"torchvision"`` (torchvision's ``VideoClassification`` preset, PyTorchVideo's
      ``ShortSideScale`` + ``CenterCropVideo``): long side ``int(resize * long /
      short)`` (floored), bilinear without antialiasing on float pixels (rounded back
      to uint8), crop offset ``round((size - crop) / 2)``.

    A frame already at the resize target is only cropped, so its pixels are kept
    exactly.
    """
    h, w = image.shape[:2]
    target = crop_size if resize is None else resize
    if isinstance(target, int):
        short, long_ = (h, w) if h <= w else (w, h)
        if transform == "torchvision":
            new_long = int(target * long_ / short)
        else:
            new_long = int(long_ * (target / short) + 0.5)
        new_long = max(target, new_long)
        new_h, new_w = (target, new_long) if h <= w else (new_long, target)
    else:
        new_h, new_w = int(target[0]), int(target[1])
    if (new_h, new_w) != (h, w):
        if transform == "torchvision":
            image = _bilinear(image, new_h, new_w)
        else:
            pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
            image = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
        h, w = new_h, new_w
    if transform == "torchvision":
        top, left = int(round((h - crop_size) / 2.0)), int(round((w - crop_size) / 2.0))
    else:
        top, left = (h - crop_size) // 2, (w - crop_size) // 2
    return np.ascontiguousarray(image[top : top + crop_size, left : left + crop_size])


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source rows ``i0``, ``i1`` and weight of ``i1`` for each of ``n_out`` outputs:
    bilinear, ``align_corners=False``, no antialiasing (half-pixel centres, the source
    position clamped at 0 and the last row repeated at the far edge)."""
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = src.astype(np.int64)  # floor: src >= 0
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _bilinear(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[new_h, new_w, 3]``: bilinear on float pixels
    without antialiasing, rounded back to uint8 (torchvision's video transforms:
    ``interpolate(x.float(), mode="bilinear", antialias=False)``)."""
    y0, y1, wy = _taps(image.shape[0], new_h)
    x0, x1, wx = _taps(image.shape[1], new_w)
    img = image.astype(np.float32)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Geometry:
    """The resize + crop of one decode (see :func:`_resize_crop`)."""

    crop_size: int
    resize: Resize | None = None
    transform: str = "shuffleguard"

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self.resize is None and self.transform == "shuffleguard":
            return _resize_crop(image, self.crop_size)  # the toy models' (default) geometry
        return _resize_crop(image, self.crop_size, self.resize, self.transform)


# --------------------------------------------------------------------------- #
# Budget: the limits that grow while decoding
# --------------------------------------------------------------------------- #
class _Budget:
    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.start = time.monotonic()
        self.frames = 0

    def check_time(self) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed > self.limits.max_decode_seconds:
            raise LimitExceededError(
                "max_decode_seconds",
                elapsed,
                self.limits.max_decode_seconds,
                f"decoding took longer than max_decode_seconds={self.limits.max_decode_seconds:g}"
                f" s (stopped after {elapsed:.2f} s and {self.frames} frames); send a shorter"
                " or lower-resolution clip",
            )

    def count_frame(self) -> None:
        self.frames += 1
        if self.frames > self.limits.max_frames:
            raise LimitExceededError(
                "max_frames",
                self.frames,
                self.limits.max_frames,
                f"decoding needs more than max_frames={self.limits.max_frames} frames; send a"
                f" clip of at most {self.limits.max_frames} frames",
            )
        self.check_time()

    def check_pixels(self, width: int, height: int, where: str) -> None:
        if width * height > self.limits.max_pixels:
            raise LimitExceededError(
                "max_pixels",
                width * height,
                self.limits.max_pixels,
                f"{where} is {width}x{height} = {width * height} pixels, over max_pixels="
                f"{self.limits.max_pixels}; downscale the clip (the model sees it at a few"
                " hundred pixels anyway)",
            )


# --------------------------------------------------------------------------- #
# Sniffing
# --------------------------------------------------------------------------- #
def _still_image_kind(data: bytes) -> str | None:
    """The still-image format ``data`` starts with, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"BM") and len(data) >= 14:
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _looks_like_text(data: bytes) -> bool:
    """True when the first 4 KiB are printable UTF-8 (no video container starts so)."""
    head = data[:4096]
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":  # a multi-byte char cut at 4 KiB is fine
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\n\r\f\v\ufeff" for c in text)


def _is_npy_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == NPY_CONTENT_TYPE


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #
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
            transforms); see :func:`_resize_crop`.
        limits: resource limits, each checked before its cost is paid.
        content_type: the request's Content-Type, if any. Only used to report an
            ``application/x-npy`` body that is not an ``.npy``; formats are
            detected from the bytes, never trusted from this header.
        seek: decode only the packet runs the sampled frames need (the default; the
            same frames as ``False``, see "Skipping to keyframes" in the module
            docstring); ``False`` decodes every frame up to the last sampled one
            (the benchmark's baseline and the tests' reference).

    Returns:
        A :class:`DecodedClip` whose ``frames`` are uint8
        ``[clip_len, crop_size, crop_size, 3]`` RGB 0..255.

    Raises:
        BadVideoError: 400, undecodable/empty/corrupt upload.
        NotAVideoError: 415, a still image or a file without a video stream.
        LimitExceededError: 413, over a limit of ``limits``.
        ValueError: ``clip_len``, ``frame_interval`` or ``crop_size`` < 1 (a caller bug).
    """
    for name, value in (
        ("clip_len", clip_len),
        ("frame_interval", frame_interval),
        ("crop_size", crop_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    sides = [resize] if isinstance(resize, int) else list(resize or [])
    if any(int(v) < crop_size for v in sides) or len(sides) not in (0, 1, 2):
        raise ValueError(f"resize {resize} must be an int or (h, w), each >= crop_size {crop_size}")
    geometry = _Geometry(crop_size, resize, transform)
    if len(data) > limits.max_bytes:
        raise LimitExceededError(
            "max_bytes",
            len(data),
            limits.max_bytes,
            f"the upload is {len(data)} bytes, over max_bytes={limits.max_bytes}; send a"
            " shorter or more compressed clip",
        )
    if not data:
        raise BadVideoError(
            "the upload is empty; send the video as the multipart field 'file' or as the raw"
            " request body"
        )
    budget = _Budget(limits)
    if data.startswith(NPY_MAGIC):
        return _decode_npy(data, clip_len, frame_interval, geometry, budget)
    if _is_npy_content_type(content_type):
        raise BadVideoError(
            f"the Content-Type is {NPY_CONTENT_TYPE} but the body is not an .npy file (it does"
            " not start with the npy magic \\x93NUMPY); write it with numpy.save"
        )
    if _looks_like_text(data):
        raise BadVideoError(f"the upload is text, not an encoded video; {_ACCEPTED}")
    return _VideoDecoder(data, clip_len, frame_interval, geometry, budget, seek=seek).decode()


# --------------------------------------------------------------------------- #
# npy
# --------------------------------------------------------------------------- #
#: Largest .npy header accepted, in bytes (numpy's own reader defaults to the same
#: bound; ``numpy.save`` writes under 128 bytes for a 4-d uint8 array).
NPY_MAX_HEADER_BYTES = 10_000
#: The spellings of uint8 a ``descr`` may use (byte order is meaningless for 1 byte).
_NPY_UINT8_DESCRS = frozenset({"|u1", "<u1", ">u1", "=u1", "u1", "|B", "<B", ">B", "=B", "B"})
_NPY_KEYS = ("descr", "fortran_order", "shape")


@dataclass(frozen=True)
class _NpyHeader:
    """A checked ``.npy`` header: uint8 data of ``shape`` starting at byte ``offset``."""

    shape: tuple[int, ...]
    fortran_order: bool
    offset: int


def _parse_npy_header(data: bytes) -> _NpyHeader:
    """Parse and check an ``.npy`` header without numpy (nothing is allocated).

    The layout (numpy's ``format`` module documentation): the magic ``\\x93NUMPY``,
    a major and a minor version byte, the header length (little-endian uint16 for
    version 1.0, uint32 for 2.0 and 3.0), then the header: a Python dict literal
    (latin-1 for 1.0/2.0, UTF-8 for 3.0) with exactly the keys ``descr``,
    ``fortran_order`` and ``shape``. The length is bounded by
    :data:`NPY_MAX_HEADER_BYTES` before the header is read, the literal is read
    with :func:`ast.literal_eval` (no code runs), and the dtype must be uint8:
    other descriptors are refused by name, never handed to ``numpy.dtype``.

    Raises:
        BadVideoError: on anything malformed, with what is wrong.
    """
    prefix = len(NPY_MAGIC) + 2
    if len(data) < prefix:
        raise BadVideoError(
            f"the .npy is truncated: {len(data)} bytes, not even the magic and version"
        )
    major, minor = data[len(NPY_MAGIC)], data[len(NPY_MAGIC) + 1]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise BadVideoError(
            f"unsupported .npy format version {major}.{minor} (1.0, 2.0 or 3.0); use numpy.save"
        )
    size_bytes = 2 if major == 1 else 4
    if len(data) < prefix + size_bytes:
        raise BadVideoError("the .npy is truncated inside its header length field")
    header_len = int.from_bytes(data[prefix : prefix + size_bytes], "little")
    if header_len > NPY_MAX_HEADER_BYTES:
        raise BadVideoError(
            f"malformed .npy header: the header length is {header_len} bytes, over"
            f" {NPY_MAX_HEADER_BYTES}; write the clip with numpy.save"
        )
    offset = prefix + size_bytes + header_len
    if len(data) < offset:
        raise BadVideoError(
            f"the .npy is truncated inside its header: {header_len} header bytes declared,"
            f" {len(data) - prefix - size_bytes} present"
        )
    raw = data[prefix + size_bytes : offset]
    try:
        text = raw.decode("utf-8" if major == 3 else "latin-1")
    except UnicodeDecodeError as exc:
        raise BadVideoError(f"malformed .npy header: not UTF-8 ({exc.reason})") from exc
    try:
        header = ast.literal_eval(text.strip())
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        reason = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
        raise BadVideoError(
            f"malformed .npy header: it is not a Python dict literal ({reason}); write the clip"
            " with numpy.save"
        ) from exc
    if not isinstance(header, dict):
        raise BadVideoError(
            f"malformed .npy header: expected a dict, got a {type(header).__name__}"
        )
    if sorted(header, key=repr) != sorted(_NPY_KEYS, key=repr):
        keys = sorted(repr(k) for k in header)
        raise BadVideoError(
            f"malformed .npy header: the keys must be exactly descr, fortran_order and shape,"
            f" got {', '.join(keys) or 'none'}"
        )
    descr, fortran_order, shape = (header[key] for key in _NPY_KEYS)
    if not isinstance(fortran_order, bool):
        raise BadVideoError(
            f"malformed .npy header: fortran_order must be a bool, got {fortran_order!r:.40}"
        )
    if not isinstance(shape, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in shape
    ):
        raise BadVideoError(
            f"malformed .npy header: shape must be a tuple of ints, got {shape!r:.80}"
        )
    if any(v < 0 for v in shape):
        raise BadVideoError(f"malformed .npy header: every dimension must be >= 0, got {shape}")
    if not isinstance(descr, str) or descr not in _NPY_UINT8_DESCRS:
        raise BadVideoError(
            f"an .npy clip must be uint8 [T, H, W, 3] RGB 0..255, got dtype {descr!r:.60}:"
            " wrong dtype (convert with array.astype(np.uint8))"
        )
    return _NpyHeader(shape=shape, fortran_order=fortran_order, offset=offset)


def _decode_npy(
    data: bytes, clip_len: int, frame_interval: int, geometry: _Geometry, budget: _Budget
) -> DecodedClip:
    """An ``.npy`` upload: header checked before any data is touched, then either
    passed through bit-exact or sampled/resized/cropped like a video."""
    limits = budget.limits
    crop_size = geometry.crop_size
    header = _parse_npy_header(data)
    shape, fortran_order = header.shape, header.fortran_order
    expected = f"an .npy clip must be uint8 [T, H, W, 3] RGB 0..255, got uint8 {shape}"
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
    offset = header.offset
    declared = math.prod((t, h, w, 3))
    if declared != len(data) - offset:
        raise BadVideoError(
            f"the .npy header declares {declared} bytes of uint8 data but the body holds"
            f" {len(data) - offset} (truncated or padded file)"
        )
    flat = np.frombuffer(data, dtype=np.uint8, count=declared, offset=offset)  # a view
    array = flat.reshape(shape[::-1]).transpose() if fortran_order else flat.reshape(shape)
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
            f"the .npy holds a single frame {shape}, a still image, not a video; {_ACCEPTED}"
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


# --------------------------------------------------------------------------- #
# Videos (PyAV)
# --------------------------------------------------------------------------- #
#: What PyAV raises on hostile input: FFmpegError subclasses (also OSError/ValueError
#: subclasses), plus decoding of metadata and odd container states.
_AV_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)


def _rotation_of(frame: av.VideoFrame) -> int:
    """Display rotation of ``frame`` in degrees counter-clockwise, as 0/90/180/270."""
    try:
        degrees = float(frame.rotation)
    except (AttributeError, TypeError, ValueError):
        return 0
    if not math.isfinite(degrees):
        return 0
    return (round(degrees / 90) * 90) % 360


#: Demuxers whose packets are decoded from the first one on, never skipped: an
#: animated GIF's frames draw over the previous canvas whatever their keyframe flag says.
SEQUENTIAL_FORMATS = frozenset({"gif"})


#: ``(pts, dts, is_keyframe)`` of one packet
_PacketKey = tuple[int | None, int | None, bool]


@dataclass(frozen=True)
class _KeyIndex:
    """Where decoding may start, from one demux pass (no decoding).

    ``rank`` maps each packet's ``pts`` to its frame's place in presentation order
    (the index sampling uses). ``starts`` are the decode positions ``s`` at which
    the stream splits cleanly: packet ``s`` is a keyframe, the ``s`` packets before
    it hold exactly frames ``0 .. s-1`` and it is frame ``s`` itself, so decoding
    from packet ``s`` gives frames ``s, s+1, ...`` with nothing before it (0, the
    stream's start, always is one).
    """

    rank: dict[int, int]
    starts: tuple[int, ...]

    @classmethod
    def build(cls, keys: list[_PacketKey], total: int, reorders: bool) -> _KeyIndex | None:
        """The index of packets ``keys`` (``(pts, dts, is_keyframe)`` in decode order),
        or None when they cannot name the frames: a missing or repeated ``pts``, a
        packet count that differs from the ``total`` frames sampling uses, or a codec
        that ``reorders`` frames (B-frames) whose timestamps are all in decode order."""
        if reorders and all(p == d for p, d, _ in keys):
            return None
        pts = [p for p, _, _ in keys if p is not None]
        if len(pts) != total or len(keys) != total or total < 2 or len(set(pts)) != total:
            return None
        rank = {p: r for r, p in enumerate(sorted(pts))}
        starts = [0]
        highest = -1
        for position, (p, (_, _, key)) in enumerate(zip(pts, keys, strict=True)):
            if position and key and rank[p] == position and highest == position - 1:
                starts.append(position)
            highest = max(highest, rank[p])
        return cls(rank=rank, starts=tuple(starts))

    def runs(self, wanted: set[int]) -> list[tuple[int, int]]:
        """``(start, last)`` per run: decode from start ``start`` up to frame ``last``;
        a wanted frame whose start lies within (or just after) the run before joins it."""
        runs: list[tuple[int, int]] = []
        for frame in sorted(wanted):
            start = self.starts[bisect_right(self.starts, frame) - 1]
            if runs and start <= runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], frame)
            else:
                runs.append((start, frame))
        return runs

    def skips(self, wanted: set[int]) -> bool:
        """True when decoding only :meth:`runs` leaves packets out."""
        runs = self.runs(wanted)
        return bool(runs) and (runs[0][0] > 0 or len(runs) > 1)


class _Cursor:
    """Where a seek pass is in the stream's non-empty packets."""

    def __init__(self, packets: Iterator[av.Packet]) -> None:
        self.packets = packets
        self.position = 0  # packets consumed, fed or skipped
        self.expected = 0  # the next frame (presentation order) the decoder must give
        self.jumped = False  # True until the first frame after a skip
        self.ended = False  # the end-of-stream flush was sent
        self.pending: list[av.VideoFrame] = []  # decoded, not yet looked at (stops at a run's end)

    def next(self) -> av.Packet | None:
        """The next packet, or None (the decoder's end-of-stream flush) at the end."""
        packet = next(self.packets, None)
        self.position += packet is not None
        self.ended = packet is None
        return packet

    def skip_to(self, start: int, budget: _Budget) -> None:
        """Skip packets (demuxed, not decoded) up to ``start``, a key start."""
        while self.position < start:
            budget.check_time()
            if self.next() is None:
                raise EOFError("the stream ended before the keyframe it indexed")
        self.expected, self.jumped, self.pending = start, True, []


class _VideoDecoder:
    """Decoding passes over one upload (see the module docstring, "Frame count and memory")."""

    def __init__(
        self,
        data: bytes,
        clip_len: int,
        frame_interval: int,
        geometry: _Geometry,
        budget: _Budget,
        *,
        seek: bool = True,
    ) -> None:
        self.data = data
        self.seek = seek
        self.clip_len = clip_len
        self.frame_interval = frame_interval
        self.geometry = geometry
        self.budget = budget
        self.format_name = ""
        self.codec_name: str | None = None
        self.width = 0
        self.height = 0
        self.rotation = 0
        self.key_index: _KeyIndex | None = None
        self.seeked = False

    # -- container ------------------------------------------------------- #
    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(io.BytesIO(self.data), mode="r", metadata_errors="replace")
        except _AV_ERRORS as exc:
            raise self._unreadable(
                "could not read the upload as a video: it is not a video file, or it is"
                " truncated or corrupt",
                exc,
            ) from exc

    def _unreadable(self, what: str, exc: BaseException | None = None) -> VideoError:
        """The error for an upload FFmpeg cannot read: 415 when its magic bytes say it
        is a still image (one FFmpeg cannot open is still not a video), else 400."""
        kind = _still_image_kind(self.data)
        if kind is not None:
            return NotAVideoError(f"the upload is a {kind} still image, not a video; {_ACCEPTED}")
        detail = f" ({_describe(exc)})" if exc is not None else ""
        return BadVideoError(f"{what}{detail}; {_ACCEPTED}")

    def _video_stream(self, container: av.container.InputContainer) -> av.VideoStream:
        attached = av.stream.Disposition.attached_pic
        videos = [s for s in container.streams.video if not (s.disposition & attached)]
        if not videos:
            kinds = sorted({s.type for s in container.streams})
            if kinds:
                raise NotAVideoError(
                    f"the upload has no video stream (it holds {' and '.join(kinds)} only);"
                    f" {_ACCEPTED}"
                )
            raise BadVideoError(f"the container holds no streams; {_ACCEPTED}")
        stream = videos[0]
        ctx = stream.codec_context
        if ctx is None:  # FFmpeg has no decoder for the stream's codec (or its id is garbage)
            raise BadVideoError(
                f"the video stream's codec is unknown or has no decoder here; {_ACCEPTED}"
            )
        self.format_name = container.format.name
        self.codec_name = ctx.name
        if ctx.width and ctx.height:
            self.budget.check_pixels(ctx.width, ctx.height, "a frame of the video stream")
        # Backstop: the decoder itself refuses to allocate a far bigger frame (a size
        # change in mid-stream, a header without dimensions). FFmpeg counts padded
        # sizes (up to 1.2x for tiny frames), hence the slack; the exact limit is
        # checked on every decoded frame.
        cap = 2 * self.budget.limits.max_pixels
        ctx.options = {**ctx.options, "max_pixels": str(cap)}
        stream.thread_type = "AUTO"
        return stream

    # -- passes ---------------------------------------------------------- #
    def _frame_count_hint(self) -> int:
        """Frames in the stream, from the container or by counting packets (no decoding).

        The packet scan also records where decoding may start (:class:`_KeyIndex`),
        except for containers in :data:`SEQUENTIAL_FORMATS`; when the container
        records the count, that scan is only an optimisation and any error in it
        just leaves the decode sequential (the decoding pass reports the error).
        """
        with self._open() as container:
            stream = self._video_stream(container)
            recorded = int(stream.frames)
            seekable = self.seek and self.format_name not in SEQUENTIAL_FORMATS
            if recorded > 0 and not (seekable and self._reachable(recorded)):
                return recorded  # nothing to index: sampling refuses or reads from the start
            # Past this many packets the centre clip lies beyond max_frames: no index.
            span = self.clip_len * self.frame_interval
            limit = recorded or 2 * self.budget.limits.max_frames + span
            packets, keys = self._scan_packets(container, stream, strict=not recorded, limit=limit)
            total = recorded if recorded > 0 else packets
            # avi stores no presentation times: with B-frames its pts are guesses
            reorders = bool(stream.codec_context.has_b_frames)
            if seekable and keys is not None and not (reorders and self.format_name == "avi"):
                self.key_index = _KeyIndex.build(keys, total, reorders)
            return total

    def _scan_packets(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        *,
        strict: bool,
        limit: int,
    ) -> tuple[int, list[_PacketKey] | None]:
        """Demux only: the number of non-empty packets and each one's ``(pts, dts,
        is_keyframe)`` in decode order (None after a corrupt packet or a demuxer
        error, which raise :class:`BadVideoError` when ``strict``, or past ``limit``
        packets: then a ``strict`` scan goes on counting, another stops)."""
        keys: list[_PacketKey] | None = []
        packets = 0
        try:
            for packet in container.demux(stream):
                self.budget.check_time()
                if packet.size:
                    if (packet.is_corrupt or packets >= limit) and not strict:
                        return packets, None
                    self._check_packet(packet, packets)
                    packets += 1
                    if keys is not None and len(keys) < limit:
                        keys.append((packet.pts, packet.dts, bool(packet.is_keyframe)))
                    else:
                        keys = None  # memory stays bounded whatever the packet count
        except _AV_ERRORS as exc:
            if not strict:
                return packets, None
            raise BadVideoError(
                f"the video is corrupt or truncated: reading its packets failed after"
                f" {packets} ({_describe(exc)}); re-encode or re-upload the file"
            ) from exc
        return packets, keys

    @staticmethod
    def _check_packet(packet: av.Packet, position: int) -> None:
        # The demuxer flags a packet cut short by the end of the data (a truncated upload).
        if packet.is_corrupt:
            raise BadVideoError(
                f"the video is corrupt or truncated: packet {position} of the video stream is"
                " incomplete; re-encode or re-upload the file"
            )

    def _decode_pass(self, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
        """Decode in order, keeping the resized crops of the ``wanted`` frames; stop
        after the last one (or decode to the end when ``wanted`` is empty).

        Returns the kept crops by index and the number of frames decoded in this
        pass (the exact frame count when the stream ended before the last wanted).
        """
        last = max(wanted) if wanted else None
        kept: dict[int, np.ndarray] = {}
        count = 0
        packets = 0
        with self._open() as container:
            stream = self._video_stream(container)
            try:
                for packet in container.demux(stream):
                    self.budget.check_time()
                    if packet.size:
                        self._check_packet(packet, packets)
                        packets += 1
                    # A size-0 packet flushes the decoder at the end of the stream.
                    for frame in stream.decode(packet):
                        self.budget.count_frame()
                        self.budget.check_pixels(frame.width, frame.height, "a decoded frame")
                        index = count
                        count += 1
                        if index in wanted:
                            kept[index] = self._convert(frame)
                        if last is not None and index >= last:
                            return kept, count
            except _AV_ERRORS as exc:
                if count == 0:
                    raise self._unreadable("the video stream could not be decoded", exc) from exc
                raise BadVideoError(
                    f"the video is corrupt or truncated: decoding failed after {count} frames"
                    f" ({_describe(exc)}); re-encode or re-upload the file"
                ) from exc
        return kept, count

    def _sample_pass(self, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
        """:meth:`_seek_pass` when the key index lets it skip packets, else (or when
        it gives up) :meth:`_decode_pass`."""
        index, self.key_index = self.key_index, None  # valid for the first sampling only
        if index is not None and index.skips(wanted):
            self.key_index = index
            kept = self._seek_pass(wanted)
            self.key_index = None
            if kept is not None:
                self.seeked = True
                return kept, 0
            logger.debug("seek pass on %s/%s gave up", self.format_name, self.codec_name)
        return self._decode_pass(wanted)

    def _seek_pass(self, wanted: set[int]) -> dict[int, np.ndarray] | None:
        """Decode only the runs of packets the ``wanted`` frames need: skip to the
        keyframe that starts each run (dropping the decoder's state), decode up to
        the run's last wanted frame.

        Every frame that comes out is checked to be the next one in presentation
        order (the rank of its ``pts``), and the first after a skip to be a
        keyframe to the decoder; on any surprise (or a demuxer or decoder error) it
        returns None and the caller decodes sequentially instead.
        """
        index = self.key_index
        assert index is not None
        kept: dict[int, np.ndarray] = {}
        with self._open() as container:
            stream = self._video_stream(container)
            cursor = _Cursor(p for p in container.demux(stream) if p.size)
            try:
                for start, last in index.runs(wanted):
                    if start > cursor.position:
                        stream.codec_context.flush_buffers()
                        cursor.skip_to(start, self.budget)
                    if not self._decode_run(stream, cursor, wanted, kept, last):
                        return None
            except _AV_ERRORS:
                return None
        return kept if len(kept) == len(wanted) else None

    def _decode_run(
        self,
        stream: av.VideoStream,
        cursor: _Cursor,
        wanted: set[int],
        kept: dict[int, np.ndarray],
        last: int,
    ) -> bool:
        """Feed packets until frame ``last`` comes out, checking that frames arrive
        in presentation order; True when it did."""
        index = self.key_index
        assert index is not None
        while cursor.expected <= last:
            self.budget.check_time()
            if not cursor.pending:
                if cursor.ended:
                    return False  # the stream ended before frame ``last``
                cursor.pending = list(stream.decode(cursor.next()))
            while cursor.pending and cursor.expected <= last:
                frame = cursor.pending.pop(0)
                self.budget.count_frame()
                self.budget.check_pixels(frame.width, frame.height, "a decoded frame")
                if frame.pts is None or index.rank.get(frame.pts) != cursor.expected:
                    return False
                if cursor.jumped and not frame.key_frame:
                    return False
                cursor.jumped = False
                if cursor.expected in wanted:
                    kept[cursor.expected] = self._convert(frame)
                cursor.expected += 1
        return True

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        """One decoded frame -> uint8 ``[crop, crop, 3]`` RGB, upright."""
        image = frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)
        self.rotation = _rotation_of(frame)
        if self.rotation:
            image = np.rot90(image, k=self.rotation // 90)
        self.height, self.width = image.shape[:2]
        return self.geometry.apply(image)

    def _reachable(self, total: int) -> bool:
        """True when the centre clip of ``total`` frames ends within ``max_frames``."""
        indices = sample_frame_indices(total, self.clip_len, self.frame_interval)
        return int(indices.max()) < self.budget.limits.max_frames

    def _check_reachable(self, total: int, indices: np.ndarray) -> None:
        needed = int(indices.max()) + 1
        if needed > self.budget.limits.max_frames:
            raise LimitExceededError(
                "max_frames",
                needed,
                self.budget.limits.max_frames,
                f"the video has {total} frames; its centre clip ends at frame {needed}, so"
                f" decoding it would exceed max_frames={self.budget.limits.max_frames}; trim"
                " the video to its interesting part",
            )

    def decode(self) -> DecodedClip:
        total = self._frame_count_hint()
        exact = False
        if total < 2:
            # Too few frames to be a video on paper: decode to the end to know for sure.
            _, total = self._decode_pass(set())
            exact = True
        for _ in range(2):
            if total < 2:
                break
            indices = sample_frame_indices(total, self.clip_len, self.frame_interval)
            self._check_reachable(total, indices)
            kept, count = self._sample_pass(set(indices.tolist()))
            if len(kept) == len(set(indices.tolist())):
                frames = np.stack([kept[i] for i in indices.tolist()])
                logger.debug(
                    "decoded %s/%s: %d of %d frames sampled, %d decoded",
                    self.format_name,
                    self.codec_name,
                    self.clip_len,
                    total,
                    self.budget.frames,
                )
                return DecodedClip(
                    frames=frames,
                    frame_indices=indices,
                    source_format=self.format_name,
                    source_codec=self.codec_name,
                    source_frames=total,
                    source_width=self.width,
                    source_height=self.height,
                    frames_decoded=self.budget.frames,
                    rotation=self.rotation,
                )
            if exact:  # cannot happen with a deterministic decoder; do not loop on it
                break
            total, exact = count, True  # the stream ended early: now the count is exact
        if total == 0:
            raise self._unreadable("the video stream holds no decodable frame")
        if total == 1:
            kind = _still_image_kind(self.data)
            what = f"a {kind} still image" if kind else "a single frame (a still image)"
            raise NotAVideoError(f"the upload holds {what}, not a video; {_ACCEPTED}")
        raise BadVideoError(
            "the video's frames changed between decoding passes; re-encode the file"
        )


def _describe(exc: BaseException) -> str:
    """A short, client-safe description of a PyAV/FFmpeg error."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip()
