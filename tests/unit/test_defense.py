"""Algorithm 1, the gather and the vote: properties, uniformity, edge cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from service.core.ensemble import (
    ShuffleEnsemble,
    apply_shuffles,
    majority_vote,
    majority_vote_batch,
    make_generator,
    shuffle_indices,
)
from service.core.presets import PRESETS, ShufflePreset, preset_for_arch
from service.core.shuffle import source_window


@settings(max_examples=300, deadline=None)
@given(
    T=st.integers(1, 64),
    h1=st.integers(0, 20),
    h2=st.integers(1, 12),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_shuffle_properties(T: int, h1: int, h2: int, n: int, seed: int) -> None:
    idx = shuffle_indices(T, h1, h2, n, generator=make_generator(seed))
    assert idx.shape == (n, T) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < T
    for t in range(0, T, h2):
        lo, hi = source_window(t, T, h1, h2)
        has_candidate = hi >= lo and (hi - lo + 1) - int(lo <= t <= hi) > 0
        stop = min(t + h2, T)
        for k in range(n):
            run = idx[k, t:stop].tolist()
            src = run[0]
            # the group is a run of consecutive source frames
            assert run == list(range(src, src + len(run)))
            if has_candidate:
                assert lo <= src <= hi, "source start outside its window"
                assert src != t, "group copied onto itself"
                assert src + h2 - 1 < T, "source run leaves the clip"
                assert abs(src - t) <= h1
            else:
                assert src == t, "empty window must keep the group's own frames"


def test_source_start_is_uniform_over_window() -> None:
    T, h1, h2, n = 32, 6, 2, 20000
    idx = shuffle_indices(T, h1, h2, n, generator=make_generator(0))
    for t in (0, 8, 30):
        lo, hi = source_window(t, T, h1, h2)
        candidates = [c for c in range(lo, hi + 1) if c != t]
        observed = torch.bincount(idx[:, t], minlength=T)[candidates].numpy()
        assert observed.sum() == n
        _, p = chisquare(observed)
        assert p > 1e-3, f"t={t}: draws not uniform over {candidates}: {observed}"


def test_seeded_reproducibility() -> None:
    a = shuffle_indices(16, 3, 4, 10, generator=make_generator(123))
    b = shuffle_indices(16, 3, 4, 10, generator=make_generator(123))
    c = shuffle_indices(16, 3, 4, 10, generator=make_generator(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "T,h1,h2",
    [(1, 5, 1), (3, 2, 4), (4, 0, 1), (16, 0, 3), (5, 1, 5), (7, 100, 3), (2, 1, 1), (10, 1, 3)],
)
def test_edge_cases_terminate_in_bounds(T: int, h1: int, h2: int) -> None:
    idx = shuffle_indices(T, h1, h2, 8, generator=make_generator(1))
    assert idx.shape == (8, T)
    assert int(idx.min()) >= 0 and int(idx.max()) < T


def test_h1_zero_and_short_clip_are_identity() -> None:
    ident = torch.arange(16).expand(5, 16)
    assert torch.equal(shuffle_indices(16, 0, 2, 5), ident)
    assert torch.equal(shuffle_indices(3, 4, 4, 2), torch.arange(3).expand(2, 3))


def test_paper_presets_shuffle_something() -> None:
    for preset in PRESETS.values():
        idx = shuffle_indices(32, preset.h1, preset.h2, 50, generator=make_generator(0))
        assert (idx != torch.arange(32)).any(dim=1).all()


@pytest.mark.parametrize("bad", [dict(T=0), dict(h1=-1), dict(h2=0), dict(n=0)])
def test_bad_arguments_raise(bad: dict[str, int]) -> None:
    kw = dict(T=8, h1=2, h2=2, n=1) | bad
    with pytest.raises(ValueError):
        shuffle_indices(**kw)


@pytest.mark.parametrize("layout,dim", [("thwc", 0), ("cthw", 1), ("bcthw", 2)])
def test_apply_shuffles_any_time_axis(layout: str, dim: int) -> None:
    T = 8
    shape = {"thwc": (T, 4, 5, 3), "cthw": (3, T, 4, 5), "bcthw": (2, 3, T, 4, 5)}[layout]
    clip = torch.randint(0, 255, shape, dtype=torch.uint8)
    idx = shuffle_indices(T, 2, 1, 3, generator=make_generator(7))
    out = apply_shuffles(clip, idx, temporal_dim=dim)
    assert out.shape == (3, *shape) and out.dtype == torch.uint8
    for k in range(3):
        for t in range(T):
            expect = clip.select(dim, int(idx[k, t]))
            assert torch.equal(out[k].select(dim, t), expect)


def test_apply_shuffles_passes_gradients() -> None:
    clip = torch.rand(1, 3, 8, 4, 4, requires_grad=True)
    idx = shuffle_indices(8, 3, 1, 4, generator=make_generator(0))
    apply_shuffles(clip, idx, 2).sum().backward()
    counts = torch.bincount(idx.flatten(), minlength=8).float()
    grad_per_frame = clip.grad[0, 0, :, 0, 0]
    assert torch.allclose(grad_per_frame, counts)


def test_apply_shuffles_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        apply_shuffles(torch.zeros(3, 8, 2, 2), torch.zeros(1, 7, dtype=torch.long), 1)


def test_majority_vote_counts_and_share() -> None:
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [4, 0, 0], [0, 0, 1]])
    res = majority_vote(logits)
    assert res.label == 0
    assert res.counts.tolist() == [2, 1, 1]
    assert res.share == pytest.approx(0.5)


def test_majority_vote_tie_goes_to_higher_mean_softmax() -> None:
    # class 1 and 2 tie on two votes each; class 2's wins are more confident.
    logits = torch.tensor([[0, 1.0, 0.9], [0, 1.0, 0.9], [0, 0.0, 9.0], [0, 0.0, 9.0]])
    assert majority_vote(logits).label == 2
    logits2 = logits.clone()
    logits2[:, [1, 2]] = logits2[:, [2, 1]]
    assert majority_vote(logits2).label == 1


def test_majority_vote_batch_shapes() -> None:
    logits = torch.randn(5, 10, 7)
    labels, counts, probs = majority_vote_batch(logits)
    assert labels.shape == (5,) and counts.shape == (5, 7) and probs.shape == (5, 7)
    assert counts.sum(dim=1).tolist() == [10] * 5
    assert torch.allclose(probs.sum(dim=1), torch.ones(5, dtype=probs.dtype))


def test_presets_match_paper() -> None:
    assert PRESETS["i3d"] == ShufflePreset(3, 4, 10)
    assert PRESETS["slowfast"] == ShufflePreset(2, 2, 10)
    assert PRESETS["csn"] == ShufflePreset(16, 2, 10)
    assert PRESETS["x3d"] == ShufflePreset(16, 1, 10)
    assert preset_for_arch("ir-CSN") == PRESETS["csn"]
    assert preset_for_arch("x3d_m") == PRESETS["x3d"]
    with pytest.raises(KeyError):
        preset_for_arch("resnet50")
    with pytest.raises(ValueError):
        ShufflePreset(1, 0)


def test_shuffle_ensemble_shapes_and_seed() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 4 * 4, 5))
    videos = torch.rand(2, 3, 8, 4, 4)
    ens = ShuffleEnsemble(model, ShufflePreset(2, 1, 6), generator=make_generator(3))
    out = ens(videos)
    assert out.shape == (2, 6, 5)
    # copy k of clip b is the model applied to that clip shuffled by row k
    idx = shuffle_indices(8, 2, 1, 6, generator=make_generator(3))
    ref = model(apply_shuffles(videos[1], idx, 1))
    assert torch.allclose(out[1], ref, atol=1e-6)
    labels, counts = ShuffleEnsemble(model, ShufflePreset(2, 1, 6)).predict(videos)
    assert labels.shape == (2,) and counts.sum().item() == 12
