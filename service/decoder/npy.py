"""The one reader of ``.npy`` arrays from untrusted bytes, on numpy's own parser.

Three callers read ``.npy`` from bytes they did not write: the gateway's decoder
(:mod:`service.decoder.npy_clip`, an uploaded clip), the wire format
(:mod:`service.modelserver.wire`, the backend's logits) and the TorchServe handler
(:mod:`service.modelserver.handler`, a request batch). All three use :func:`read_header` and
:meth:`NpyHeader.view`:

1. ``numpy.lib.format.read_magic`` and ``read_array_header_1_0/2_0`` parse the
   header (``ast.literal_eval``, never pickle), reading through a file-like view
   of the body that refuses a header longer than ``max_header_bytes`` before
   its bytes are read and names the field a truncated body ends in;
2. checks on what numpy returns: every dimension an int ``>= 0`` (numpy lets
   negative ints and bools through) and the dtype one the caller allows, so
   pickled objects, structured and float arrays stop here;
3. :meth:`NpyHeader.view` checks the declared data size against the body before
   anything is allocated and reads the array in place (a view of the body).

Format version 3.0 is version 2.0 with a UTF-8 header, which numpy writes only
when a structured dtype has field names latin-1 cannot encode. No caller allows
a structured dtype, and the header of every array a caller allows is ASCII, on
which UTF-8 and latin-1 agree: a 3.0 file is read with ``read_array_header_2_0``
and gives the array ``numpy.load`` gives; a non-ASCII 3.0 header is refused
either way (only error messages could differ, in the non-ASCII characters).

This module imports numpy only: :mod:`service.modelserver.archive` packs it as ``npy_reader.py``
beside ``handler.py`` into every ``.mar``, where TorchServe loads the handler without
the ``service`` package.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy_format

#: Longest ``.npy`` header accepted, in bytes. ``numpy.save`` writes 128 bytes of
#: preamble and header (padded to a multiple of 64, with room for the first axis to
#: grow) for every array the callers accept: 2- to 5-d uint8, int64 or float32, any
#: size. 1 KiB leaves 8x that for other writers and bounds the ``literal_eval`` and
#: ``tokenize`` work of a hostile header to a tenth of numpy's own default bound
#: (10,000, set for the same reason).
MAX_HEADER_BYTES = 1024
#: What each read of numpy's header parser is, in the order numpy reads them.
_FIELDS = ("magic string and version", "header length", "header")
_HEADER_HELP = (
    "an .npy header is a dict literal with exactly the keys descr, fortran_order (a bool)"
    " and shape (a tuple of ints)"
)


class NpyError(ValueError):
    """Bytes that are not an acceptable ``.npy`` array; the message says what is wrong."""


@dataclass(frozen=True)
class NpyHeader:
    """A checked ``.npy`` header: ``dtype`` data of ``shape`` at ``body[start:end]``."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    start: int  # offset of the data in the body
    nbytes: int  # bytes of data the header declares

    @property
    def end(self) -> int:
        """Offset just past the declared data (may lie past the body's end)."""
        return self.start + self.nbytes

    def view(self, body: bytes | bytearray | memoryview) -> np.ndarray:
        """The array, read in place from ``body`` (no copy; read-only for ``bytes``).

        Raises:
            NpyError: the body holds fewer bytes than the header declares.
        """
        have = len(body) - self.start
        if self.nbytes > have:
            raise NpyError(
                f"the .npy array {list(self.shape)} of {self.dtype} needs {self.nbytes}"
                f" bytes, the body has {have} after its header"
            )
        count = self.nbytes // self.dtype.itemsize
        flat = np.frombuffer(body, dtype=self.dtype, count=count, offset=self.start)
        if self.fortran_order:
            return flat.reshape(self.shape[::-1]).transpose()
        return flat.reshape(self.shape)


class _BodyReader:
    """The file numpy's header parser reads: ``body`` from ``offset``, bounded.

    A read longer than ``limit`` (only the header itself can be) is refused before
    any byte of it is read; a read the body cannot fill names the field it ends in.
    """

    def __init__(self, body: memoryview, offset: int, limit: int) -> None:
        self.body, self.pos, self.limit, self.reads = body, offset, limit, 0

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            size = len(self.body) - self.pos
        field = _FIELDS[min(self.reads, len(_FIELDS) - 1)]
        self.reads += 1
        if size > self.limit:
            raise NpyError(
                f"malformed .npy header: the header length is {size} bytes, over {self.limit}"
            )
        have = len(self.body) - self.pos
        if size > have:
            raise NpyError(
                f"the .npy is truncated inside its {field}: {size} bytes needed,"
                f" {max(have, 0)} present"
            )
        data = bytes(self.body[self.pos : self.pos + size])
        self.pos += size
        return data


def _reason(exc: BaseException) -> str:
    """What numpy's parser found wrong: the first syntax error in the chain (numpy
    re-raises it as ValueError, or as tokenize's TokenError when it retries the
    header as a Python 2 one), else the exception's own message."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SyntaxError):
            return f"it is not a Python literal ({seen.msg})"
        seen = seen.__cause__ or seen.__context__
    return f"{str(exc) or type(exc).__name__:.200}"


def _parse(reader: _BodyReader, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's magic and header parsers on ``reader``: (shape, fortran_order, dtype)."""
    try:
        major, minor = npy_format.read_magic(reader)
    except NpyError:
        raise
    except ValueError:
        raise NpyError(f"{where} is not an .npy array (no \\x93NUMPY magic)") from None
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise NpyError(f"unsupported .npy format version {major}.{minor} (1.0, 2.0 or 3.0)")
    read = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
    try:
        return read(reader, max_header_size=reader.limit)  # type: ignore[no-any-return]
    except NpyError:
        raise
    except Exception as exc:  # ValueError, SyntaxError, TokenError, RecursionError, ...
        # hostile headers reach literal_eval, tokenize and numpy.dtype: every failure
        # of the parser is the header's, never the service's
        raise NpyError(f"malformed .npy header: {_reason(exc)}; {_HEADER_HELP}") from None


def read_header(
    body: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    dtypes: Collection[np.dtype],
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> NpyHeader:
    """Parse and check the ``.npy`` header at ``body[offset:]`` (the data is not read).

    Args:
        body: the bytes, e.g. a request body; only the header's bytes are read.
        offset: where the array starts (an array after another one).
        dtypes: the dtypes the caller accepts; any other is refused by
            comparing the parsed dtype, so no data of it is ever interpreted.
        max_header_bytes: longest header accepted.

    Raises:
        NpyError: anything malformed or not accepted, with what is wrong.
    """
    view = memoryview(body).cast("B")
    where = "the body" if offset == 0 else f"byte {offset} of the body"
    reader = _BodyReader(view, offset, max_header_bytes)
    shape, fortran_order, dtype = _parse(reader, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise NpyError(
            f"malformed .npy header: every dimension must be an int >= 0, got {shape!r:.80}"
        )
    if dtype not in dtypes:
        allowed = " or ".join(str(np.dtype(d)) for d in dtypes)
        raise NpyError(f"unsupported .npy dtype {str(dtype)!r:.60} (expected {allowed})")
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d
    return NpyHeader(dtype, shape, bool(fortran_order), reader.pos, nbytes)
