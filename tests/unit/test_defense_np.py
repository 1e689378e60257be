"""The numpy core: draws unchanged for the harness, gateway indices, vote, early stop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.ensemble import majority_vote, make_generator, shuffle_indices
from service.core.shuffle import ensemble_indices, indices_from_uniforms, source_window
from service.core.vote import EarlyStop, suspected, vote


def _torch_algorithm_1(T: int, h1: int, h2: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """Algorithm 1 as ``service.core.ensemble`` computed it in torch before the numpy core
    (same draws, torch index maths): the oracle that the research harness's shuffles
    for a seed did not change."""
    rows = []
    for t in range(0, T, h2):
        lo, hi = source_window(t, T, h1, h2)
        rows.append([c for c in range(lo, hi + 1) if c != t] or [t])
    width = max(len(r) for r in rows)
    table = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows])
    count = torch.tensor([len(r) for r in rows])
    u = torch.rand((n, len(rows)), generator=gen, dtype=torch.float64)
    pick = torch.minimum((u * count.double()).long(), count - 1)
    src = table[torch.arange(len(rows)).unsqueeze(0), pick]
    pos = torch.arange(T)
    return src[:, pos // h2] + pos % h2


@settings(max_examples=150, deadline=None)
@given(
    T=st.integers(1, 48),
    h1=st.integers(0, 20),
    h2=st.integers(1, 10),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**40),
)
def test_torch_wrapper_draws_what_the_harness_always_drew(
    T: int, h1: int, h2: int, n: int, seed: int
) -> None:
    new = shuffle_indices(T, h1, h2, n, generator=make_generator(seed))
    old = _torch_algorithm_1(T, h1, h2, n, make_generator(seed))
    assert torch.equal(new, old)


def test_ensemble_indices_row_zero_is_identity_and_seeded() -> None:
    a = ensemble_indices(16, 3, 2, 10, seed=5)
    assert a.shape == (11, 16) and a.dtype == np.int64
    assert a[0].tolist() == list(range(16))
    np.testing.assert_array_equal(a, ensemble_indices(16, 3, 2, 10, seed=5))
    assert not np.array_equal(a, ensemble_indices(16, 3, 2, 10, seed=6))
    # the rows are Algorithm 1 on PCG64 draws of that seed
    u = np.random.default_rng(5).random((10, 8))
    np.testing.assert_array_equal(a[1:], indices_from_uniforms(16, 3, 2, u))


def test_huge_h1_is_clamped() -> None:
    idx = ensemble_indices(8, 10**30, 1, 4, seed=0)
    assert idx.min() >= 0 and idx.max() < 8


def test_indices_from_uniforms_rejects_wrong_draws() -> None:
    with pytest.raises(ValueError, match="u must be"):
        indices_from_uniforms(8, 2, 2, np.zeros((3, 5)))


@settings(max_examples=200, deadline=None)
@given(
    logits=st.integers(1, 12).flatmap(
        lambda n: st.integers(1, 5).flatmap(
            lambda k: st.lists(
                st.lists(st.sampled_from([-2.0, 0.0, 0.5, 1.0, 3.0]), min_size=k, max_size=k),
                min_size=n,
                max_size=n,
            )
        )
    )
)
def test_numpy_vote_equals_the_torch_vote(logits: list[list[float]]) -> None:
    arr = np.asarray(logits, np.float32)
    ours, theirs = vote(arr), majority_vote(torch.from_numpy(arr))
    assert ours.counts.tolist() == theirs.counts.tolist()
    assert ours.label == theirs.label
    assert ours.share == pytest.approx(theirs.share)


def _full_and_early(
    logits: np.ndarray, undefended: int, threshold: float, max_rounds: int
) -> tuple[tuple[int, bool], tuple[int, bool], int]:
    """(label, flag) of the full vote, of the early-stopped vote, and copies cast."""
    N = logits.shape[0]
    full = vote(logits)
    full_flag = suspected(undefended, full.label, int(full.counts[full.label]) / N, threshold)
    stop = EarlyStop(ensemble=N, threshold=threshold, max_rounds=max_rounds)
    cast, rounds = 0, 0
    counts = np.zeros(logits.shape[1], np.int64)
    while (k := stop.next_round(counts, rounds)) > 0:
        assert 1 <= k <= N - cast
        cast += k
        rounds += 1
        counts = vote(logits[:cast]).counts
        if stop.decided(counts, undefended):
            break
    assert rounds <= max_rounds
    early = vote(logits[:cast])
    flag = suspected(undefended, early.label, int(early.counts[early.label]) / N, threshold)
    return (full.label, full_flag), (early.label, flag), cast


@settings(max_examples=600, deadline=None)
@given(
    data=st.data(),
    N=st.integers(1, 24),
    K=st.integers(2, 5),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.51, 0.6, 0.7, 0.9, 1.0])
    | st.floats(0, 1, allow_nan=False),
    max_rounds=st.integers(1, 5),
)
def test_early_stop_gives_the_full_vote(
    data: st.DataObject, N: int, K: int, threshold: float, max_rounds: int
) -> None:
    """Random vote sequences (many ties: coarse logits) and thresholds: the stopped
    vote's label and suspected flag always equal the full vote's."""
    votes = data.draw(st.lists(st.integers(0, K - 1), min_size=N, max_size=N))
    margins = data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 4.0]), min_size=N, max_size=N))
    logits = np.zeros((N, K), np.float32)
    logits[np.arange(N), votes] = margins
    undefended = data.draw(st.integers(0, K - 1))
    full, early, cast = _full_and_early(logits, undefended, threshold, max_rounds)
    assert early == full
    assert 1 <= cast <= N


def test_a_tie_the_remaining_copies_could_create_does_not_stop() -> None:
    # N = 4, first round 3 copies: 2 for class 0, 1 for class 1. One copy left could
    # tie 2-2, and the tie-break reads the mean softmax over all 4 copies.
    stop = EarlyStop(ensemble=4, threshold=0.0)
    assert stop.first_round() == 3
    assert not stop.decided(np.array([2, 1]), undefended=0)
    assert stop.decided(np.array([3, 0]), undefended=0)
    logits = np.array([[1.0, 0], [1.0, 0], [0, 9.0], [0, 9.0]], np.float32)
    full, early, cast = _full_and_early(logits, 0, 0.0, 3)
    assert full == early == (1, True) and cast == 4


def test_unanimous_clips_stop_after_a_strict_majority() -> None:
    for N in (1, 2, 5, 10, 11, 64):
        stop = EarlyStop(ensemble=N, threshold=0.5)
        r1 = stop.first_round()
        assert r1 == N // 2 + 1
        counts = np.array([r1, 0, 0])
        assert stop.decided(counts, undefended=0)
    # a threshold above one half needs that many votes in the first round
    assert EarlyStop(ensemble=10, threshold=0.8).first_round() == 8
