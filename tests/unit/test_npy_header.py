"""The decoder's .npy header parser: every malformed header is a 400 that
says what is wrong, every header over a limit a 413, before numpy allocates."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from service.decoder.decode import decode_clip
from service.decoder.errors import BadVideoError, LimitExceededError, VideoError
from service.gateway.errors import ERROR_CODES
from tests import media

CLIP = {"clip_len": 8, "frame_interval": 2, "crop_size": 64}


def npy_v1(header: str | bytes, payload: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    """A hand-made .npy: magic, ``version``, header length, ``header`` (no padding), payload."""
    raw = header.encode("latin-1") if isinstance(header, str) else header
    size = struct.pack("<H", len(raw)) if version[0] == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + version + size + raw + payload


def reject(data: bytes) -> VideoError:
    with pytest.raises(VideoError) as info:
        decode_clip(data, **CLIP)  # type: ignore[arg-type]
    return info.value


def test_unclosed_bracket_in_the_header_is_a_400_that_says_so() -> None:
    # The input: numpy's own parser raises tokenize.TokenError on it (was a 500).
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (16, 64, 64, 3 }"
    err = reject(npy_v1(header + " " * 10 + "\n", b"\0" * (16 * 64 * 64 * 3)))
    assert isinstance(err, BadVideoError) and ERROR_CODES[err.code].status == 400
    assert "malformed .npy header" in err.message and "does not match" in err.message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x93NUMPY", "truncated"),
        (b"\x93NUMPY\x01", "truncated"),
        (b"\x93NUMPY\x01\x00\x50", "truncated"),
        (npy_v1("{'descr': '|u1'")[:-3], "truncated"),  # header shorter than declared
        (npy_v1("{}", version=b"\x09\x00"), "version"),
        (npy_v1("{not a dict}\n"), "malformed .npy header"),
        (npy_v1("[1, 2, 3]\n"), "dict"),
        (npy_v1("{'descr': '|u1', 'shape': (8, 64, 64, 3)}\n"), "fortran_order"),
        (npy_v1("{'descr': '|u1', 'fortran_order': 0, 'shape': (8, 64, 64, 3)}\n"), "bool"),
        (npy_v1("{'descr': '|u1', 'fortran_order': False, 'shape': [8, 64]}\n"), "tuple"),
        (npy_v1("{'descr': '|u1', 'fortran_order': False, 'shape': (8, -1, 64, 3)}\n"), ">= 0"),
        (npy_v1("{'descr': '|u1', 'fortran_order': False, 'shape': (8, 2.0, 64, 3)}\n"), "int"),
        (npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 64, 64, 3)}\n"), "dtype"),
        (npy_v1("{'descr': [('a', '|u1')], 'fortran_order': False, 'shape': (8,)}\n"), "dtype"),
        (npy_v1(b"{'descr': '|u1', 'fortran_order': False, 'shape': (8,), }\xff\n"), "malformed"),
        (npy_v1("(" * 500 + ")" * 500), "malformed .npy header"),
        (npy_v1("{'x': " + "[" * 3000 + "]" * 3000 + "}"), "malformed .npy header"),
        (
            npy_v1("{'descr': '|u1', 'fortran_order': False, 'shape': (8, 64, 64, 3), 'x': 1}\n"),
            "keys",
        ),
    ],
)
def test_malformed_headers_are_400_and_say_what_is_wrong(data: bytes, fragment: str) -> None:
    err = reject(data)
    assert isinstance(err, BadVideoError) and ERROR_CODES[err.code].status == 400, err
    assert fragment in err.message, err.message


def test_header_length_is_bounded_before_it_is_read() -> None:
    data = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{"
    err = reject(data)
    assert isinstance(err, BadVideoError) and "header length" in err.message


def test_huge_shapes_are_413_from_the_header_alone() -> None:
    for shape, code in [
        ((10**30, 64, 64, 3), "too_many_frames"),
        ((8, 10**20, 10**20, 3), "frame_too_large"),
    ]:
        err = reject(media.npy_header_only(shape))
        assert isinstance(err, LimitExceededError) and err.code == code


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_version_numpy_writes_is_accepted(version: tuple[int, int]) -> None:
    import io

    array = np.arange(8 * 64 * 64 * 3, dtype=np.uint8).reshape(8, 64, 64, 3)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version)
    clip = decode_clip(buf.getvalue(), **CLIP)  # type: ignore[arg-type]
    assert clip.passthrough
    np.testing.assert_array_equal(clip.frames, array)


def test_fortran_order_and_other_uint8_spellings() -> None:
    array = np.asfortranarray(np.arange(8 * 64 * 64 * 3, dtype=np.uint8).reshape(8, 64, 64, 3))
    clip = decode_clip(media.npy_bytes(array), **CLIP)  # type: ignore[arg-type]
    np.testing.assert_array_equal(clip.frames, array)
    for descr in ("<u1", ">u1", "u1", "|B"):
        data = npy_v1(
            f"{{'descr': '{descr}', 'fortran_order': False, 'shape': (8, 64, 64, 3), }}\n",
            array.tobytes(order="C"),
        )
        np.testing.assert_array_equal(decode_clip(data, **CLIP).frames, array)  # type: ignore[arg-type]
