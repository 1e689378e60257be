"""The black-box attacks against real (numpy) classifiers seen only through answers."""

from __future__ import annotations

import numpy as np
import pytest

from service.research.robustness.blackbox import (
    Answer,
    BudgetExhausted,
    QueryBudget,
    RaySAttack,
    SquareAttack,
    margin,
    perturbation_norms,
    square_p_schedule,
)

SHAPE = (4, 8, 8, 3)  # [T, H, W, C]


class LinearNet:
    """A linear classifier on uint8 ``[T, H, W, 3]`` clips: logits = W @ (x / 255) + b,
    3 classes; ``softmax`` answers as the gateway does with ``defense=false``; with
    ``label_only`` it answers the label alone (production); ``flip`` > 0 answers a
    wrong label with that probability (a randomized service, seeded)."""

    def __init__(self, seed: int = 0, *, label_only: bool = False, flip: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(3, int(np.prod(SHAPE)))) / 10
        self.label_only, self.flip = label_only, flip
        self.rng = np.random.default_rng(seed + 1)
        self.calls = 0

    def logits(self, clip: np.ndarray) -> np.ndarray:
        return self.w @ (clip.reshape(-1) / 255.0)

    def __call__(self, clip: np.ndarray) -> Answer:
        self.calls += 1
        z = self.logits(clip)
        p = np.exp(z - z.max())
        p /= p.sum()
        k = int(p.argmax())
        if self.flip and self.rng.random() < self.flip:
            k = (k + 1) % 3
        return Answer(k) if self.label_only else Answer(k, None, float(p[k]))


def near_boundary_clip(net: LinearNet, gap: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """A clip whose top-two logit gap is about ``gap`` (searched over random clips)."""
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(400):
        clip = rng.integers(40, 216, size=SHAPE, dtype=np.uint8)
        z = np.sort(net.logits(clip))
        d = abs(z[-1] - z[-2] - gap)
        if best is None or d < best[0]:
            best = (d, clip)
    assert best is not None
    clip = best[1]
    return clip, int(net.logits(clip).argmax())


def test_margin_from_shares_and_from_confidence() -> None:
    assert margin(Answer(0, {0: 0.7, 1: 0.2, 2: 0.1}), 0) == pytest.approx(0.5)
    assert margin(Answer(1, {0: 0.3, 1: 0.7}), 0) == pytest.approx(-0.4)
    assert margin(Answer(0, None, 0.9), 0) == pytest.approx(0.8)
    assert margin(Answer(2, None, 0.6), 0) == pytest.approx(-0.6)
    with pytest.raises(ValueError, match="labels only"):
        margin(Answer(0), 0)


def test_p_schedule_halves_on_the_papers_iterations_rescaled() -> None:
    assert square_p_schedule(0.08, 1, 10_000) == 0.08
    assert square_p_schedule(0.08, 11, 10_000) == 0.04
    assert square_p_schedule(0.08, 51, 10_000) == 0.02
    # budget 1000: the first halving at iteration 1 (10 / 10 000 of the budget)
    assert square_p_schedule(0.08, 2, 1000) == 0.04
    assert square_p_schedule(0.08, 999, 1000) == 0.08 / 2**9


def test_budget_counts_every_query_and_stops() -> None:
    net = LinearNet()
    q = QueryBudget(net, 3)
    clip = np.zeros(SHAPE, np.uint8)
    for _ in range(3):
        q(clip)
    with pytest.raises(BudgetExhausted):
        q(clip)
    assert q.used == 3 == net.calls == len(q.history)


@pytest.mark.parametrize(
    "attack,label_only",
    [(SquareAttack(eps=8, seed=1), False), (RaySAttack(eps=8, seed=1), True)],
    ids=["square", "rays"],
)
def test_attack_fools_a_linear_net_within_eps_and_budget(
    attack: SquareAttack | RaySAttack, label_only: bool
) -> None:
    net = LinearNet(label_only=label_only)
    clip, label = near_boundary_clip(net, gap=0.3)
    res = attack(net, clip, label, budget=400)
    assert res.success and not res.skipped
    assert res.queries == net.calls <= 400
    linf, l2 = perturbation_norms(clip, res.adversarial)
    assert 0 < linf <= 8 and l2 > 0
    assert res.adversarial.dtype == np.uint8
    assert int(net.logits(res.adversarial).argmax()) != label  # really adversarial
    assert len(res.confirm_labels) == attack.confirm
    assert all(k != label for k in res.confirm_labels)


@pytest.mark.parametrize("cls", [SquareAttack, RaySAttack])
def test_attack_is_reproducible_from_its_seed(cls: type[SquareAttack]) -> None:
    net = LinearNet(label_only=cls is RaySAttack)
    clip, label = near_boundary_clip(net, gap=2.0)
    a = cls(eps=4, seed=3)(net, clip, label, budget=60)
    b = cls(eps=4, seed=3)(LinearNet(label_only=cls is RaySAttack), clip, label, budget=60)
    assert np.array_equal(a.adversarial, b.adversarial) and a.queries == b.queries
    assert a.queries <= 60


def test_a_clip_the_service_gets_wrong_is_skipped_after_one_query() -> None:
    net = LinearNet()
    clip, label = near_boundary_clip(net, gap=1.0)
    res = SquareAttack(eps=4)(net, clip, (label + 1) % 3, budget=50)
    assert res.skipped and not res.success and res.queries == 1
    assert np.array_equal(res.adversarial, clip)


def test_a_far_clip_is_not_fooled_and_spends_exactly_the_budget() -> None:
    net = LinearNet()
    clip, label = near_boundary_clip(net, gap=50.0)
    res = SquareAttack(eps=2, seed=0)(net, clip, label, budget=37)
    assert not res.success and res.queries == 37 == net.calls
    assert perturbation_norms(clip, res.adversarial)[0] <= 2


def test_lucky_wrong_answers_of_a_randomized_service_are_not_successes() -> None:
    """A service that answers wrongly 25% of the time at random: a single wrong answer
    is a candidate, the majority of fresh re-queries says no."""
    net = LinearNet(flip=0.25)
    clip, label = near_boundary_clip(net, gap=50.0)
    res = SquareAttack(eps=2, seed=0, confirm=7)(net, clip, label, budget=200)
    assert not res.success
    assert res.failed_confirmations >= 1
    assert res.queries == 200


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="eps"):
        SquareAttack(eps=0)
    with pytest.raises(ValueError, match="p_init"):
        SquareAttack(p_init=0)
    with pytest.raises(ValueError, match="uint8"):
        SquareAttack()(LinearNet(), np.zeros(SHAPE, np.float32), 0, budget=5)


def test_square_each_gives_every_frame_its_own_square_and_still_fools() -> None:
    net = LinearNet()
    clip, label = near_boundary_clip(net, gap=0.3)
    sent: list[np.ndarray] = []

    def oracle(x: np.ndarray) -> Answer:
        sent.append(x)
        return net(x)

    res = SquareAttack(eps=8, seed=1, frames="each")(oracle, clip, label, budget=400)
    assert res.success and perturbation_norms(clip, res.adversarial)[0] <= 8
    delta = sent[2].astype(int) - sent[1].astype(int)  # one update after the stripes
    changed = [bool(np.any(delta[t])) for t in range(SHAPE[0])]
    assert sum(changed) >= SHAPE[0] - 1  # (a redrawn square may equal the old signs)
    per_frame = res.adversarial.astype(int) - clip.astype(int)
    assert any(not np.array_equal(per_frame[0], per_frame[t]) for t in range(1, SHAPE[0]))
