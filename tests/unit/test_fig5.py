"""Fig. 5 analysis: the chunk-shuffle transform and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from service.cli import main
from service.research.experiments.fig5 import chunk_shuffle_transform


def _frame_ids(x: torch.Tensor) -> torch.Tensor:
    """Frame numbers ``[B, T]`` of a batch built with frame t filled with value t."""
    return x[:, 0, :, 0, 0].round().long()


def test_chunk_shuffle_transform_permutes_within_chunks() -> None:
    B, T = 16, 8
    x = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1).expand(B, 3, T, 2, 2).clone()
    same = chunk_shuffle_transform(1, torch.Generator().manual_seed(0))(x)
    assert torch.equal(same, x)
    for chunk in (2, 4, 8):
        out = chunk_shuffle_transform(chunk, torch.Generator().manual_seed(chunk))(x)
        assert out.shape == x.shape
        ids = _frame_ids(out)
        # every chunk holds exactly its own frames, in some order
        for start in range(0, T, chunk):
            block = ids[:, start : start + chunk].sort(dim=1).values
            assert torch.equal(block, torch.arange(start, start + chunk).expand(B, -1))
        # a fresh draw per clip, and not the identity
        assert len({tuple(r.tolist()) for r in ids}) > 1
        assert not torch.equal(ids, torch.arange(T).expand(B, -1))
    # reproducible from the generator's seed
    a = chunk_shuffle_transform(4, torch.Generator().manual_seed(7))(x)
    b = chunk_shuffle_transform(4, torch.Generator().manual_seed(7))(x)
    assert torch.equal(a, b)


def test_fig5_smoke_writes_all_outputs(tmp_path: Path) -> None:
    out = tmp_path / "docs"
    argv = ["analyze", "fig5", "--out", str(out), "--count", "32", "--epochs", "1"]
    argv += ["--size", "16", "--base-width", "4", "--batch-size", "8", "--draws", "2"]
    threads = torch.get_num_threads()
    assert main([*argv, "--threads", "1", "--no-progress"]) == 0
    torch.set_num_threads(threads)
    for name in ("fig5.csv", "fig5.json", "fig5.md", "fig5.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "fig5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(out / "fig5.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["dataset"]), int(r["chunk_size"])) for r in rows] == [
        (d, n) for d in (1, 2, 3) for n in (1, 2, 4, 8)
    ]
    assert all(0.0 <= float(r["accuracy_mean"]) <= 1.0 for r in rows)
    assert {int(r["draws"]) for r in rows if r["chunk_size"] != "1"} == {2}

    results = json.loads((out / "fig5.json").read_text())
    assert results["config"]["count"] == 32 and len(results["models"]) == 3
    assert results["command"].startswith("shuffleguard analyze fig5 --out ")
    md = (out / "fig5.md").read_text()
    assert results["command"] in md and "28.7%" in md and "12.5%" in md
    assert "| 3 | motion only |" in md
