"""What an upload is, from its first bytes (formats are never trusted from headers)."""

from __future__ import annotations

__all__ = [
    "NPY_CONTENT_TYPE",
    "NPY_MAGIC",
    "is_npy_content_type",
    "looks_like_text",
    "still_image_kind",
]

NPY_MAGIC = b"\x93NUMPY"
NPY_CONTENT_TYPE = "application/x-npy"


def still_image_kind(data: bytes) -> str | None:
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


def looks_like_text(data: bytes) -> bool:
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


def is_npy_content_type(content_type: str | None) -> bool:
    """True when the Content-Type (parameters aside) is ``application/x-npy``."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == NPY_CONTENT_TYPE
