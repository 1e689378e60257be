"""Why an upload cannot become a clip: the decoder's errors, each with a stable code.

An error carries a snake_case ``code`` (stable, for programs) and a ``message`` (what
was wrong and what to do); it knows nothing of HTTP. The gateway gives each code its
status in one table (:data:`service.gateway.errors.ERROR_CODES`): ``bad_video`` 400,
``not_a_video`` 415, the limit codes 413.
"""

from __future__ import annotations

__all__ = [
    "ACCEPTED",
    "CODES",
    "LIMIT_CODES",
    "BadVideoError",
    "LimitExceededError",
    "NotAVideoError",
    "VideoError",
]

#: What to send instead; ends the message of every rejected upload's error.
ACCEPTED = (
    "send a video (mp4, webm, mkv, avi, mov, animated GIF) or an .npy uint8 [T, H, W, 3] clip"
)


class VideoError(Exception):
    """An upload that cannot become a clip. ``code`` is the snake_case error code of
    the JSON body, ``message`` says what was wrong and what to do."""

    code: str = "bad_video"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadVideoError(VideoError):
    """``bad_video``: empty, undecodable, corrupt or malformed upload."""

    code = "bad_video"


class NotAVideoError(VideoError):
    """``not_a_video``: a still image, audio-only or other non-video media."""

    code = "not_a_video"


#: Error code per limit of :class:`~service.decoder.limits.DecodeLimits`.
LIMIT_CODES: dict[str, str] = {
    "max_bytes": "video_too_large",
    "max_pixels": "frame_too_large",
    "max_frames": "too_many_frames",
    "max_decode_seconds": "decode_timeout",
}


class LimitExceededError(VideoError):
    """Over one of :class:`~service.decoder.limits.DecodeLimits`.

    ``limit`` is the field name (``max_bytes``, ``max_pixels``, ``max_frames``,
    ``max_decode_seconds``), ``value`` what the upload reached, ``maximum`` the
    limit; ``code`` is ``video_too_large``, ``frame_too_large``,
    ``too_many_frames`` or ``decode_timeout`` respectively.
    """

    def __init__(self, limit: str, value: float, maximum: float, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.maximum = maximum
        self.code = LIMIT_CODES[limit]


#: Every code a decoder error can carry.
CODES: tuple[str, ...] = (BadVideoError.code, NotAVideoError.code, *LIMIT_CODES.values())
