"""bench serve's i3d size: its options, the refusal without weights, the stage timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.bench.serve import STAGES, ServeBenchConfig, build_i3d_archive, summarize_mode


def test_i3d_size_is_a_choice_and_needs_the_converted_weights(tmp_path: Path) -> None:
    args = ServeBenchConfig(sizes=["i3d"], i3d_weights=tmp_path / "none.pt")
    assert args.sizes == ["i3d"] and "--sizes i3d" in args.command()
    with pytest.raises(SystemExit, match="shuffleguard weights i3d"):
        build_i3d_archive(tmp_path, args.i3d_weights)
    with pytest.raises(ValueError, match="unknown"):
        ServeBenchConfig(sizes=["huge"])


def test_stage_medians_per_mode() -> None:
    timings = [
        dict(zip(STAGES, row, strict=True))
        for row in (
            (1.0, 2.0, 10.0, 0.1, 13.1),
            (3.0, 2.0, 30.0, 0.1, 35.1),
            (5.0, 2.0, 20.0, 0.1, 27.1),
        )
    ]
    records = [{"ms": t["total"], "bytes": 1.0, "votes_cast": 10, "timings_ms": t} for t in timings]
    stages = summarize_mode(records)["stages_p50_ms"]
    assert list(stages) == list(STAGES)
    assert stages["decode"] == 3.0 and stages["backend"] == 20.0 and stages["total"] == 27.1
