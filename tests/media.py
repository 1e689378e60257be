"""Real encoded media of synthetic frames, for decode and gateway tests.

Everything here is encoded with PyAV in memory and returned as ``bytes`` (and
optionally written to a path), so tests read real files produced by real
encoders, not mocks.

Synthetic frames (:func:`synthetic_frames`) make colour and temporal order
checkable after a lossy codec, a resize and a centre crop:

* the whole frame is a solid background colour derived from ``seed``
  (:func:`background_color`), each channel in 48..207;
* the central square (side = the short side of the frame, i.e. exactly what a
  "resize short side + centre crop" keeps) holds, in its top half, the frame
  index ``t`` as a 2 x 6 grid of black (0) / white (255) cells, least
  significant bit first, row-major (:func:`read_frame_index` reads it back from
  any square crop of that region);
* a bright yellow square moves left to right through the bottom half of the
  central square, so inter-frame codecs have real motion to code; it covers
  less than a fifth of the bottom half, so the median colour of the bottom half
  is the background colour.

Black/white cells are neutral grey in YUV, so chroma subsampling (4:2:0) does
not blur them into the background, and 0/255 survives any codec used here
with a wide margin.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

logger = logging.getLogger(__name__)

#: Bit grid that carries the frame index (rows x cols cells in the top half of
#: the central square).
INDEX_GRID = (2, 6)
INDEX_BITS = INDEX_GRID[0] * INDEX_GRID[1]
SQUARE_COLOR = (255, 230, 0)

#: Container format, codec and pixel format per file kind used by the tests.
#: ``pix_fmt`` is what the encoder needs (even dimensions for 4:2:0 formats).
VIDEO_KINDS: dict[str, tuple[str, str, str]] = {
    "mp4_h264": ("mp4", "libx264", "yuv420p"),
    "webm_vp8": ("webm", "libvpx", "yuv420p"),
    "webm_vp9": ("webm", "libvpx-vp9", "yuv420p"),
    "mkv_h264": ("matroska", "libx264", "yuv420p"),
    "avi_mjpeg": ("avi", "mjpeg", "yuvj420p"),
    "mov_h264": ("mov", "libx264", "yuv420p"),
    "gif": ("gif", "gif", "rgb8"),
}


# --------------------------------------------------------------------------- #
# Availability
# --------------------------------------------------------------------------- #
def encoder_available(codec: str) -> bool:
    """True when this PyAV build can encode with ``codec``."""
    try:
        av.Codec(codec, "w")
    except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpegError
        return False
    return True


def missing_encoders(kinds: Sequence[str] = tuple(VIDEO_KINDS)) -> list[str]:
    """Names of the codecs needed by ``kinds`` that this PyAV build lacks."""
    missing = sorted({VIDEO_KINDS[k][1] for k in kinds if not encoder_available(VIDEO_KINDS[k][1])})
    if missing:
        logger.warning("PyAV %s lacks encoders: %s", av.__version__, ", ".join(missing))
    return missing


# --------------------------------------------------------------------------- #
# Synthetic frames
# --------------------------------------------------------------------------- #
def background_color(seed: int) -> tuple[int, int, int]:
    """The solid background colour of :func:`synthetic_frames` for ``seed`` (each 48..207)."""
    rng = np.random.default_rng(seed)
    r, g, b = (int(v) for v in rng.integers(48, 208, size=3))
    return r, g, b


def _central_square(h: int, w: int) -> tuple[int, int, int]:
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side


def _cell_bounds(side: int, row: int, col: int) -> tuple[int, int, int, int]:
    rows, cols = INDEX_GRID
    cell_h, cell_w = (side / 2) / rows, side / cols
    return (
        round(row * cell_h),
        round((row + 1) * cell_h),
        round(col * cell_w),
        round((col + 1) * cell_w),
    )


def synthetic_frames(t: int, h: int, w: int, seed: int = 0, *, start: int = 0) -> np.ndarray:
    """``t`` synthetic frames, uint8 ``[t, h, w, 3]`` RGB 0..255 (layout: module docstring).

    Frame ``i`` carries the index ``start + i`` (modulo ``2**INDEX_BITS``).
    """
    if t < 1 or h < 8 or w < 8:
        raise ValueError(f"need t >= 1 and h, w >= 8, got t={t} h={h} w={w}")
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    frames[:] = np.asarray(background_color(seed), dtype=np.uint8)
    top, left, side = _central_square(h, w)
    sq = max(2, side // 6)
    travel = max(1, side - sq)
    rows, cols = INDEX_GRID
    for i in range(t):
        index = (start + i) % (1 << INDEX_BITS)
        for bit in range(INDEX_BITS):
            r0, r1, c0, c1 = _cell_bounds(side, bit // cols, bit % cols)
            value = 255 if (index >> bit) & 1 else 0
            frames[i, top + r0 : top + r1, left + c0 : left + c1] = value
        x = (3 * (start + i)) % travel
        y = side // 2 + (side // 2 - sq) // 2
        frames[i, top + y : top + y + sq, left + x : left + x + sq] = SQUARE_COLOR
    return frames


def read_frame_index(frame: np.ndarray) -> int:
    """Read back the frame index from a square ``[s, s, 3]`` crop of the central square."""
    if frame.ndim != 3 or frame.shape[0] != frame.shape[1]:
        raise ValueError(f"expected a square [s, s, 3] frame, got {frame.shape}")
    side = frame.shape[0]
    grey = frame.astype(np.float32).mean(axis=-1)
    cols = INDEX_GRID[1]
    index = 0
    for bit in range(INDEX_BITS):
        r0, r1, c0, c1 = _cell_bounds(side, bit // cols, bit % cols)
        dr, dc = (r1 - r0) // 4, (c1 - c0) // 4
        cell = grey[r0 + dr : r1 - dr, c0 + dc : c1 - dc]
        if float(cell.mean()) > 127.5:
            index |= 1 << bit
    return index


def bottom_half_color(frame: np.ndarray) -> np.ndarray:
    """Median RGB of the bottom half of a square crop: the background colour."""
    side = frame.shape[0]
    return np.median(frame[side // 2 + side // 8 :].reshape(-1, 3), axis=0)


# --------------------------------------------------------------------------- #
# Encoders
# --------------------------------------------------------------------------- #
def _save(data: bytes, path: str | Path | None) -> bytes:
    if path is not None:
        Path(path).write_bytes(data)
    return data


def write_video(
    path: str | Path | None,
    frames: np.ndarray,
    fmt: str,
    codec: str,
    *,
    fps: int = 25,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int | None = None,
) -> bytes:
    """Encode uint8 ``[T, H, W, 3]`` RGB frames into a real file, in memory.

    Args:
        path: also write the file here (None: only return the bytes).
        frames: uint8 ``[T, H, W, 3]`` RGB 0..255; 4:2:0 pixel formats need even H, W.
        fmt: container format name (``mp4``, ``webm``, ``matroska``, ``avi``, ``mov``, ``gif``).
        codec: encoder name (``libx264``, ``libvpx``, ``libvpx-vp9``, ``mjpeg``, ``gif``, ...).
        fps: frame rate.
        pix_fmt: encoder pixel format (default: ``yuvj420p`` for mjpeg, ``rgb8`` for
            gif, ``yuv420p`` otherwise).
        options: encoder options (defaults keep encoding fast and good quality).
        container_options: muxer options (e.g. ``{"movflags": "faststart"}``).
        rotation: display rotation in degrees (counter-clockwise), stored as metadata.

    Returns:
        The encoded file's bytes.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if pix_fmt is None:
        pix_fmt = {"mjpeg": "yuvj420p", "gif": "rgb8"}.get(codec, "yuv420p")
    if options is None:
        options = {
            "libx264": {"preset": "ultrafast", "crf": "18"},
            "libvpx": {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "2M"},
            "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"},
            "mjpeg": {"q": "2"},
        }.get(codec, {})
    # Mux to the real path when there is one: some muxer options (movflags=faststart)
    # rewrite the file and cannot work on a memory buffer.
    target: io.BytesIO | str = io.BytesIO() if path is None else str(path)
    with av.open(target, mode="w", format=fmt, container_options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        assert isinstance(stream, av.VideoStream)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = pix_fmt
        if codec == "mjpeg":
            stream.codec_context.qmin = stream.codec_context.qmax = 2
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    if isinstance(target, io.BytesIO):
        return target.getvalue()
    return Path(target).read_bytes()


def write_kind(path: str | Path | None, frames: np.ndarray, kind: str, **kwargs: object) -> bytes:
    """:func:`write_video` for one of :data:`VIDEO_KINDS` (e.g. ``"webm_vp9"``)."""
    fmt, codec, pix_fmt = VIDEO_KINDS[kind]
    return write_video(path, frames, fmt, codec, pix_fmt=pix_fmt, **kwargs)  # type: ignore[arg-type]


def write_audio_only(
    path: str | Path | None = None,
    *,
    fmt: str = "ipod",
    codec: str = "aac",
    seconds: float = 1.0,
    rate: int = 16000,
    freq: float = 440.0,
) -> bytes:
    """An audio-only file (default: .m4a with an AAC sine tone; ``fmt="wav"``,
    ``codec="pcm_s16le"`` gives a WAV)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        sample_fmt = stream.codec_context.format.name
        n = int(seconds * rate)
        chunk = stream.codec_context.frame_size or 1024
        wave = np.sin(2 * math.pi * freq * np.arange(n) / rate).astype(np.float32) * 0.5
        for start in range(0, n, chunk):
            samples = wave[start : start + chunk][None, :]
            if sample_fmt.startswith("s16"):
                frame = av.AudioFrame.from_ndarray(
                    (samples * 32767).astype(np.int16), format=sample_fmt, layout="mono"
                )
            else:
                frame = av.AudioFrame.from_ndarray(samples, format=sample_fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return _save(buf.getvalue(), path)


def write_image(path: str | Path | None, image: np.ndarray, codec: str = "png") -> bytes:
    """A still image file: uint8 ``[H, W, 3]`` RGB encoded by PyAV's ``png``, ``mjpeg``
    (a baseline JPEG), ``bmp`` or ``libwebp`` encoder. No Pillow involved."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    pix_fmt = {"png": "rgb24", "mjpeg": "yuvj420p", "bmp": "bgr24", "libwebp": "yuv420p"}[codec]
    ctx = av.CodecContext.create(codec, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height = image.shape[1], image.shape[0]
    ctx.pix_fmt = pix_fmt
    ctx.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
    frame.pts = 0
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    return _save(b"".join(bytes(p) for p in packets), path)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` file bytes (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header_only(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    """A v1.0 ``.npy`` header declaring ``shape`` followed by no data (a hostile upload)."""
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()
