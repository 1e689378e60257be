"""``shuffleguard evaluate``: outputs, resumption, the credibility check, the statistics."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from service.cli import main
from service.core import stats
from service.research.experiments import common
from service.research.experiments.evaluate import EvalConfig
from service.research.experiments.records import Records
from service.research.experiments.table5 import credibility_check, summarize
from service.research.robustness.registry import DEFENSE_ROWS, PAPER_ATTACKS

ROWS = tuple(DEFENSE_ROWS)
COLUMNS = ("clean", *PAPER_ATTACKS)  # evaluate's default columns; the saturated variants are opt-in


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_smoke_writes_every_output(smoke) -> None:  # type: ignore[no-untyped-def]
    out = smoke.out
    for name in ("table5.csv", "table5.json", "table5.md", "table5.png", "per_clip.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "table5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "table5.json").read_text())
    assert summary["rows"] == list(ROWS) and summary["columns"] == list(COLUMNS)
    assert len(summary["cells"]) == len(ROWS) * len(COLUMNS)
    assert all(c["complete"] and c["n"] == 4 for c in summary["cells"])
    # flickering below its 2500 steps: labelled everywhere as a plumbing test
    assert summary["reduced_strength"] == ["flicker_steps=100 < 2500"]
    md = (out / "table5.md").read_text()
    assert "REDUCED STRENGTH" in md and summary["command"] in md
    assert summary["command"].startswith("shuffleguard evaluate --checkpoint ")
    assert "--flicker-steps 100" in summary["command"]
    check = summary["credibility_check"]
    assert check["measured"] and check["pairs"] == 4
    assert "credibility check" in md
    with open(out / "per_clip.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * len(ROWS) * len(COLUMNS)
    adv = [r for r in rows if r["attack"] != "clean"]
    eps = 4 / 255
    for r in adv:
        limit = 0.2 if r["attack"] == "flickering" else eps
        assert float(r["linf"]) <= limit + 1e-6
        assert float(r["attack_seconds"]) >= 0 and r["pred_clean"] != ""
    assert all(float(r["linf"]) == 0 for r in rows if r["attack"] == "clean")
    assert any(float(r["l2"]) > 0 for r in adv)
    shuffle = [r for r in rows if r["defense"] == "shuffle"]
    assert all(0 < float(r["vote_share"]) <= 1 for r in shuffle)
    # accuracy in the table is what the records say
    recs = _records(out / "records.jsonl")
    for c in summary["cells"]:
        mine = [r for r in recs if r["defense"] == c["defense"] and r["attack"] == c["attack"]]
        assert c["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))


def test_rerun_does_no_new_work(smoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "again"
    shutil.copytree(smoke.out, out)
    before = _records(out / "records.jsonl")
    argv = [
        *smoke.argv[: smoke.argv.index("--out")],
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
    ]
    threads = torch.get_num_threads()
    assert main(argv) == 0
    torch.set_num_threads(threads)
    summary = json.loads((out / "table5.json").read_text())
    assert summary["computed_this_run"] == 0
    assert len(_records(out / "records.jsonl")) == len(before)


def test_interrupted_run_resumes_only_the_missing_work(smoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cut"
    shutil.copytree(smoke.out, out)
    path = out / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    # an interruption: the last 3 results never written, the 4th from last cut mid-line
    # (the last four are the shuffle+denoise row's EOT results, one batched attack)
    assert {json.loads(x)["attack"] for x in lines[-4:]} == {"eot"}
    path.write_text("".join(lines[:-4]) + lines[-4][:25])
    argv = [
        *smoke.argv[: smoke.argv.index("--out")],
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
    ]
    threads = torch.get_num_threads()
    assert main(argv) == 0
    torch.set_num_threads(threads)
    summary = json.loads((out / "table5.json").read_text())
    assert summary["computed_this_run"] == 4
    recs = _records(path)
    assert len(recs) == len(lines)
    assert len({Records.key(r) for r in recs}) == len(recs)
    # the recomputed results equal the originals (every draw is seeded per work unit)
    old = {Records.key(json.loads(x)): json.loads(x) for x in lines}
    for r in recs:
        assert r["pred"] == old[Records.key(r)]["pred"]


def test_other_settings_in_the_same_out_are_refused(smoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "clash"
    shutil.copytree(smoke.out, out)
    argv = [*smoke.argv[: smoke.argv.index("--out")], "--out", str(out), "--sigma", "0.5"]
    with pytest.raises(SystemExit, match="other settings"):
        main(argv)


def test_stratified_subset_is_balanced_and_nested() -> None:
    labels = torch.arange(40) % 8
    a = common.stratified_subset(labels, 16, seed=0)
    b = common.stratified_subset(labels, 24, seed=0)
    assert b[:16] == a and len(set(b)) == 24
    assert sorted(labels[a].tolist()) == sorted(list(range(8)) * 2)
    assert common.stratified_subset(labels, 16, seed=1) != a


def test_record_store_drops_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    rec = {"seed": 0, "clip": 1, "attack": "clean", "defense": "none", "pred": 2}
    path.write_text(json.dumps(rec) + "\n" + '{"seed": 0, "cl')
    store = Records(path)
    assert (0, 1, "clean", "none") in store and len(store.records) == 1
    store.add({**rec, "clip": 2})
    store.close()
    assert [json.loads(x)["clip"] for x in path.read_text().splitlines()] == [1, 2]


def _rec(seed: int, clip: int, attack: str, defense: str, correct: bool) -> dict:
    return {
        "seed": seed, "clip": clip, "label": 0, "attack": attack, "defense": defense,
        "pred": 0 if correct else 1, "correct": correct, "abstain": False, "undefended_pred": 0,
        "linf": 0.0, "l2": 0.0, "attack_seconds": 0.0, "defense_seconds": 0.0,
    }  # fmt: skip


def test_credibility_check_compares_eot_identity_with_ifgsm() -> None:
    cfg = EvalConfig(checkpoint="x", data="y", seeds=[0])
    ok = [_rec(0, c, "ifgsm", "none", c < 2) for c in range(4)]
    ok += [_rec(0, c, "eot", "none", c < 1) for c in range(4)]
    res = credibility_check(ok, cfg)
    assert res["passed"] and res["ifgsm_accuracy"] == 0.5 and res["eot_identity_accuracy"] == 0.25
    bad = [_rec(0, c, "ifgsm", "none", False) for c in range(4)]
    bad += [_rec(0, c, "eot", "none", c == 3) for c in range(4)]
    res = credibility_check(bad, cfg)
    assert res["passed"] is False and res["ifgsm_only_fooled"] == [[0, 3]]
    assert credibility_check([], cfg) == {"measured": False, "passed": None}


def test_summary_intervals_over_seeds() -> None:
    cfg = EvalConfig(checkpoint="x", data="y", seeds=[0, 1, 2])
    recs = [_rec(s, c, "clean", "shuffle", c < 2 + s) for s in range(3) for c in range(4)]
    recs += [_rec(s, c, "clean", "none", True) for s in range(3) for c in range(4)]
    out = summarize(recs, cfg, rows=["none", "shuffle"], columns=["clean"], clip_ids=[0, 1, 2, 3])
    cell = next(c for c in out["cells"] if c["defense"] == "shuffle")
    assert cell["per_seed"] == [0.5, 0.75, 1.0] and cell["accuracy"] == pytest.approx(0.75)
    mean, half = stats.mean_ci([0.5, 0.75, 1.0])
    assert cell["ci95_seeds"] == pytest.approx(half) and half == pytest.approx(0.621, abs=1e-3)
    lo, hi = stats.wilson(9, 12)
    assert cell["wilson_low"] == pytest.approx(lo) and lo < 0.75 < hi
    goals = {g["column"]: g for g in out["goals"]}
    assert goals["clean"]["ratio"] == pytest.approx(0.75) and not goals["clean"]["met"]
    assert goals["clean"]["wilson_low"] == pytest.approx(lo) and goals["clean"]["n"] == 12
    partial = summarize(recs[:5], cfg, rows=["shuffle"], columns=["clean"], clip_ids=[0, 1, 2, 3])
    assert not partial["cells"][0]["complete"]


@pytest.mark.slow
def test_full_strength_evaluation(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every row x column at the attacks' full budgets (flickering's 2500 steps too)."""
    argv = [
        "evaluate", "--checkpoint", str(tiny.checkpoint), "--data", str(tiny.data),
        "--denoiser", str(tiny.denoiser), "--clips", "8", "--seeds", "0", "1", "--h1", "2",
        "--h2", "1", "--out", str(tmp_path / "full"), "--threads", "1", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((tmp_path / "full" / "table5.json").read_text())
    assert summary["reduced_strength"] == []
    assert summary["credibility_check"]["passed"]
    assert all(c["complete"] and c["n"] == 16 for c in summary["cells"])


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_an_archive_evaluates_as_its_checkpoint(tiny, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """A .mar loads as the same eager model: same logits, same weights digest, its preset."""
    from service.modelserver.archive import build_mar
    from service.research.experiments.evaluate import preset_for_checkpoint

    model, ckpt = common.load_model(tiny.checkpoint)
    meta = {
        "name": f"tiny_{fmt}",
        "arch": ckpt["arch"],
        "clip_len": ckpt["clip_len"],
        "frame_interval": 1,
        "crop_size": ckpt["crop_size"],
        "labels": ckpt["labels"],
        "preset": {"h1": 3, "h2": 2, "ensemble": 6},
        "train_seed": 3,
        "val_fraction": 0.25,
    }
    mar = build_mar(model, meta, tmp_path, fmt=fmt)
    served, info = common.load_model(mar)
    assert info["model_kwargs"] == {"in_channels": 3, **ckpt["model_kwargs"]}
    assert info["labels"] == ckpt["labels"] and info["clip_len"] == ckpt["clip_len"]
    x = torch.rand(3, 3, ckpt["clip_len"], ckpt["crop_size"], ckpt["crop_size"])
    with torch.no_grad():
        assert torch.equal(served(x), model(x))
    assert common.checkpoint_weights_sha256(mar) == common.checkpoint_weights_sha256(
        tiny.checkpoint
    )
    preset, source = preset_for_checkpoint(mar)
    assert (preset.h1, preset.h2, preset.ensemble) == (3, 2, 6) and "meta.json" in source
    assert preset_for_checkpoint(mar, h1=1)[0].h1 == 1
    # the archive's meta.json carries what rebuilds training's validation holdout
    val = common.validation_split(tiny.data, info)
    ref = common.validation_split(tiny.data, {"train_args": {"val_fraction": 0.25, "seed": 3}})
    assert val.index == ref.index and len(val) > 0


def test_weights_digest_changes_with_any_weight(tiny) -> None:  # type: ignore[no-untyped-def]
    model, _ = common.load_model(tiny.checkpoint)
    before = common.weights_sha256(model)
    with torch.no_grad():
        model.fc.bias[0] += 1e-6
    assert common.weights_sha256(model) != before


def test_a_run_without_denoiser_is_extended_by_the_denoise_rows(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "grow"
    base = [
        "evaluate", "--checkpoint", str(tiny.checkpoint), "--data", str(tiny.data),
        "--clips", "2", "--seeds", "0", "--attacks", "ifgsm", "--defenses", "none", "denoise",
        "--h1", "2", "--h2", "1", "--out", str(out), "--threads", "1", "--no-progress",
    ]  # fmt: skip
    assert main(base) == 0
    first = _records(out / "records.jsonl")
    assert {r["defense"] for r in first} == {"none"}
    assert main([*base, "--denoiser", str(tiny.denoiser)]) == 0
    grown = _records(out / "records.jsonl")
    assert grown[: len(first)] == first  # nothing recomputed
    assert {r["defense"] for r in grown[len(first) :]} == {"denoise"}
    assert len(grown) == 2 * len(first)
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fp["denoiser_sha256"] is not None
    # but a second, different denoiser would mix records of two defenses: refused
    other = tmp_path / "other_dncnn.pt"
    blob = torch.load(tiny.denoiser, weights_only=True)
    blob["state_dict"] = {
        k: v + 1e-3 if v.is_floating_point() else v for k, v in blob["state_dict"].items()
    }
    torch.save(blob, other)
    with pytest.raises(SystemExit, match="denoiser_sha256"):
        main([*base, "--denoiser", str(other)])
