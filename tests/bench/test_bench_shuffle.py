"""The shuffle benchmark runs, and its per-frame baseline is a faithful Algorithm 1."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from service.bench.shuffle import bench_size, shuffle_per_frame
from service.cli import main
from service.core.shuffle import source_window


def test_per_frame_reference_follows_algorithm_1() -> None:
    T, h1, h2 = 13, 3, 2
    clip = torch.arange(T).view(T, 1, 1, 1).expand(T, 2, 2, 3).contiguous()
    out = shuffle_per_frame(clip, h1, h2, 20, random.Random(0))
    for k in range(20):
        src = out[k, :, 0, 0, 0].tolist()
        for t in range(0, T, h2):
            lo, hi = source_window(t, T, h1, h2)
            assert lo <= src[t] <= hi and src[t] != t
            assert src[t : t + h2] == list(range(src[t], src[t] + len(src[t : t + h2])))


def test_bench_size_reports_ratios() -> None:
    res = bench_size(
        T=8, size=8, n=3, h1=2, h2=1, repeats=2, warmup=1, device=torch.device("cpu"), seed=0
    )
    assert set(res["median_s"]) == {"blocks", "vectorized", "per_frame", "bare_copy"}
    assert res["vectorized_over_bare_copy"] > 0 and res["per_frame_over_vectorized"] > 0
    assert res["blocks_over_bare_copy"] > 0 and res["threads"] == torch.get_num_threads()


def test_bench_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "shuffle",
            "--frames",
            "8",
            "--sizes",
            "8",
            "--repeats",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [(r["size"], r["threads"]) for r in rows] == [(8, 1), (8, 2)]
