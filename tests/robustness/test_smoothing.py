"""Randomized smoothing (abstain rule, certificate) and the comparison rows."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from service.core.ensemble import ShuffleEnsemble, make_generator, shuffle_indices
from service.core.presets import ShufflePreset
from service.research.robustness.denoise import DnCNN
from service.research.robustness.registry import DEFENSE_ROWS, RowContext, build_rows
from service.research.robustness.smoothing import (
    ABSTAIN,
    Defense,
    NoDefense,
    ShuffleCopies,
    ShuffleVote,
    Smooth,
    SmoothedDefense,
)

K = 3


class Threshold(nn.Module):
    """Class 0 when the first pixel is above 0.5, class 1 otherwise (class 2 never)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0, 0]
        return torch.stack([v - 0.5, 0.5 - v, torch.full_like(v, -1.0)], dim=1)


class Scripted(nn.Module):
    """Ignores its input; votes the scripted labels in order, one per copy."""

    def __init__(self, votes: list[int]) -> None:
        super().__init__()
        self.votes = torch.tensor(votes)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = self.votes[self.seen : self.seen + x.shape[0]]
        self.seen += x.shape[0]
        return nn.functional.one_hot(labels, K).float()


def clip_with_first_pixel(value: float) -> torch.Tensor:
    x = torch.full((1, 3, 4, 4, 4), 0.5)
    x[0, 0, 0, 0, 0] = value
    return x


def test_abstains_when_two_classes_split_the_votes() -> None:
    smooth = Smooth(Threshold(), K, sigma=0.1)
    label = smooth.predict(
        clip_with_first_pixel(0.5), n=200, alpha=0.001, batch_size=64, generator=make_generator(0)
    )
    assert label.tolist() == [Smooth.ABSTAIN] and Smooth.ABSTAIN == ABSTAIN == -1


def test_returns_the_class_that_dominates() -> None:
    smooth = Smooth(Threshold(), K, sigma=0.1)
    x = torch.cat([clip_with_first_pixel(0.9), clip_with_first_pixel(0.1)])
    labels = smooth.predict(x, n=200, alpha=0.001, batch_size=64, generator=make_generator(0))
    assert labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("votes", "alpha"),
    [((60, 40, 0), 0.05), ((60, 40, 0), 0.06), ((55, 40, 5), 0.2), ((30, 20, 50), 0.01)],
)
def test_two_sided_binomial_test_of_top_vs_runner_up(votes: tuple[int, ...], alpha: float) -> None:
    script = [c for c, count in enumerate(votes) for _ in range(count)]
    smooth = Smooth(Scripted(script), K, sigma=0.0)
    label = int(smooth.predict(clip_with_first_pixel(0.5), n=100, alpha=alpha, batch_size=30)[0])
    ranked = sorted(range(K), key=lambda c: -votes[c])
    top, second = votes[ranked[0]], votes[ranked[1]]
    p_value = binomtest(top, top + second, p=0.5, alternative="two-sided").pvalue
    assert label == (ranked[0] if p_value <= alpha else ABSTAIN)


def test_binomial_threshold_is_where_scipy_puts_it() -> None:
    # 60 vs 40 of 100: two-sided p = 0.057, so alpha decides.
    for alpha, expected in ((0.05, ABSTAIN), (0.06, 0)):
        smooth = Smooth(Scripted([0] * 60 + [1] * 40), K, sigma=0.0)
        got = smooth.predict(clip_with_first_pixel(0.5), n=100, alpha=alpha, batch_size=100)
        assert got.tolist() == [expected]


def test_certify_radius_is_clopper_pearson() -> None:
    n, alpha, sigma = 100, 0.001, 0.25
    smooth = Smooth(Scripted([2] * 110), K, sigma=sigma)
    labels, radii = smooth.certify(
        clip_with_first_pixel(0.5), n0=10, n=n, alpha=alpha, batch_size=25
    )
    # all n votes for the class: the one-sided lower bound is alpha ** (1 / n)
    assert labels.tolist() == [2]
    assert float(radii[0]) == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-9)

    tie = Smooth(Threshold(), K, sigma=0.1)
    labels, radii = tie.certify(
        clip_with_first_pixel(0.5),
        n0=20,
        n=100,
        alpha=alpha,
        batch_size=50,
        generator=make_generator(1),
    )
    assert labels.tolist() == [ABSTAIN] and radii.tolist() == [0.0]


def test_clamp_keeps_noisy_copies_in_range() -> None:
    seen: list[torch.Tensor] = []

    class Recorder(Threshold):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return super().forward(x)

    for clamp in (False, True):
        seen.clear()
        Smooth(Recorder(), K, sigma=0.5, clamp=clamp).predict(
            clip_with_first_pixel(0.5), n=8, alpha=0.1, batch_size=8, generator=make_generator(0)
        )
        inside = all(float(x.min()) >= 0 and float(x.max()) <= 1 for x in seen)
        assert inside == clamp


def test_shuffle_copies_are_the_drawn_shuffles() -> None:
    T = 8
    clip = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1).expand(1, 3, T, 2, 2)
    preset = ShufflePreset(h1=2, h2=2)
    copies = ShuffleCopies(preset)(clip, 5, make_generator(4))
    expected = shuffle_indices(T, 2, 2, 5, generator=make_generator(4)).float()
    assert copies.shape == (5, 3, T, 2, 2)
    assert torch.equal(copies[:, 0, :, 0, 0], expected)


def test_shuffle_row_is_the_shuffle_ensemble(toy) -> None:
    preset = ShufflePreset(h1=2, h2=2, ensemble=10)
    ours = ShuffleVote(toy.model, preset).predict(toy.clips, make_generator(3))
    ens = ShuffleEnsemble(toy.model, preset, generator=make_generator(3))
    assert torch.equal(ours, ens.predict(toy.clips)[0])


def test_shuffle_smoothing_without_noise_or_shuffle_is_the_model(toy) -> None:
    row = SmoothedDefense(
        toy.model, K, sigma=0.0, n=20, alpha=0.001, preset=ShufflePreset(h1=0, h2=1)
    )
    assert row.name == "shuffle+rs"
    assert torch.equal(row.predict(toy.clips), toy.labels)


def test_all_rows_return_valid_labels(toy, model: nn.Module) -> None:
    model.train()
    denoiser = DnCNN(depth=3, features=4)
    ctx = RowContext(model, K, ShufflePreset(h1=2, h2=1, ensemble=10), 0.01, 20, 0.01, 40, denoiser)
    rows = build_rows(list(DEFENSE_ROWS), ctx)
    assert list(rows) == ["none", "rs", "denoise", "shuffle", "shuffle+rs", "shuffle+denoise"]
    clips = toy.clips[:4]
    for name, row in rows.items():
        assert isinstance(row, Defense) and row.name == name
        labels = row.predict(clips, make_generator(0))
        assert labels.shape == (4,) and labels.dtype == torch.int64
        assert ((labels >= ABSTAIN) & (labels < K)).all(), name
    assert model.training  # the rows give the training flag back
    model.eval()
    assert torch.equal(rows["none"].predict(clips), toy.labels[:4])
    # tiny noise does not move the toy model
    assert torch.equal(rows["rs"].predict(clips, make_generator(0)), toy.labels[:4])
    assert [r for r in DEFENSE_ROWS if not DEFENSE_ROWS[r].needs_denoiser] == [
        "none",
        "rs",
        "shuffle",
        "shuffle+rs",
    ]


def test_no_defense_is_the_argmax(toy) -> None:
    with torch.no_grad():
        expected = toy.model(toy.clips).argmax(dim=1)
    assert torch.equal(NoDefense(toy.model).predict(toy.clips), expected)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Smooth(Threshold(), 1, sigma=0.1)
    with pytest.raises(ValueError):
        Smooth(Threshold(), K, sigma=0.1).predict(torch.zeros(3, 4, 4, 4), 10, 0.01, 5)
    with pytest.raises(ValueError):
        Smooth(Threshold(), K, sigma=0.1, transform=ShuffleCopies(ShufflePreset(1, 1))).certify(
            clip_with_first_pixel(0.5), 10, 10, 0.01, 5
        )
