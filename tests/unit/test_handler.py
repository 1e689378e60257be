"""The handler's request parser (both wire modes) and its frame-block gather."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.shuffle import ensemble_indices
from service.modelserver import wire
from service.modelserver.handler import (
    MAX_REQUEST_CLIPS,
    ClipRequest,
    RequestError,
    ShuffleGuardHandler,
    gather_frames,
)

T, S = 8, 4


def _handler() -> ShuffleGuardHandler:
    h = ShuffleGuardHandler()
    h.meta = {"clip_len": T, "crop_size": S}
    return h


def _clip(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, S, S, 3), dtype=np.uint8)


def test_copy_mode_parses_in_place() -> None:
    clips = np.stack([_clip(1), _clip(2)])
    body = bytearray(wire.encode_clips(clips))
    req = _handler().parse({"body": body})
    assert isinstance(req, ClipRequest) and req.indices is None and req.rows == 2
    np.testing.assert_array_equal(req.frames, clips)
    assert np.shares_memory(req.frames, np.frombuffer(body, np.uint8))  # no copy


def test_index_mode_parses_and_gathers() -> None:
    clip = _clip()
    idx = ensemble_indices(T, 2, 1, 5, seed=0)
    req = _handler().parse(wire.encode_indexed(clip, idx))
    assert req.rows == 6
    np.testing.assert_array_equal(req.frames, clip)
    np.testing.assert_array_equal(req.indices, idx)
    out = gather_frames(req.frames, req.indices)
    assert out.shape == (6, T, S, S, 3) and out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), clip[idx])


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty body"),
        (b"not an npy", "no \\\\x93NUMPY"),
        (wire.encode_array(np.zeros((T, S, S, 3), np.float32)), "unsupported .npy dtype"),
        (wire.encode_array(np.zeros((T, S, S, 3), np.int64)), "clip must be uint8"),
        (wire.encode_array(np.zeros((2, T, S, S, 1), np.uint8)), "expected clips of shape"),
        (wire.encode_array(np.zeros((0, T, S, S, 3), np.uint8)), "1..128 clips"),
        (wire.encode_array(np.zeros((T, S), np.uint8)), "2-d array"),
        (wire.encode_array(np.zeros((T, S, S, 3), np.uint8)), "followed by an .npy"),
        (
            wire.encode_indexed(np.zeros((T, S, S, 3), np.uint8), np.full((2, T), T)),
            "must lie in",
        ),
        (
            wire.encode_array(np.zeros((T, S, S, 3), np.uint8))
            + wire.encode_array(np.zeros((2, T), np.int32)),
            "unsupported .npy dtype",
        ),
        (
            wire.encode_indexed(np.zeros((T, S, S, 3), np.uint8), np.zeros((2, T), np.int64))
            + b"\0",
            "declare",
        ),
        (
            wire.encode_indexed(np.zeros((T, S, S, 3), np.uint8), np.zeros((2, T), np.int64))[:-3],
            "needs",
        ),
        (
            wire.encode_indexed(
                np.zeros((T, S, S, 3), np.uint8), np.zeros((MAX_REQUEST_CLIPS + 1, T), np.int64)
            ),
            "index rows",
        ),
    ],
)
def test_bad_bodies_are_request_errors(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        _handler().parse(body)


def _header_body(header: str) -> bytes:
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '|u1', 'fortran_order': False, 'shape': (16, 64, 64, 3 }",  # issue 10
        "{'descr': '|u1', 'fortran_order': False, 'shape': (10**10, 10**10, 10**10, 3)}",
        "{'descr': '|u1', 'fortran_order': False, 'shape': (999999999999, 4, 4, 3)}",
        "{'descr': '|u1', 'fortran_order': True, 'shape': (8, 4, 4, 3)}",
        "{'descr': '|O', 'fortran_order': False, 'shape': (8, 4, 4, 3)}",
        "{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 4, 4, 3)}",
        "{'descr': '|u1', 'fortran_order': False}",
        "__import__('os')",
        "[" * 5000,
    ],
)
def test_hostile_headers_are_refused_before_any_allocation(header: str) -> None:
    body = _header_body(header) + bytes(T * S * S * 3)
    with pytest.raises(RequestError):
        _handler().parse(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_are_a_request_error(junk: bytes) -> None:
    prefix = wire.encode_array(_clip())
    for body in (junk, prefix + junk, prefix[:40] + junk):
        with contextlib.suppress(RequestError):
            _handler().parse(body)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_gather_equals_one_take(threads: int) -> None:
    clip = np.random.default_rng(0).integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
    idx = ensemble_indices(16, 3, 2, 40, seed=1)  # 41 x 16 x 27 KB: over the parallel bound
    out = gather_frames(clip, idx, threads=threads)
    np.testing.assert_array_equal(out.numpy(), clip[idx])
    tensor_out = gather_frames(torch.from_numpy(clip), idx, threads=threads)
    assert torch.equal(tensor_out, out)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="the GPU gather needs a CUDA GPU; the CPU gather is checked by the tests above",
)
def test_gather_on_the_gpu_equals_the_cpu_one() -> None:
    clip = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    idx = ensemble_indices(16, 3, 2, 10, seed=2)
    on_gpu = gather_frames(torch.from_numpy(clip).cuda(), idx)
    assert on_gpu.device.type == "cuda"
    np.testing.assert_array_equal(on_gpu.cpu().numpy(), clip[idx])
