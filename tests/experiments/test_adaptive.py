"""Adaptive EOT against each defense row: invariants, equivalences, gradients through D."""

from __future__ import annotations

import pytest
import torch

from service.core.presets import ShufflePreset
from service.research.robustness.attacks import EOT, IFGSM
from service.research.robustness.denoise import DnCNN
from service.research.robustness.registry import DEFENSE_ROWS, Budget, RowContext, eot_for_row

AdaptiveEOT = EOT  # the one EOT: shuffles, noise and a denoiser


def _ctx(model, preset, sigma, denoiser=None):  # type: ignore[no-untyped-def]
    return RowContext(model, 8, preset, sigma=sigma, denoiser=denoiser)


@pytest.fixture(scope="module")
def setup(tiny):  # type: ignore[no-untyped-def]
    from service.models.checkpoints import load_checkpoint
    from service.research.experiments.common import load_split, stratified_subset, to_float

    model, _ = load_checkpoint(tiny.checkpoint)
    data = load_split(tiny.data, "test")
    sub = data.take(stratified_subset(data.labels, 4, 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        denoiser = DnCNN(depth=3, features=8).eval()
    return model, to_float(sub.clips), sub.labels, denoiser


@pytest.mark.parametrize("row", list(DEFENSE_ROWS))
def test_every_row_attack_keeps_the_invariants(setup, row: str) -> None:  # type: ignore[no-untyped-def]
    model, x, y, denoiser = setup
    model.train()
    denoiser.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = eot_for_row(
        row,
        model,
        _ctx(model, ShufflePreset(2, 1), 0.25, denoiser),
        Budget(steps=3, eot_draws=2),
        batch_size=None,
    )
    adv = attack(x, y)
    assert adv.shape == x.shape and not adv.requires_grad
    assert float((adv - x).abs().max()) <= attack.eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - x).abs().max()) > 0  # it moved
    # flags restored, nothing written to the weights or BN statistics
    assert model.training and denoiser.training
    assert all(p.grad is None for p in [*model.parameters(), *denoiser.parameters()])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    denoiser.eval()
    rnd = DEFENSE_ROWS[row].randomness
    shuffles, noise, denoised = rnd.shuffles, rnd.noise, rnd.denoiser
    assert (attack.preset.h1 > 0) == shuffles and (attack.sigma is not None) == noise
    assert attack.denoised == denoised


def test_shuffle_only_is_the_library_eot(setup) -> None:  # type: ignore[no-untyped-def]
    model, x, y, _ = setup
    preset = ShufflePreset(2, 1)
    ours = AdaptiveEOT(model, preset=preset, steps=5, seed=3)(x, y)
    library = EOT(model, preset, steps=5, seed=3)(x, y)
    assert torch.equal(ours, library)


def test_identity_row_is_ifgsm_through_the_eot_path(setup) -> None:  # type: ignore[no-untyped-def]
    model, x, y, _ = setup
    x, y = x[:2], y[:2]
    ctx = _ctx(model, ShufflePreset(2, 1), 0.25)
    eot = eot_for_row("none", model, ctx, Budget(), batch_size=None)(x, y)
    ifgsm = IFGSM(model)(x, y)
    # The same maths (mean of 10 identical copies); only float summation order differs.
    assert float((eot == ifgsm).float().mean()) > 0.99
    with torch.no_grad():
        assert (
            int((model(eot).argmax(1) != y).sum()) >= int((model(ifgsm).argmax(1) != y).sum()) - 1
        )


def test_gradient_flows_through_the_denoiser(setup) -> None:  # type: ignore[no-untyped-def]
    model, x, y, denoiser = setup
    kw = {"preset": None, "sigma": 0.25, "seed": 0}
    plain = AdaptiveEOT(model, **kw)
    through = AdaptiveEOT(model, denoiser=denoiser, **kw)
    for a in (plain, through):
        a.generator = torch.Generator().manual_seed(0)
    g_plain = plain.input_grad(x[:1], y[:1])
    g_through = through.input_grad(x[:1], y[:1])
    assert float(g_through.abs().sum()) > 0
    assert not torch.allclose(g_plain, g_through)  # the denoiser changes the gradient


def test_noise_draws_are_seeded(setup) -> None:  # type: ignore[no-untyped-def]
    model, x, y, _ = setup
    a = AdaptiveEOT(model, sigma=0.25, steps=3, seed=1)(x[:2], y[:2])
    b = AdaptiveEOT(model, sigma=0.25, steps=3, seed=1)(x[:2], y[:2])
    c = AdaptiveEOT(model, sigma=0.25, steps=3, seed=2)(x[:2], y[:2])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_clip_generators_match_one_clip_calls(setup) -> None:  # type: ignore[no-untyped-def]
    model, x, y, denoiser = setup
    kw = {"preset": ShufflePreset(2, 1), "sigma": 0.25, "denoiser": denoiser, "steps": 4}

    def gens() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(10 + b) for b in range(3)]

    batched = AdaptiveEOT(model, **kw).set_clip_generators(gens())(x[:3], y[:3])
    for b, g in enumerate(gens()):
        alone = AdaptiveEOT(model, **kw).set_clip_generators([g])(x[b : b + 1], y[b : b + 1])
        # the same draws; only batched kernels' round-off may differ
        assert float((alone == batched[b : b + 1]).float().mean()) > 0.99
    with pytest.raises(ValueError, match="generators"):
        AdaptiveEOT(model, **kw).set_clip_generators(gens())(x[:2], y[:2])


def test_bad_arguments() -> None:
    model = torch.nn.Conv3d(3, 1, 1)
    with pytest.raises(ValueError):
        AdaptiveEOT(model, denoiser=DnCNN(depth=2, features=2))  # denoiser without sigma
    with pytest.raises(KeyError):
        eot_for_row("nope", model, _ctx(model, ShufflePreset(1, 1), 0.1), Budget(), batch_size=None)
    with pytest.raises(ValueError):
        eot_for_row(
            "denoise", model, _ctx(model, ShufflePreset(1, 1), 0.1), Budget(), batch_size=None
        )
