"""The saturated EOT's options: exact mean-logit gradients under chunking, the
vote-aware loss, schedules, momentum, restarts, the static option and patience."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from service.core.ensemble import make_generator, shuffle_indices
from service.core.presets import ShufflePreset
from service.research.robustness.attacks import EOT, attack_mode

PRESET = ShufflePreset(h1=2, h2=2)


def _grad(attack: EOT, clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    attack.generator = make_generator(7)
    with attack_mode(attack.model), torch.enable_grad():
        return attack.input_grad(clips, labels)


@pytest.mark.parametrize("loss", ["ce_mean", "cw_mean"])
def test_mean_logit_loss_is_exact_under_chunking(toy, model: nn.Module, loss: str) -> None:
    clips, labels = toy.clips[:2], toy.labels[:2]
    chunked = _grad(EOT(model, PRESET, draws=4, loss=loss, batch_size=2), clips, labels)
    idx = shuffle_indices(clips.shape[2], PRESET.h1, PRESET.h2, 4, generator=make_generator(7))
    with attack_mode(model), torch.enable_grad():
        x = clips.clone().requires_grad_(True)
        mean = torch.stack([model(x[:, :, row]) for row in idx]).mean(0)
        if loss == "ce_mean":
            value = F.cross_entropy(mean, labels, reduction="sum")
        else:
            true = mean.gather(1, labels[:, None]).squeeze(1)
            other = mean.masked_fill(F.one_hot(labels, mean.shape[1]).bool(), float("-inf"))
            value = (other.max(1).values - true).sum()
        (expected,) = torch.autograd.grad(value, x)
    assert torch.allclose(chunked, expected, atol=1e-6)
    assert float(expected.abs().sum()) > 0


def test_vote_loss_ignores_fooled_copies(toy, model: nn.Module) -> None:
    """Labels the model already gets wrong on every copy: the vote-aware loss (kappa 0)
    has no gradient, the per-copy CW margin still has one."""
    clips = toy.clips[:2]
    with torch.no_grad():
        logits = model(clips)
    wrong = logits.argsort(dim=1)[:, 0]  # the least likely class: every copy "fooled"
    attack = EOT(model, PRESET, draws=4, loss="vote")
    grad = _grad(attack, clips, wrong)
    assert attack.last_fooled is not None and bool(attack.last_fooled.all())
    assert float(grad.abs().max()) == 0.0
    assert float(_grad(EOT(model, PRESET, draws=4, loss="cw"), clips, wrong).abs().max()) > 0


def test_schedules() -> None:
    model = nn.Linear(1, 1)
    constant = EOT(model, steps=4, alpha=0.1)
    cosine = EOT(model, steps=4, alpha=0.1, schedule="cosine")
    step = EOT(model, steps=4, alpha=0.1, schedule="step")
    assert [constant.step_size(m) for m in range(4)] == [0.1] * 4
    assert cosine.step_size(0) == pytest.approx(0.1) and cosine.step_size(2) == pytest.approx(0.05)
    assert [step.step_size(m) for m in range(4)] == pytest.approx([0.1, 0.1, 0.05, 0.025])


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "vote", "momentum": 0.9},
        {"loss": "cw_mean", "schedule": "cosine", "restarts": 2},
        {"loss": "vote", "static": True},
        {"loss": "vote", "patience": 1},
    ],
)
def test_options_keep_the_invariants(toy, model: nn.Module, options: dict) -> None:  # type: ignore[type-arg]
    clips, labels = toy.clips[:3], toy.labels[:3]
    attack = EOT(model, PRESET, draws=3, steps=4, alpha=2.5 * (4 / 255) / 4, **options)
    adv = attack(clips, labels)
    assert float((adv - clips).abs().max()) <= attack.eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - clips).abs().max()) > 0


def test_static_option_is_one_image_for_all_frames(toy, model: nn.Module) -> None:
    clips = toy.clips[:2].clamp(0.1, 0.9)  # away from 0 and 1: no clamp breaks the sharing
    adv = EOT(model, PRESET, draws=2, steps=3, loss="vote", static=True)(clips, toy.labels[:2])
    delta = adv - clips
    assert torch.allclose(delta, delta[:, :, :1].expand_as(delta), atol=1e-6)


def test_patience_freezes_fooled_clips(toy, model: nn.Module) -> None:
    """A clip whose copies are all fooled stops moving after ``patience`` steps."""
    clips = toy.clips[:2]
    with torch.no_grad():
        wrong = model(clips).argsort(dim=1)[:, 0]
    attack = EOT(model, PRESET, draws=2, steps=5, loss="cw", patience=1, record_at=(1, 5))
    attack(clips, wrong)
    assert torch.equal(attack.trajectory[1], attack.trajectory[5])


def test_bad_options() -> None:
    model = nn.Linear(1, 1)
    for kwargs in ({"schedule": "linear"}, {"momentum": -0.1}, {"restarts": 0},
                   {"patience": 0}, {"loss": "hinge"}):  # fmt: skip
        with pytest.raises(ValueError):
            EOT(model, **kwargs)  # type: ignore[arg-type]


class FrameZero(nn.Module):
    """Classifies from the frame at position 0 only: class 1 when its mean is over 0.5.
    Algorithm 1 never leaves frame 0 at position 0, so no shuffled copy sees it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x[:, :, 0].mean(dim=(1, 2, 3)) - 0.5
        return torch.stack([-50 * f, 50 * f], dim=1)


@pytest.mark.parametrize("loss", ["vote", "ce_mean"])  # eot_flag, eot_flag_ce
def test_include_identity_fools_the_unshuffled_prediction(loss: str) -> None:
    clips = torch.full((2, 3, 8, 4, 4), 0.495)
    labels = torch.zeros(2, dtype=torch.int64)
    model = FrameZero()
    plain = EOT(model, PRESET, draws=4, steps=10, loss=loss, kappa=2.0)(clips, labels)
    flag = EOT(model, PRESET, draws=4, steps=10, loss=loss, kappa=2.0, include_identity=True)
    adv = flag(clips, labels)
    with torch.no_grad():
        assert model(plain).argmax(1).tolist() == [0, 0]  # the unshuffled clip untouched
        assert model(adv).argmax(1).tolist() == [1, 1]
        # both fool the shuffled copies (position 0 holds frame 1 or 2)
        assert model(plain[:, :, 1:]).argmax(1).tolist() == [1, 1]


def test_include_identity_gradient_adds_the_identity_copy(toy, model: nn.Module) -> None:
    clips, labels = toy.clips[:2], toy.labels[:2]
    base = _grad(EOT(model, PRESET, draws=3, loss="vote", kappa=2.0), clips, labels)
    attack = EOT(model, PRESET, draws=3, loss="vote", kappa=2.0, include_identity=True,
                 identity_weight=0.5)  # fmt: skip
    both = _grad(attack, clips, labels)
    with attack_mode(model), torch.enable_grad():
        x = clips.clone().requires_grad_(True)
        logits = model(x)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        (ident,) = torch.autograd.grad(0.5 * (other.max(1).values - true).clamp(max=2).sum(), x)
    assert float(ident.abs().sum()) > 0
    assert torch.allclose(both, base + ident, atol=1e-6)


def test_include_identity_with_a_mean_logit_loss_adds_the_copys_cross_entropy(
    toy, model: nn.Module
) -> None:
    """``ce_mean`` + the identity copy (``eot_flag_ce``): the copy's own cross-entropy,
    not part of the mean, is added to the mean-logit gradient."""
    clips, labels = toy.clips[:2], toy.labels[:2]
    base = _grad(EOT(model, PRESET, draws=3, loss="ce_mean"), clips, labels)
    attack = EOT(model, PRESET, draws=3, loss="ce_mean", include_identity=True,
                 identity_weight=0.5)  # fmt: skip
    both = _grad(attack, clips, labels)
    with attack_mode(model), torch.enable_grad():
        x = clips.clone().requires_grad_(True)
        value = 0.5 * F.cross_entropy(model(x), labels, reduction="sum")
        (ident,) = torch.autograd.grad(value, x)
    assert float(ident.abs().sum()) > 0
    assert torch.allclose(both, base + ident, atol=1e-6)


def _spread(model: nn.Module, adv: torch.Tensor) -> float:
    idx = shuffle_indices(adv.shape[2], PRESET.h1, PRESET.h2, 16, generator=make_generator(3))
    with torch.no_grad():
        probs = torch.stack([model(adv[:, :, row]).softmax(-1) for row in idx] + [
            model(adv).softmax(-1)])  # fmt: skip
    return float((probs - probs.mean(0)).square().sum(-1).mean())


def test_agree_lowers_the_copies_spread(toy, model: nn.Module) -> None:
    clips, labels = toy.clips[:8], toy.labels[:8]
    kw = {"draws": 4, "steps": 10, "loss": "vote", "kappa": 2.0, "include_identity": True,
          "eps": 8 / 255, "alpha": 2.5 * (8 / 255) / 10}  # fmt: skip
    loose = EOT(model, PRESET, **kw)(clips, labels)  # type: ignore[arg-type]
    tight = EOT(model, PRESET, agree=50.0, **kw)(clips, labels)  # type: ignore[arg-type]
    assert _spread(model, tight) < 0.75 * _spread(model, loose)  # measured 0.11 vs 0.20
    with pytest.raises(ValueError, match="agree"):
        EOT(model, PRESET, agree=-1.0)
