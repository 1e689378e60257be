"""Receiving an upload: the raw body or the multipart field ``file``.

Limits are enforced while the bytes arrive, before memory is spent on them:

* a ``Content-Length`` over the limit is refused before reading a byte;
* the bytes are counted as they arrive, and the upload is refused as soon as
  the count passes the limit (a chunked upload has no Content-Length);
* the whole upload must arrive within ``timeout_s``, else 408. Waiting is
  ``await``-ed on the event loop, so a stalled client holds up nobody else.

A multipart body is parsed as it streams in (python-multipart's push parser);
only the ``file`` part is kept in memory, never a second copy of the body.

When the gateway refuses an upload before it has all arrived, it keeps reading
(and discarding) for up to ``linger_s`` so the client, which is still sending,
gets to read the 413 instead of a connection reset, then closes the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.gateway.errors import (
    ClientDisconnected,
    EmptyUpload,
    GatewayError,
    MissingFileField,
    UploadTimeout,
    UploadTooLarge,
)

__all__ = ["FILE_FIELD", "MULTIPART_SLACK_BYTES", "Upload", "read_upload"]

#: the multipart field that carries the clip
FILE_FIELD = "file"
#: room for multipart boundaries and part headers on top of the file limit
MULTIPART_SLACK_BYTES = 64 * 1024


class BadMultipart(GatewayError):
    status_code, code = 400, "bad_multipart"


@dataclass(frozen=True)
class Upload:
    """The uploaded clip's bytes and what the client said they are."""

    data: bytes
    content_type: str | None
    filename: str | None = None


class _FilePart:
    """Callbacks for python-multipart that keep only the clip's part.

    The clip is the field named ``file``; failing that, the first part with a
    filename. Every other part is parsed and dropped.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.data = bytearray()
        self.content_type: str | None = None
        self.filename: str | None = None
        self.found = False  # some part was taken
        self._exact = False  # the part taken is the field named "file"
        self._keep = False  # the current part is the one taken
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""

    def on_part_begin(self) -> None:
        self._headers = {}
        self._keep = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        exact = options.get(b"name", b"") == FILE_FIELD.encode()
        if (exact and not self._exact) or (b"filename" in options and not self.found):
            self.data.clear()
            self.found = self._keep = True
            self._exact = exact
            ctype = self._headers.get(b"content-type")
            self.content_type = ctype.decode("latin-1") if ctype else None
            fname = options.get(b"filename")
            self.filename = fname.decode("utf-8", "replace") if fname else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep:
            self.data += data[start:end]
            if len(self.data) > self.max_bytes:
                raise UploadTooLarge(_too_large(self.max_bytes))

    def on_part_end(self) -> None:
        self._keep = False


def _too_large(limit: int) -> str:
    return (
        f"the upload is over the {limit / 1e6:g} MB limit; send a shorter or smaller clip "
        "(or an .npy at the model's clip size)"
    )


async def read_upload(
    request: Request,
    *,
    max_bytes: int,
    timeout_s: float,
    linger_s: float = 1.0,
) -> Upload:
    """Receive the clip of a classify request (raw body or multipart ``file``).

    Raises:
        UploadTooLarge (413), UploadTimeout (408), EmptyUpload / MissingFileField /
        BadMultipart (400), ClientDisconnected (499, the client is gone).
    """
    content_type = request.headers.get("content-type")
    mime, params = parse_options_header(content_type or "")
    is_multipart = mime == b"multipart/form-data"
    body_limit = max_bytes + (MULTIPART_SLACK_BYTES if is_multipart else 0)

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        if request.headers.get("expect", "").lower() != "100-continue":
            # The client sends regardless: read it away briefly so it sees the answer.
            await _drain(request, linger_s, body_limit * 4)
        raise UploadTooLarge(_too_large(max_bytes))

    collector = _FilePart(max_bytes) if is_multipart else None
    parser = _multipart_parser(params, collector, body_limit) if collector is not None else None
    raw = await _receive(request, parser, max_bytes, body_limit, timeout_s, linger_s)
    if collector is not None:
        if not collector.found:
            raise MissingFileField(
                f"multipart upload without a {FILE_FIELD!r} field; send the clip as "
                f"-F {FILE_FIELD}=@clip.mp4 or as the raw body"
            )
        upload = Upload(bytes(collector.data), collector.content_type, collector.filename)
    else:
        upload = Upload(bytes(raw), content_type)
    if not upload.data:
        raise EmptyUpload("the upload is empty; send a video file or an .npy clip")
    return Upload(upload.data, _meaningful(upload.content_type), upload.filename)


def _meaningful(ctype: str | None) -> str | None:
    """The media type without parameters, None when it says nothing about the clip."""
    if ctype is not None:
        ctype = ctype.split(";", 1)[0].strip().lower() or None
    if ctype in ("application/octet-stream", "application/x-www-form-urlencoded"):
        ctype = None  # says nothing (curl --data-binary sends the latter): sniff instead
    return ctype


def _multipart_parser(
    params: dict[bytes, bytes], collector: _FilePart, body_limit: int
) -> MultipartParser:
    """A push parser of the multipart body that hands its parts to ``collector``."""
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadMultipart("multipart/form-data without a boundary; let the client set it")
    try:
        return MultipartParser(
            boundary,
            {
                "on_part_begin": collector.on_part_begin,
                "on_part_data": collector.on_part_data,
                "on_part_end": collector.on_part_end,
                "on_header_field": collector.on_header_field,
                "on_header_value": collector.on_header_value,
                "on_header_end": collector.on_header_end,
                "on_headers_finished": collector.on_headers_finished,
            },
            max_size=body_limit,
        )
    except FormParserError as exc:  # e.g. a boundary over python-multipart's 256 bytes
        raise BadMultipart(
            f"multipart/form-data with an unusable boundary ({exc}); RFC 2046 boundaries"
            " are 1 to 70 characters, let the client set it"
        ) from None


async def _receive(
    request: Request,
    parser: MultipartParser | None,
    max_bytes: int,
    body_limit: int,
    timeout_s: float,
    linger_s: float,
) -> bytearray:
    """Stream the body in under the limits: into ``parser`` (multipart), else the
    returned bytes."""
    raw = bytearray()
    received = 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > body_limit:
                    raise UploadTooLarge(_too_large(max_bytes))
                if parser is not None:
                    parser.write(chunk)
                else:
                    raw += chunk
            if parser is not None:
                parser.finalize()
    except UploadTooLarge:
        await _drain(request, linger_s, body_limit * 4)
        raise
    except TimeoutError:
        raise UploadTimeout(
            f"the upload did not arrive within {timeout_s:g} s; check the connection and retry"
        ) from None
    except ClientDisconnect:
        raise ClientDisconnected("the client closed the connection during the upload") from None
    except FormParserError as exc:
        raise BadMultipart(f"the multipart body is malformed: {exc}") from None
    return raw


async def _drain(request: Request, linger_s: float, max_bytes: int) -> None:
    """Read and discard the rest of the body for at most ``linger_s`` seconds."""
    drained = 0
    with anyio.move_on_after(linger_s):
        try:
            async for chunk in request.stream():
                drained += len(chunk)
                if drained > max_bytes:
                    return
        except (ClientDisconnect, RuntimeError):
            return
