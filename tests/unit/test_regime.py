"""`shuffleguard analyze regime`: collects the per-model reports into the regime map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from service.core.stats import wilson
from service.research.experiments.regime import PAPER, RegimeConfig, load_run

CELLS = {
    ("none", "clean"): (1.0, 64),
    ("none", "ifgsm"): (0.0625, 64),
    ("none", "eot"): (0.0625, 64),
    ("shuffle", "clean"): (0.984375, 64),
    ("shuffle", "ifgsm"): (0.75, 64),
    ("shuffle", "eot"): (0.5, 64),
}


def _write_run(root: Path, uniformized: float, eot: float, *, frames: int = 16) -> Path:
    """The three reports `analyze regime` reads, in the shapes their commands write."""
    (root / "table1").mkdir(parents=True)
    (root / "fig2").mkdir()
    (root / "table5").mkdir()
    (root / "table1" / "table1.json").write_text(json.dumps({
        "command": "shuffleguard analyze table1 --checkpoint m.ckpt", "clips": 200,
        "original_accuracy": 1.0, "uniformized_mean": uniformized,
    }))  # fmt: skip
    (root / "fig2" / "fig2.json").write_text(json.dumps({
        "command": "shuffleguard analyze fig2 --checkpoint m.ckpt", "clips": 200, "frames": frames,
        "rows": [
            {"kind": "chunk", "size": 1, "accuracy_mean": 1.0},
            {"kind": "chunk", "size": frames, "accuracy_mean": 0.4},
            {"kind": "row", "size": frames, "accuracy_mean": 0.1},
        ],
    }))  # fmt: skip
    cells = []
    for (row, col), (acc, n) in CELLS.items():
        acc = eot if (row, col) == ("shuffle", "eot") else acc
        low, high = wilson(round(acc * n), n)
        cells.append({"defense": row, "attack": col, "accuracy": acc, "n": n,
                      "wilson_low": low, "wilson_high": high})  # fmt: skip
    (root / "table5" / "table5.json").write_text(json.dumps({
        "command": "shuffleguard evaluate --checkpoint m.ckpt", "cells": cells,
        "config": {"eps": 4 / 255}, "preset": {"h1": 4, "h2": 2, "ensemble": 10},
        "preset_source": "m.ckpt.preset.json (shuffleguard tune)", "model": {"dataset": 1},
        "reduced_strength": [],
    }))  # fmt: skip
    return root


def test_load_run_reads_each_figure_with_its_interval(tmp_path: Path) -> None:
    run = load_run(_write_run(tmp_path / "mix", 0.655, 0.5))
    f = run["figures"]
    assert run["name"] == "mix" and run["preset"] == {"h1": 4, "h2": 2, "ensemble": 10}
    assert f["permuted"]["accuracy"] == 0.4 and f["permuted"]["n"] == 200  # N = T, not N = 1
    # a mean over frames counts as round(mean * n) successes of n
    assert (f["uniformized"]["wilson_low"], f["uniformized"]["wilson_high"]) == wilson(131, 200)
    assert f["shuffle_eot"]["accuracy"] == 0.5 and f["none_ifgsm"]["accuracy"] == 0.0625


def test_load_run_names_what_is_missing(tmp_path: Path) -> None:
    root = _write_run(tmp_path / "m", 0.5, 0.5)
    t5 = json.loads((root / "table5" / "table5.json").read_text())
    t5["cells"] = [c for c in t5["cells"] if c["defense"] != "shuffle"]
    (root / "table5" / "table5.json").write_text(json.dumps(t5))
    with pytest.raises(ValueError, match="shuffle_clean"):
        load_run(root)
    (root / "fig2" / "fig2.json").unlink()
    with pytest.raises(ValueError, match="fig2.json"):
        load_run(root)


def test_config_rejects_mismatched_names() -> None:
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        RegimeConfig(runs=["a"], names=["x", "y"])


def test_cli_writes_the_map_sorted_by_uniformized_accuracy(tmp_path: Path) -> None:
    a = _write_run(tmp_path / "spatial", 0.95, 0.9)
    b = _write_run(tmp_path / "motion", 0.125, 0.3)
    out = tmp_path / "out"
    argv = ["analyze", "regime", "--runs", str(a), str(b), "--names", "d1", "d3", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "regime.json").read_text())
    assert [m["name"] for m in res["models"]] == ["d3", "d1"]
    assert res["paper"] == PAPER
    assert res["command"] == f"shuffleguard analyze regime --runs {a} {b} --names d1 d3 --out {out}"
    assert (out / "regime.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "regime.md").read_text()
    assert "| d3 | 100.0 (94-100) | 12.5 (9-18) |" in md and "| ir-CSN | 100 | 62.3 |" in md
    csv_rows = (out / "regime.csv").read_text().splitlines()
    assert csv_rows[0] == "model,figure,accuracy,wilson_low,wilson_high,n,complete"
    assert len(csv_rows) == 17


def test_a_run_without_eot_or_with_eot_still_running_is_mapped_and_marked(tmp_path: Path) -> None:
    root = _write_run(tmp_path / "partial", 0.6, 0.5)
    t5 = json.loads((root / "table5" / "table5.json").read_text())
    for c in t5["cells"]:
        if (c["defense"], c["attack"]) == ("shuffle", "eot"):
            c["n"], c["complete"] = 12, False
    t5["cells"] = [c for c in t5["cells"] if (c["defense"], c["attack"]) != ("none", "eot")]
    (root / "table5" / "table5.json").write_text(json.dumps(t5))
    run = load_run(root)
    assert "none_eot" not in run["figures"] and run["figures"]["shuffle_eot"]["complete"] is False
    out = tmp_path / "out"
    assert main(["analyze", "regime", "--runs", str(root), "--out", str(out)]) == 0
    md = (out / "regime.md").read_text()
    assert "incomplete (12 clips so far)" in md
    assert "partial,shuffle_eot,0.5000" in (out / "regime.csv").read_text()
