"""The decode benchmark runs both ways on one upload and checks they agree."""

from __future__ import annotations

import pytest

from service.bench.decode import DecodeBenchConfig, bench_clip
from tests import media


def test_bench_clip_times_both_ways_and_counts_frames() -> None:
    frames = media.synthetic_frames(40, 64, 80, seed=1)
    data = media.write_video(None, frames, "avi", "mjpeg", pix_fmt="yuvj420p")
    res = bench_clip(data, 8, 2, 32, repeats=2, warmup=0, seed=0)
    assert set(res["median_ms"]) == set(res["median_cpu_ms"]) == {"sequential", "seek"}
    assert res["frames_decoded"] == {"sequential": 27, "seek": 8}  # MJPEG: every frame a key
    assert res["seek_pass"] == "skipped" and res["codec"] == "mjpeg"
    assert res["sequential_over_seek"] > 0 and res["cpu_sequential_over_seek"] > 0


@pytest.mark.parametrize("bad", ["32", "0x2", "axb"])
def test_samplings_are_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="--samplings"):
        DecodeBenchConfig(samplings=[bad])
