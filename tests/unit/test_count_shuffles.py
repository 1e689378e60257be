"""count_shuffles against brute-force enumeration of Algorithm 1's draws."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from service.core.shuffle import count_shuffles, indices_from_uniforms, num_groups


def _grid(h1: int) -> int:
    """A grid of uniforms whose step divides every candidate count (at most 2 h1)."""
    return math.lcm(*range(1, 2 * h1 + 1)) if h1 else 1


def _enumerate(T: int, h1: int, h2: int) -> set[tuple[int, ...]]:
    """Every index row Algorithm 1 can draw: all combinations of the grid's uniforms,
    one per group, mapped by the one implementation."""
    grid = _grid(h1)
    values = [(k + 0.5) / grid for k in range(grid)]
    u = np.array(list(itertools.product(values, repeat=num_groups(T, h2))), dtype=np.float64)
    return {tuple(row) for row in indices_from_uniforms(T, h1, h2, u).tolist()}


CASES = [
    (T, h1, h2)
    for T in (1, 3, 5, 6, 8)
    for h1 in (0, 1, 2, 3)
    for h2 in (1, 2, 3, 4)
    if _grid(h1) ** num_groups(T, h2) <= 200_000
]


@pytest.mark.parametrize(("T", "h1", "h2"), CASES)
def test_count_matches_enumeration(T: int, h1: int, h2: int) -> None:
    assert count_shuffles(T, h1, h2) == len(_enumerate(T, h1, h2))


def test_count_matches_random_draws_at_16_frames() -> None:
    """Sampling finds exactly as many distinct rows as counted (small counts)."""
    rng = np.random.default_rng(0)
    for h1, h2 in ((1, 4), (2, 4), (1, 2), (8, 8)):
        u = rng.random((20_000, num_groups(16, h2)))
        seen = {tuple(r) for r in indices_from_uniforms(16, h1, h2, u).tolist()}
        assert len(seen) == count_shuffles(16, h1, h2)


def test_issue_figures_at_16_frames() -> None:
    assert count_shuffles(16, 1, 4) == 4
    assert count_shuffles(16, 2, 4) == 64
    assert count_shuffles(16, 0, 1) == 1


def test_identity_is_never_drawn_when_groups_can_move() -> None:
    rows = _enumerate(6, 1, 2)
    assert tuple(range(6)) not in rows
