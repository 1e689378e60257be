"""Detection: ROC/AUC on constructed scores, and the analysis on the smoke evaluation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from service.cli import main
from service.core.stats import auc, roc_curve
from service.research.experiments.detection import detection_results


def _trapezoid(fpr: list[float], tpr: list[float]) -> float:
    return sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))


def test_separable_scores_give_auc_one() -> None:
    neg, pos = [0.0, 0.1, 0.2, 0.3], [0.5, 0.7, 0.9]
    assert auc(neg, pos) == 1.0
    fpr, tpr, thr = roc_curve(neg, pos)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert (0.0, 1.0) in zip(fpr, tpr, strict=True)  # a threshold flags every attack, no clean clip
    assert _trapezoid(fpr, tpr) == pytest.approx(1.0)
    assert auc(pos, neg) == 0.0  # reversed roles


def test_identical_scores_give_auc_one_half() -> None:
    assert auc([0.4] * 5, [0.4] * 7) == 0.5
    fpr, tpr, _ = roc_curve([0.4] * 5, [0.4] * 7)
    assert (fpr, tpr) == ([0.0, 1.0], [0.0, 1.0])
    # a binary signal that fires equally often on both sides carries no information
    assert auc([0, 1, 0, 1], [1, 0, 1, 0]) == 0.5


def test_auc_is_the_area_under_the_roc_with_ties() -> None:
    rng = random.Random(0)
    neg = [rng.randint(0, 5) for _ in range(40)]
    pos = [rng.randint(2, 8) for _ in range(30)]
    fpr, tpr, thr = roc_curve(neg, pos)
    assert all(a <= b for a, b in zip(fpr, fpr[1:], strict=False))
    assert all(a <= b for a, b in zip(tpr, tpr[1:], strict=False))
    assert thr[0] == float("inf") and thr[1:] == sorted(set(neg) | set(pos), reverse=True)
    assert auc(neg, pos) == pytest.approx(_trapezoid(fpr, tpr))
    with pytest.raises(ValueError):
        auc([], [1.0])


def _rec(attack: str, share: float, pred: int, undefended: int, label: int = 0) -> dict:
    return {"defense": "shuffle", "attack": attack, "vote_share": share, "pred": pred,
            "undefended_pred": undefended, "label": label}  # fmt: skip


def test_detection_signals_from_records() -> None:
    clean = [_rec("clean", 1.0, 0, 0), _rec("clean", 0.9, 0, 0), _rec("clean", 0.6, 0, 0)]
    attacked = [_rec("ifgsm", 0.4, 0, 3), _rec("ifgsm", 0.5, 0, 0), _rec("ifgsm", 0.3, 2, 2)]
    res = detection_results([*clean, *attacked, {**clean[0], "defense": "none"}], threshold=0.5)
    row = {(r["positives"], r["signal"]): r for r in res["rows"]}
    assert row["all", "vote_share"]["auc"] == 1.0  # every attacked share below every clean one
    assert row["all", "disagreement"]["tpr"] == pytest.approx(1 / 3)
    assert row["all", "disagreement"]["fpr"] == 0.0
    # gateway: disagreement, or share < 0.5 (0.4 and 0.3 flagged, 0.5 not)
    assert row["all", "gateway"]["tpr"] == pytest.approx(2 / 3)
    assert row["successful", "vote_share"]["n_attacked"] == 2  # undefended fooled on 2 of 3
    assert res["curves"]["ifgsm"]["fpr"][-1] == 1.0


def test_detection_from_the_smoke_evaluation(smoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "det"
    threads = torch.get_num_threads()
    assert main(["analyze", "detection", "--evaluation", str(smoke.out), "--out", str(out)]) == 0
    torch.set_num_threads(threads)
    for ext in ("csv", "json", "md", "png"):
        assert (out / f"detection.{ext}").stat().st_size > 0
    res = json.loads((out / "detection.json").read_text())
    assert res["reduced_strength"]  # inherited from the smoke run's label
    attacks = {r["attack"] for r in res["rows"]}
    assert attacks == {"ifgsm", "flickering", "ofa", "eot"}
    assert all(r["n_clean"] == 4 for r in res["rows"])
    assert all(0.0 <= r["auc"] <= 1.0 for r in res["rows"] if r["auc"] is not None)
    assert "REDUCED STRENGTH" in (out / "detection.md").read_text()


def _flag_rec(share: float, pred: int = 0, undefended: int = 0) -> dict[str, float | int]:
    return {"vote_share": share, "pred": pred, "undefended_pred": undefended}


def test_flag_at_fpr_picks_the_most_tpr_within_the_fpr_bound() -> None:
    from service.research.experiments.detection import flag_at_fpr

    # 20 clean clips: shares 0.6 and 0.7 (scores 0.4, 0.3), one disagreeing, 17 unanimous
    clean = [_flag_rec(1.0)] * 17 + [_flag_rec(0.6), _flag_rec(0.7), _flag_rec(1.0, undefended=1)]
    attacked = [_flag_rec(0.5)] * 6 + [_flag_rec(0.7)] * 2 + [_flag_rec(1.0, 2, 1)] * 2
    at5 = flag_at_fpr(clean, attacked, max_fpr=0.05)
    # vote share: score >= 0.5 flags the 6 clips of share 0.5 and no clean clip (0.4 adds
    # a clean clip and no attacked one); >= 0.3 would flag 2/20 clean
    assert (at5["vote_share"]["k"], at5["vote_share"]["fpr"]) == (6, 0.0)
    assert at5["vote_share"]["lo"] < 0.6 < at5["vote_share"]["hi"]
    assert (at5["disagreement"]["k"], at5["disagreement"]["fpr"]) == (2, 0.05)
    assert at5["gateway"]["k"] == 2
    at10 = flag_at_fpr(clean, attacked, max_fpr=0.10)
    assert at10["vote_share"]["k"] == 8
    at1 = flag_at_fpr(clean, attacked, max_fpr=0.01)  # binary signals over the bound: off
    assert (at1["vote_share"]["k"], at1["disagreement"]["k"], at1["gateway"]["k"]) == (6, 0, 0)
