"""bench runtime: each way runs the same model; agreement measured against eager."""

from __future__ import annotations

import pytest

from service.bench.runtime import RuntimeBenchConfig, bench, markdown


def test_ways_agree_with_eager_on_a_tiny_random_i3d(tmp_path) -> None:  # noqa: ANN001
    args = RuntimeBenchConfig(random_init=True, clip_len=8, crop_size=32, clips=2,
                              clips_dir=str(tmp_path / "none"),
                              ways=["eager", "channels_last", "bf16", "export"])  # fmt: skip
    res = bench(args)
    ways = res["ways"]
    assert res["clips"] == 2 and res["clip_source"] == "seeded random clips"
    assert ways["eager"]["max_abs_diff"] == 0.0 and ways["eager"]["top1_agree"] == 1.0
    # float32 reorderings stay at float32 rounding; bf16 does not
    assert ways["channels_last"]["max_abs_diff"] < 1e-4
    assert ways["export"]["max_abs_diff"] < 1e-4
    assert ways["bf16"]["max_abs_diff"] > ways["export"]["max_abs_diff"]
    assert all(len(v["wall_s"]) == 2 and v["wall_p50_s"] > 0 for v in ways.values())
    res.update(arch="i3d_inception", size="8x32x32", threads=1)
    assert "| bf16 |" in markdown(res, args.command())


def test_eager_is_required() -> None:
    with pytest.raises(ValueError, match="eager"):
        RuntimeBenchConfig(ways=["bf16"])
