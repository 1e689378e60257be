"""The resource limits of one upload, and the budget that checks them while decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.decoder.errors import LimitExceededError

__all__ = ["DEFAULT_LIMITS", "Budget", "DecodeLimits"]


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


class Budget:
    """The limits that grow while one upload decodes: time, frames, frame size."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.start = time.monotonic()
        self.frames = 0

    def check_bytes(self, size: int) -> None:
        if size > self.limits.max_bytes:
            raise LimitExceededError(
                "max_bytes",
                size,
                self.limits.max_bytes,
                f"the upload is {size} bytes, over max_bytes={self.limits.max_bytes}; send a"
                " shorter or more compressed clip",
            )

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
