"""Analysis transforms of the paper, Sec. 3-4."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.core.ensemble import make_generator
from service.core.transforms import (
    apply_row_shuffle,
    chunk_shuffle,
    chunk_shuffle_indices,
    monotonic_ratio,
    row_shuffle_indices,
    uniformize,
)


def test_monotonic_ratio_paper_example() -> None:
    assert monotonic_ratio([2, 3, 4, 1, 5], k=3, s=1, p=1) == pytest.approx(3 / 5)


def test_monotonic_ratio_ordered_and_reversed() -> None:
    assert monotonic_ratio(list(range(16)), k=3, s=1, p=1) == 1.0
    assert monotonic_ratio(list(range(16))[::-1], k=3, s=1, p=0) == 0.0
    # stride 2: windows at 0, 2, 4 of a 7-frame sequence
    assert monotonic_ratio([1, 2, 3, 0, 4, 5, 6], k=3, s=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        monotonic_ratio([1, 2], k=5)


def test_uniformize_repeats_frame() -> None:
    clip = torch.arange(2 * 3 * 5).view(2, 3, 5)  # time on dim 2
    out = uniformize(clip, 3, temporal_dim=2)
    assert out.shape == clip.shape
    assert torch.equal(out, clip[:, :, 3:4].expand_as(clip))
    assert torch.equal(uniformize(clip, -1, 2), clip[:, :, 4:5].expand_as(clip))
    with pytest.raises(IndexError):
        uniformize(clip, 5, 2)


@pytest.mark.parametrize("T,chunk", [(8, 1), (8, 2), (8, 4), (8, 8), (10, 4), (5, 16)])
def test_chunk_shuffle_permutes_within_chunks(T: int, chunk: int) -> None:
    idx = chunk_shuffle_indices(T, chunk, n=50, generator=make_generator(0))
    for row in idx.tolist():
        assert sorted(row) == list(range(T))
        for start in range(0, T, chunk):
            assert sorted(row[start : start + chunk]) == list(range(start, min(start + chunk, T)))
    if chunk == 1:
        assert torch.equal(idx, torch.arange(T).expand(50, T))


def test_chunk_shuffle_is_uniform_over_permutations() -> None:
    idx = chunk_shuffle_indices(3, 3, n=6000, generator=make_generator(1))
    seen = {tuple(r) for r in idx.tolist()}
    assert seen == set(itertools.permutations(range(3)))


def test_chunk_shuffle_applies_to_clip() -> None:
    clip = torch.arange(8).view(1, 8, 1, 1).float()
    out = chunk_shuffle(clip, 4, temporal_dim=1, generator=make_generator(2))
    vals = out.flatten().tolist()
    assert sorted(vals[:4]) == [0, 1, 2, 3] and sorted(vals[4:]) == [4, 5, 6, 7]


def test_row_shuffle_same_order_every_frame() -> None:
    clip = torch.arange(12).view(1, 12, 1).expand(4, 12, 3).contiguous()  # [T, H, W]
    out = apply_row_shuffle(clip, 4, row_dim=1, generator=make_generator(5))
    for t in range(4):
        assert torch.equal(out[t], out[0])
    rows = out[0, :, 0].tolist()
    for start in range(0, 12, 4):
        assert sorted(rows[start : start + 4]) == list(range(start, start + 4))
    assert row_shuffle_indices(12, 1).tolist() == list(range(12))
