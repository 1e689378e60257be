"""Receiving uploads: limits while streaming, multipart, stalls, disconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import pytest
from starlette.requests import Request

from service.gateway.errors import (
    ClientDisconnected,
    EmptyUpload,
    MissingFileField,
    UploadTimeout,
    UploadTooLarge,
)
from service.gateway.upload import BadMultipart, read_upload

T = TypeVar("T")


def _request(
    chunks: Iterable[bytes],
    headers: dict[str, str] | None = None,
    *,
    stall: bool = False,
    disconnect: bool = False,
) -> tuple[Request, list[int]]:
    """A request whose body arrives in ``chunks``; then it stalls or disconnects if asked.

    Returns the request and a one-item list counting the receive() calls.
    """
    pending = list(chunks)
    calls = [0]

    async def receive() -> dict[str, object]:
        calls[0] += 1
        if pending:
            chunk = pending.pop(0)
            more = bool(pending) or stall or disconnect
            return {"type": "http.request", "body": chunk, "more_body": more}
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # a stalled client
        raise AssertionError("unreachable")

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": raw}
    return Request(scope, receive), calls


def _multipart(parts: list[tuple[str, str | None, str | None, bytes]]) -> tuple[bytes, str]:
    """(body, content type) for parts of (name, filename, content_type, data)."""
    boundary = "sgboundary123"
    out = b""
    for name, filename, ctype, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_raw_body_in_chunks() -> None:
    req, _ = _request([b"abc", b"def"], {"content-type": "Video/MP4; charset=x"})
    up = _run(read_upload(req, max_bytes=100, timeout_s=5))
    assert up.data == b"abcdef" and up.content_type == "video/mp4"


@pytest.mark.parametrize("ctype", ["application/octet-stream", "application/x-www-form-urlencoded"])
def test_uninformative_content_types_are_dropped(ctype: str) -> None:
    req, _ = _request([b"abc"], {"content-type": ctype})
    assert _run(read_upload(req, max_bytes=100, timeout_s=5)).content_type is None


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    req, calls = _request([b"x" * 10], {"content-length": "1000", "expect": "100-continue"})
    with pytest.raises(UploadTooLarge) as info:
        _run(read_upload(req, max_bytes=100, timeout_s=5))
    assert info.value.status_code == 413 and info.value.close_connection
    assert calls[0] == 0  # not a byte read: the client waits for 100-continue


def test_streamed_bytes_over_the_limit_are_refused_without_buffering_them() -> None:
    # no Content-Length (chunked): 10 chunks of 40 bytes against a 100-byte limit
    req, calls = _request([b"y" * 40] * 10, stall=True)
    t0 = time.monotonic()
    with pytest.raises(UploadTooLarge):
        _run(read_upload(req, max_bytes=100, timeout_s=5, linger_s=0.2))
    # refused at chunk 3, then drained (discarding) until linger_s ran out
    assert calls[0] >= 3 and time.monotonic() - t0 < 2


def test_multipart_file_field() -> None:
    body, ctype = _multipart(
        [
            ("note", None, None, b"ignored"),
            ("file", "clip.npy", "application/x-npy", b"\x93NUMPYdata"),
        ]
    )
    req, _ = _request([body[:17], body[17:50], body[50:]], {"content-type": ctype})
    up = _run(read_upload(req, max_bytes=100, timeout_s=5))
    assert up.data == b"\x93NUMPYdata"
    assert up.content_type == "application/x-npy"
    assert up.filename == "clip.npy"


def test_multipart_falls_back_to_the_first_file_part() -> None:
    body, ctype = _multipart([("video", "a.mp4", "video/mp4", b"AAA"), ("x", "b.mp4", None, b"B")])
    req, _ = _request([body], {"content-type": ctype})
    assert _run(read_upload(req, max_bytes=100, timeout_s=5)).data == b"AAA"


def test_multipart_file_field_wins_over_an_earlier_file() -> None:
    body, ctype = _multipart([("video", "a.mp4", None, b"AAA"), ("file", "b.mp4", None, b"BBB")])
    req, _ = _request([body], {"content-type": ctype})
    assert _run(read_upload(req, max_bytes=100, timeout_s=5)).data == b"BBB"


def test_multipart_without_a_file() -> None:
    body, ctype = _multipart([("note", None, None, b"hello")])
    req, _ = _request([body], {"content-type": ctype})
    with pytest.raises(MissingFileField) as info:
        _run(read_upload(req, max_bytes=100, timeout_s=5))
    assert info.value.status_code == 400


def test_multipart_file_over_the_limit() -> None:
    body, ctype = _multipart([("file", "a.mp4", None, b"z" * 500)])
    req, _ = _request([body], {"content-type": ctype})
    with pytest.raises(UploadTooLarge):
        _run(read_upload(req, max_bytes=100, timeout_s=5, linger_s=0.1))


def test_multipart_without_boundary() -> None:
    req, _ = _request([b"--x--"], {"content-type": "multipart/form-data"})
    with pytest.raises(BadMultipart):
        _run(read_upload(req, max_bytes=100, timeout_s=5))


def test_empty_upload() -> None:
    req, _ = _request([b""])
    with pytest.raises(EmptyUpload) as info:
        _run(read_upload(req, max_bytes=100, timeout_s=5))
    assert info.value.status_code == 400


def test_stalled_upload_times_out() -> None:
    req, _ = _request([b"abc"], stall=True)
    t0 = time.monotonic()
    with pytest.raises(UploadTimeout) as info:
        _run(read_upload(req, max_bytes=100, timeout_s=0.3))
    assert 0.25 < time.monotonic() - t0 < 2
    assert info.value.status_code == 408 and info.value.close_connection


def test_stalled_upload_does_not_block_the_event_loop() -> None:
    async def main() -> tuple[float, bool]:
        req, _ = _request([b"abc"], stall=True)
        stalled = asyncio.create_task(read_upload(req, max_bytes=100, timeout_s=1.0))
        t0 = time.monotonic()
        ok, _ = _request([b"fine"])
        up = await read_upload(ok, max_bytes=100, timeout_s=1.0)
        elapsed = time.monotonic() - t0
        with pytest.raises(UploadTimeout):
            await stalled
        return elapsed, up.data == b"fine"

    elapsed, ok = asyncio.run(main())
    assert ok and elapsed < 0.2


def test_client_disconnect() -> None:
    req, _ = _request([b"abc"], disconnect=True)
    with pytest.raises(ClientDisconnected):
        _run(read_upload(req, max_bytes=100, timeout_s=5))
