"""The command line derived from the typed configs: options, help, validation, round trip."""

from __future__ import annotations

import shlex

import pytest

from service.cli import ANALYSES, EXPERIMENTS, main, spread_lists
from service.research.experiments.evaluate import EvalConfig
from service.research.experiments.tune import TuneConfig


@pytest.mark.parametrize(
    "argv", [[name] for name in EXPERIMENTS] + [["analyze", name] for name in ANALYSES]
)
def test_every_experiment_command_has_help(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--out" in out and "Usage" in out


def test_list_options_take_several_values() -> None:
    argv = ["evaluate", "--seeds", "0", "1", "2", "--clips", "4", "--attacks", "ifgsm", "eot"]
    assert spread_lists(argv, {"--seeds", "--attacks"}) == [
        "evaluate", "--seeds", "0", "--seeds", "1", "--seeds", "2", "--clips", "4",
        "--attacks", "ifgsm", "--attacks", "eot",
    ]  # fmt: skip


def test_validation_errors_name_the_option() -> None:
    with pytest.raises(SystemExit, match="--clips must be >= 1"):
        main(["evaluate", "--checkpoint", "x", "--data", "y", "--clips", "0"])
    with pytest.raises(SystemExit, match="--defenses: unknown"):
        main(["evaluate", "--checkpoint", "x", "--data", "y", "--defenses", "nope"])


def test_produced_by_shows_what_changes_a_result() -> None:
    cfg = EvalConfig(checkpoint="m.ckpt", data="d", seeds=[0, 1], sigma=0.5, threads=1)
    assert cfg.command() == (
        "shuffleguard evaluate --checkpoint m.ckpt --data d --out docs/results/table5"
        " --seeds 0 1 --sigma 0.5 --device cpu"
    )
    reduced = EvalConfig(checkpoint="m", data="d", flicker_steps=100)
    assert "--flicker-steps 100" in reduced.command()
    assert reduced.reduced == ["flicker_steps=100 < 2500"]
    tune = TuneConfig(checkpoint="m", data="d", h1s=[2, 1, 2], no_preset=True)
    words = shlex.split(tune.command())
    assert words[words.index("--h1s") + 1 : words.index("--h1s") + 3] == ["1", "2"]
    assert "--split" not in words and words[-1] == "--no-preset"  # val is tune's default
