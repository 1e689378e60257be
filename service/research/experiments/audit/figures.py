"""The figures of an audit from its records (accuracy with its interval) and the results
dictionary the report is written from (:func:`summarize`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from service.core.stats import bootstrap_ci, wilson
from service.research.experiments import report
from service.research.experiments.adaptive import worst_case
from service.research.experiments.audit.config import ATTACK_CELLS, CLIP_CELLS, RUN_CLIP, WORST
from service.research.experiments.audit.plan import Plan, attacker
from service.research.experiments.audit.verdict import verdict

__all__ = ["figures", "rate", "summarize"]


def rate(correct: list[bool], level: float) -> dict[str, Any]:
    """Accuracy of ``correct`` with its Wilson interval at ``level``."""
    k, n = sum(bool(c) for c in correct), len(correct)
    low, high = wilson(k, n, level)
    return {"correct": k, "n": n, "accuracy": k / n if n else float("nan"),
            "low": low, "high": high, "interval": "wilson"}  # fmt: skip


def _uniformized(recs: list[dict[str, Any]], level: float, seed: int) -> dict[str, Any]:
    per_clip = [r["correct_frames"] / r["frames"] for r in recs]
    if not per_clip:
        return {"n": 0, "accuracy": float("nan"), "low": float("nan"), "high": float("nan")}
    mean = sum(per_clip) / len(per_clip)
    if len(set(per_clip)) == 1:
        low = high = mean
    else:
        import numpy as np

        low, high = bootstrap_ci(per_clip, np.mean, level=level, seed=seed)
    return {"correct": sum(r["correct_frames"] for r in recs), "n": len(recs),
            "frames": recs[0]["frames"], "accuracy": mean, "low": low, "high": high,
            "interval": "bootstrap over clips"}  # fmt: skip


def figures(done: list[dict[str, Any]], level: float, seed: int) -> dict[str, dict[str, Any]]:
    """Every figure (key ``measure/row``) and the per-clip worst case over the attack
    cells on the defense (:func:`service.research.experiments.adaptive.worst_case`)."""
    fig: dict[str, dict[str, Any]] = {}
    defended: list[list[bool]] = []
    for measure, row in CLIP_CELLS + ATTACK_CELLS:
        recs = sorted((r for r in done if r["attack"] == measure and r["defense"] == row),
                      key=lambda r: r["clip"])  # fmt: skip
        if measure == "uniformized":
            fig[f"{measure}/{row}"] = _uniformized(recs, level, seed)
            continue
        correct = [bool(r["correct"]) for r in recs]
        fig[f"{measure}/{row}"] = rate(correct, level)
        if (measure, row) in ATTACK_CELLS and row == WORST[1]:
            defended.append(correct)
    fig["/".join(WORST)] = rate(worst_case(defended), level)
    return fig


def summarize(p: Plan, done: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures, attacker, tune, cost and verdict from the records of the run."""
    c = p.config
    fig = figures(done, c.level, c.seed)
    by = {(r["attack"], r["defense"]): r for r in done if r["clip"] == RUN_CLIP}
    name = p.meta.name
    return {
        "analysis": "audit", "command": c.command(), "model": name, "arch": p.meta.arch,
        "weights_sha256": p.meta.sha256, "clip_len": p.meta.clip_len,
        "crop_size": p.meta.crop_size, "classes": len(p.meta.labels),
        "chance": 1 / len(p.meta.labels), "preset": p.preset.to_dict(),
        "clips": {"evaluated": len(p.evaluated), "attacked": len(p.attacked),
                  "tune": len(p.tune), "available": len(p.rows)},
        "budget": asdict(p.budget), "attacker": attacker(p), "level": c.level,
        "clean_ratio": c.clean_ratio, "figures": fig, "tune": by[("tune", "grid")]["result"],
        "cost": by[("latency", "cost")]["result"],
        "verdict": verdict(fig, c.clean_ratio, name),
        "environment": report.environment(c.device),
    }  # fmt: skip
