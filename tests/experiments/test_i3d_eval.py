"""real-set and analyze i3d: plumbing on a tiny random-weight i3d_inception and real
(synthetic-content) FFV1 windows; the records' summary on hand-made records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from service.commands.real_set import RealSetConfig, choose_windows
from service.commands.real_set import run as real_set
from service.research.experiments.i3d_eval import I3DEvalConfig, read_records, summarize
from service.research.experiments.i3d_eval import run as i3d_eval
from tests.media import synthetic_frames, write_video


def test_choose_windows_spreads_over_each_source() -> None:
    files = [f"a_{s:05d}.mkv" for s in range(0, 320, 32)] + ["b_00000.mkv", "b_00032.mkv"]
    picked = choose_windows(files, 3)
    assert picked == ["a_00000.mkv", "a_00128.mkv", "a_00288.mkv", "b_00000.mkv", "b_00032.mkv"]
    assert choose_windows(files, 1) == ["a_00000.mkv", "b_00000.mkv"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.models.families import build_family

    root = tmp_path_factory.mktemp("real_set")
    net = build_family("i3d_inception", clip_len=8, crop_size=32, seed=0).net
    torch.save({"state_dict": net.state_dict()}, root / "weights.pt")
    clips = root / "clips"
    clips.mkdir()
    for k, name in enumerate(["vid_00000.mkv", "vid_00008.mkv", "other_00000.mkv"]):
        frames = synthetic_frames(8, 48, 64, seed=k)
        write_video(clips / name, frames, "matroska", "ffv1", pix_fmt="yuv420p")
    cfg = RealSetConfig(weights=str(root / "weights.pt"), clips_dir=str(clips), clip_len=8,
                        crop_size=32, per_source=2, out=str(root / "set"))  # fmt: skip
    assert real_set(cfg) == 0
    return root / "set"


def test_real_set_labels_are_the_models_own_top1(tiny_set: Path) -> None:
    from service.models.checkpoints import load_checkpoint

    model, ckpt = load_checkpoint(tiny_set / "model.pt")
    assert ckpt["arch"] == "i3d_inception" and (ckpt["clip_len"], ckpt["crop_size"]) == (8, 32)
    preset = json.loads((tiny_set / "model.pt.preset.json").read_text())["preset"]
    assert (preset["h1"], preset["h2"], preset["ensemble"]) == (3, 4, 10)  # the paper's I3D
    with open(tiny_set / "data" / "clips.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["window"] for r in rows] == ["other_00000.mkv", "vid_00000.mkv", "vid_00008.mkv"]
    for row in rows:
        import numpy as np

        x = torch.from_numpy(np.load(tiny_set / "data" / row["file"]))
        with torch.no_grad():
            top = int(model(x.permute(3, 0, 1, 2).float().div(255)[None]).argmax())
        assert top == int(row["label_index"]) and row["label"] == ckpt["labels"][top]


def test_analyze_i3d_records_resume_and_summary(tiny_set: Path, tmp_path: Path) -> None:
    cfg = I3DEvalConfig(checkpoint=str(tiny_set / "model.pt"), data=str(tiny_set / "data"),
                        out=str(tmp_path), threads=1, no_progress=True, first=2,
                        phases=["clean", "ifgsm"], ofa_frame=2)  # fmt: skip
    assert i3d_eval(cfg) == 0
    records = read_records(tmp_path / "records.jsonl")
    # the run order takes every source's first window before any second one
    assert sorted(r["clip"] for r in records if r["phase"] == "clean") == [0, 1]
    assert all(r["undefended"] for r in records if r["phase"] == "clean")  # own top-1
    ifgsm = [r for r in records if r["phase"] == "ifgsm"]
    assert len(ifgsm) == 2 and all(r["linf_255"] <= 4.0 + 1e-3 for r in ifgsm)
    assert i3d_eval(cfg) == 0  # resumed: nothing recomputed
    assert read_records(tmp_path / "records.jsonl") == records
    cfg.report_only, cfg.phases = True, ["ofa"]
    assert i3d_eval(cfg) == 0  # the report only: no OFA computed
    assert read_records(tmp_path / "records.jsonl") == records
    res = json.loads((tmp_path / "i3d.json").read_text())
    assert res["clips"] == 2 and res["size"] == [8, 32, 32]
    assert "own top-1" in (tmp_path / "i3d.md").read_text()


def test_summary_worst_case_and_trajectories() -> None:
    cfg = I3DEvalConfig.__new__(I3DEvalConfig)
    cfg.uniform_positions, cfg.phases = [0], ["eot_vote", "eot_cw"]
    traj = {"1": True, "10": False}
    records = [
        {"phase": "eot_vote", "clip": 0, "defended": True, "undefended": True, "trajectory": traj},
        {"phase": "eot_vote", "clip": 1, "defended": True, "undefended": False, "trajectory": traj},
        {"phase": "eot_cw", "clip": 0, "defended": False, "undefended": True, "trajectory": traj},
    ]
    res = summarize(records, cfg)
    worst = [r for r in res["rows"] if r["row"].startswith("EOT worst")][0]
    assert (worst["correct"], worst["n"]) == (0, 1)  # clip 0 only: both variants finished it
    assert res["eot_clips"] == [0]
    vote = res["trajectories"]["eot_vote"]
    assert (vote["1"]["correct"], vote["10"]["correct"], vote["10"]["n"]) == (2, 0, 2)


def test_start_leaves_the_first_clips_to_another_process(tiny_set: Path, tmp_path: Path) -> None:
    cfg = I3DEvalConfig(checkpoint=str(tiny_set / "model.pt"), data=str(tiny_set / "data"),
                        out=str(tmp_path), threads=1, no_progress=True, first=2, start=1,
                        phases=["clean"])  # fmt: skip
    assert i3d_eval(cfg) == 0
    assert [r["clip"] for r in read_records(tmp_path / "records.jsonl")] == [1]
    with pytest.raises(ValueError, match="--start"):
        I3DEvalConfig(checkpoint="m", data="d", start=-1)


def _records(n: int, clean_defended: int, survives: int) -> list[dict]:
    """``n`` clips: the clean vote right on the first ``clean_defended``; the vote right
    after transfer I-FGSM and after EOT on the first ``survives``."""
    recs: list[dict] = []
    for k in range(n):
        recs.append(
            {
                "phase": "clean",
                "clip": k,
                "undefended": True,
                "defended": k < clean_defended,
                "uniformized": [True],
                "permuted": [True],
            }
        )
        recs.append({"phase": "ifgsm", "clip": k, "undefended": False, "defended": k < survives})
        recs.append(
            {
                "phase": "eot_vote",
                "clip": k,
                "undefended": False,
                "defended": k < survives,
                "trajectory": {"5": k < survives},
            }
        )
    return recs  # fmt: skip


@pytest.mark.parametrize(
    ("clean_defended", "survives", "code"),
    [(16, 0, "does_not_protect"), (16, 16, "protects"), (8, 0, "needs_motion"),
     (16, 6, "cannot_tell")],
)  # fmt: skip
def test_summary_carries_the_audit_verdict(clean_defended: int, survives: int, code: str) -> None:
    res = summarize(
        _records(16, clean_defended, survives), I3DEvalConfig(checkpoint="m.pt", data="d")
    )
    assert res["verdict"]["code"] == code
    assert res["verdict"]["clips"] == 16
    assert res["rows"][-1]["correct"] == survives


def test_no_verdict_without_an_adaptive_attack() -> None:
    recs = [r for r in _records(4, 4, 0) if r["phase"] != "eot_vote"]
    assert summarize(recs, I3DEvalConfig(checkpoint="m.pt", data="d"))["verdict"] is None


def test_trajectories_keep_the_steps_every_clip_recorded() -> None:
    """A run resumed with another --record-at: the curve has the steps all clips share."""
    recs = _records(2, 2, 0)
    recs[2]["trajectory"] = {"1": True, "5": False, "10": False}
    recs[5]["trajectory"] = {"5": False, "10": True}
    curve = summarize(recs, I3DEvalConfig(checkpoint="m.pt", data="d"))["trajectories"]["eot_vote"]
    assert list(curve) == ["5", "10"]
    assert (curve["10"]["correct"], curve["10"]["n"]) == (1, 2)
