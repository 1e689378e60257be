"""``shuffleguard tune``: the selection rules and the preset it writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from service.cli import main
from service.research.experiments.tune import choose_cell, choose_ensemble


def test_choose_cell_maximises_the_worst_case_above_the_clean_floor() -> None:
    cells = [
        {"h1": 1, "h2": 1, "clean": 1.00, "worst": 0.30},
        {"h1": 4, "h2": 2, "clean": 0.99, "worst": 0.50},
        {"h1": 3, "h2": 2, "clean": 1.00, "worst": 0.50},
        {"h1": 8, "h2": 1, "clean": 0.50, "worst": 0.90},  # under the clean floor
    ]
    assert choose_cell(cells, clean_floor=0.95) is cells[2]  # tie on worst: higher clean
    assert choose_cell(cells, clean_floor=0.40) is cells[3]
    tied = [
        {"h1": 3, "h2": 1, "clean": 1.0, "worst": 0.5},
        {"h1": 2, "h2": 4, "clean": 1.0, "worst": 0.5},
    ]
    assert choose_cell(tied, 0.9) is tied[1]  # then the smaller h1


def test_choose_ensemble_takes_the_smallest_within_tolerance() -> None:
    rows = [
        {"ensemble": 1, "clean": 0.90, "worst": 0.40},
        {"ensemble": 5, "clean": 0.99, "worst": 0.49},
        {"ensemble": 10, "clean": 1.00, "worst": 0.50},
    ]
    assert choose_ensemble(rows, 0.01)["ensemble"] == 5
    assert choose_ensemble(rows, 0.0)["ensemble"] == 10


def test_tune_writes_the_preset(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(tiny.checkpoint.read_bytes())
    meta = tmp_path / "toy.meta.json"
    meta.write_text(json.dumps({"name": "toy", "preset": {"h1": 3, "h2": 1, "ensemble": 10}}))
    out = tmp_path / "tune"
    argv = [
        "tune", "--checkpoint", str(ckpt), "--data", str(tiny.data), "--split", "train",
        "--clips", "2", "--h1s", "1", "2", "--h2s", "1", "--ensembles", "1", "3",
        "--grid-ensemble", "3", "--out", str(out), "--archive-meta", str(meta),
        "--threads", "1", "--no-progress",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    assert main(argv) == 0
    sidecar = json.loads(Path(str(ckpt) + ".preset.json").read_text())
    res = json.loads((out / "fig10.json").read_text())
    assert sidecar["preset"] == res["preset"]
    assert sidecar["preset"]["h2"] == 1 and sidecar["preset"]["h1"] in (1, 2)
    assert sidecar["preset"]["ensemble"] in (1, 3)
    assert sidecar["command"] == res["command"] and sidecar["command"].startswith(
        "shuffleguard tune"
    )
    assert json.loads(meta.read_text())["preset"] == res["preset"]
    assert json.loads(meta.read_text())["name"] == "toy"
    assert len(res["cells"]) == 2 and all(
        {"clean", "ifgsm", "eot", "worst"} <= set(c) for c in res["cells"]
    )
    for name in ("fig10", "table4"):
        for ext in ("csv", "json", "md", "png"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    # evaluate picks the sidecar up
    from service.research.experiments.evaluate import preset_for_checkpoint

    preset, source = preset_for_checkpoint(ckpt)
    assert preset.to_dict() == res["preset"] and "tune" in source
    # --no-preset leaves both files alone
    Path(str(ckpt) + ".preset.json").unlink()
    assert main([*argv, "--no-preset", "--out", str(tmp_path / "again")]) == 0
    torch.set_num_threads(threads)
    assert not Path(str(ckpt) + ".preset.json").exists()
