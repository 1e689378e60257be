"""A defense row added through the registry alone shows up in evaluate's table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from service.cli import main
from service.core.presets import ShufflePreset
from service.research.robustness.registry import (
    DEFENSE_ROWS,
    DefenseRow,
    Randomness,
    RowContext,
    register_row,
)


class TimeReversed:
    """Toy row: the undefended model on the clip played backwards (no randomness)."""

    name = "reversed"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def vote(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, None]:
        return self.model(videos.flip(2)).argmax(dim=1), None

    def predict(
        self, videos: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.vote(videos, generator)[0]


@pytest.fixture
def toy_row() -> Iterator[DefenseRow]:
    row = register_row(
        DefenseRow("reversed", "time-reversed", 42, Randomness(), lambda c: TimeReversed(c.model))
    )
    yield row
    del DEFENSE_ROWS[row.name]


def test_registered_row_appears_in_the_table(tiny, tmp_path: Path, toy_row: DefenseRow) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "toy"
    argv = [
        "evaluate", "--checkpoint", str(tiny.checkpoint), "--data", str(tiny.data),
        "--clips", "2", "--seeds", "0", "--attacks", "ifgsm", "--defenses", "none", "reversed",
        "--h1", "2", "--h2", "1", "--out", str(out), "--threads", "1", "--no-progress",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    assert main(argv) == 0
    torch.set_num_threads(threads)
    summary = json.loads((out / "table5.json").read_text())
    assert summary["rows"] == ["none", "reversed"]
    cells = {(c["defense"], c["attack"]): c for c in summary["cells"]}
    assert cells[("reversed", "clean")]["n"] == 2 and cells[("reversed", "ifgsm")]["complete"]
    assert "| time-reversed |" in (out / "table5.md").read_text()
    # the row's records are the model on the reversed clip
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert {r["defense"] for r in recs} == {"none", "reversed"}


def test_duplicate_seed_ids_are_refused(toy_row: DefenseRow) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_row(DefenseRow("other", "other", 42, Randomness(), toy_row.build))


def test_row_context_builds_every_registered_row() -> None:
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 3, 4, 2, 2))
    ctx = RowContext(model, 3, ShufflePreset(1, 1, 3))
    names = [n for n, r in DEFENSE_ROWS.items() if not r.needs_denoiser]
    for name in names:
        labels = DEFENSE_ROWS[name].build(ctx).predict(torch.rand(2, 3, 4, 2, 2))
        assert labels.shape == (2,)
