"""The report of an evaluation (paper Table 5): summary, statistics, tables and figure.

:func:`summarize` turns records into cells (accuracy per row x column, a Student-t
interval over seeds and a Wilson interval over clip x seed trials, from
:mod:`service.core.stats`), the EOT credibility check and the shuffle row's goals;
:func:`write_outputs` writes ``table5.{csv,json,md,png}`` and ``per_clip.csv``
through the one report writer (:func:`service.research.experiments.report.write_report`).
Titles of rows and columns come from the registry.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.core import stats
from service.research.experiments import report
from service.research.experiments.records import Records
from service.research.robustness.registry import ATTACKS, DEFENSE_ROWS

__all__ = ["GOALS", "credibility_check", "goals", "markdown", "summarize", "write_outputs"]

#: The issue's goals for the shuffle row: accuracy / undefended clean accuracy.
GOALS: dict[str, float] = {
    "clean": 0.95,
    "ifgsm": 0.90,
    "eot": 0.80,
    "ofa": 0.95,
    "flickering": 0.80,
}


def column_title(col: str) -> str:
    return "clean" if col == "clean" else ATTACKS[col].title


def row_title(row: str) -> str:
    return DEFENSE_ROWS[row].title


def summary_of_run(p: Any, records: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """:func:`summarize` of a run's records, with the run's inputs and environment."""
    config, ckpt = p.config, p.ckpt
    summary = summarize(records, config, rows=p.rows, columns=p.columns, clip_ids=p.subset.index)
    model_keys = ("arch", "model_kwargs", "dataset", "clip_len", "crop_size", "test_accuracy")
    summary.update(
        {
            "preset": p.preset.to_dict(),
            "preset_source": p.preset_source,
            "model": {"checkpoint": config.checkpoint, **{k: ckpt.get(k) for k in model_keys}},
            "data": {"dir": config.data, "split": config.split, "clips": len(p.subset)},
            "clip_ids": p.subset.index,
            "skipped_rows": [r for r in config.defenses if r not in p.rows],
            "seconds_this_run": seconds,
            "computed_this_run": len(p.missing),
            "environment": report.environment(config.device),
        }
    )
    return summary


def _summarize_cell(
    row: str, col: str, recs: list[dict[str, Any]], seeds: Sequence[int], expected: int
) -> dict[str, Any]:
    """One cell of :func:`summarize` from its records."""
    n = len(recs)
    per_seed = []
    for s in seeds:
        rs = [r for r in recs if r["seed"] == s]
        if rs:
            per_seed.append(sum(bool(r["correct"]) for r in rs) / len(rs))
    mean, half = stats.mean_ci(per_seed)
    lo, hi = stats.wilson(sum(bool(r["correct"]) for r in recs), n)
    return {
        "defense": row, "attack": col, "accuracy": mean, "ci95_seeds": half,
        "wilson_low": lo, "wilson_high": hi, "per_seed": per_seed, "n": n,
        "complete": n == expected,
        "abstain_rate": sum(bool(r.get("abstain")) for r in recs) / n,
        "undefended_fooled": sum(r["undefended_pred"] != r["label"] for r in recs) / n,
        **{f"{k}_mean": sum(r[k] for r in recs) / n
           for k in ("linf", "l2", "attack_seconds", "defense_seconds")},
    }  # fmt: skip


def summarize(
    records: Sequence[dict[str, Any]],
    config: Any,
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    clip_ids: Sequence[int],
) -> dict[str, Any]:
    """Accuracy per (row, column): mean over seeds of the accuracy over clips, a 95%
    Student-t interval over seeds and a Wilson interval over all clip x seed trials.

    An abstention (smoothing rows) counts as wrong. A cell is ``complete`` when it has
    a record for every (seed, clip).
    """
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_cell[(r["defense"], r["attack"])].append(r)
    cells: list[dict[str, Any]] = []
    expected = len(clip_ids) * len(config.seeds)
    for row in rows:
        for col in columns:
            recs = by_cell.get((row, col), [])
            if not recs:
                continue
            cells.append(_summarize_cell(row, col, recs, config.seeds, expected))
    summary: dict[str, Any] = {
        "table": "table5",
        "command": config.command(),
        "config": asdict(config),
        "reduced_strength": config.reduced,
        "rows": list(rows),
        "columns": list(columns),
        "cells": cells,
        "credibility_check": credibility_check(records, config),
        "computed_on": sorted({str(r.get("device", "?")) for r in records}),
        "goals": goals(cells),
    }
    return summary


def _cell(cells: Sequence[dict[str, Any]], row: str, col: str) -> dict[str, Any] | None:
    for c in cells:
        if c["defense"] == row and c["attack"] == col:
            return c
    return None


def credibility_check(records: Sequence[dict[str, Any]], config: Any) -> dict[str, Any]:
    """EOT with identity shuffles vs I-FGSM, both on the undefended model.

    Passes when EOT leaves at most as many clips correct as I-FGSM (it fools the
    model at least as well), per seed and pooled. ``ifgsm_only_fooled`` lists the
    (seed, clip) that I-FGSM fooled and EOT did not.
    """
    ifgsm = {
        (r["seed"], r["clip"]): r
        for r in records
        if r["defense"] == "none" and r["attack"] == "ifgsm"
    }
    eot = {
        (r["seed"], r["clip"]): r
        for r in records
        if r["defense"] == "none" and r["attack"] == "eot"
    }
    both = sorted(set(ifgsm) & set(eot))
    if not both:
        return {"measured": False, "passed": None}
    # I-FGSM has no randomness: its (seed 0) clip serves every seed.
    acc_ifgsm = sum(bool(ifgsm[k]["correct"]) for k in both) / len(both)
    acc_eot = sum(bool(eot[k]["correct"]) for k in both) / len(both)
    only = [list(k) for k in both if not ifgsm[k]["correct"] and eot[k]["correct"]]
    return {
        "measured": True,
        "pairs": len(both),
        "ifgsm_accuracy": acc_ifgsm,
        "eot_identity_accuracy": acc_eot,
        "passed": acc_eot <= acc_ifgsm + 1e-12,
        "ifgsm_only_fooled": only,
    }


def goals(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shuffle-row accuracy relative to the undefended clean accuracy, per goal."""
    base = _cell(cells, "none", "clean")
    out = []
    for col, goal in GOALS.items():
        c = _cell(cells, "shuffle", col)
        if base is None or c is None or not base["accuracy"]:
            continue
        ratio = c["accuracy"] / base["accuracy"]
        out.append(
            {
                "column": col,
                "goal": goal,
                "shuffle_accuracy": c["accuracy"],
                "wilson_low": c["wilson_low"],
                "wilson_high": c["wilson_high"],
                "n": c["n"],
                "ratio": ratio,
                "met": ratio >= goal,
            }
        )
    return out


# --------------------------------------------------------------------------- #
# Outputs
# --------------------------------------------------------------------------- #
def _fmt_cell(c: dict[str, Any] | None, n_seeds: int) -> str:
    if c is None:
        return "-"
    text = report.pct(c["accuracy"])
    if n_seeds > 1:
        text += f" ± {report.pct(c['ci95_seeds'])}"
    if c["abstain_rate"] > 0:
        text += f" (abst. {report.pct(c['abstain_rate'], 0)})"
    if not c["complete"]:
        text += " *"
    return text


#: ``table5.csv``: (column, format) per cell field.
CELL_FIELDS: tuple[tuple[str, str], ...] = (
    ("defense", ""), ("attack", ""), ("accuracy", ".4f"), ("ci95_seeds", ".4f"),
    ("wilson_low", ".4f"), ("wilson_high", ".4f"), ("n", ""), ("complete", ""),
    ("abstain_rate", ".4f"), ("undefended_fooled", ".4f"), ("linf_mean", ".6f"),
    ("l2_mean", ".4f"), ("attack_seconds_mean", ".3f"), ("defense_seconds_mean", ".3f"),
)  # fmt: skip

#: ``per_clip.csv``: (column, value of a record ``r`` beside its clean record ``c``).
PER_CLIP: tuple[tuple[str, Any], ...] = (
    ("seed", lambda r, c: r["seed"]),
    ("clip", lambda r, c: r["clip"]),
    ("label", lambda r, c: r["label"]),
    ("attack", lambda r, c: r["attack"]),
    ("defense", lambda r, c: r["defense"]),
    ("pred_clean", lambda r, c: "" if c is None else c["pred"]),
    ("pred_adv", lambda r, c: r["pred"]),
    ("correct_clean", lambda r, c: "" if c is None else int(c["correct"])),
    ("correct_adv", lambda r, c: int(r["correct"])),
    ("abstain", lambda r, c: int(bool(r.get("abstain")))),
    ("undefended_pred", lambda r, c: r["undefended_pred"]),
    ("vote_share", lambda r, c: "" if r.get("vote_share") is None else f"{r['vote_share']:.3f}"),
    ("linf", lambda r, c: f"{r['linf']:.6f}"),
    ("l2", lambda r, c: f"{r['l2']:.4f}"),
    ("attack_seconds", lambda r, c: f"{r['attack_seconds']:.3f}"),
    ("defense_seconds", lambda r, c: f"{r['defense_seconds']:.3f}"),
    ("extra", lambda r, c: json.dumps(r.get("extra") or {}, sort_keys=True)),
)


def write_outputs(summary: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``table5.{csv,json,md,png}`` and ``per_clip.csv`` (from ``records.jsonl`` in
    ``out_dir``); returns the paths."""
    paths = report.write_report(
        out_dir,
        "table5",
        results=summary,
        header=[name for name, _ in CELL_FIELDS],
        rows=[[format(c[k], f) for k, f in CELL_FIELDS] for c in summary["cells"]],
        markdown=markdown(summary),
        plot=lambda path: plot(summary, path),
    )
    per_clip = Path(out_dir) / "per_clip.csv"
    write_per_clip(Records.of(out_dir), per_clip, summary)
    return [*paths, per_clip]


def write_per_clip(records: Records, path: Path, summary: dict[str, Any]) -> None:
    """One line per record, with the same defense's clean prediction beside it."""
    recs = records.select(summary.get("clip_ids") or None, summary["config"]["seeds"])
    clean = {(r["seed"], r["clip"], r["defense"]): r for r in recs if r["attack"] == "clean"}
    col_order = {c: i for i, c in enumerate(("clean", *ATTACKS))}
    row_order = {r: i for i, r in enumerate(DEFENSE_ROWS)}
    recs.sort(key=lambda r: (r["seed"], r["clip"], col_order[r["attack"]], row_order[r["defense"]]))
    rows = [
        [value(r, clean.get((r["seed"], r["clip"], r["defense"]))) for _, value in PER_CLIP]
        for r in recs
    ]
    report.write_csv(path, [name for name, _ in PER_CLIP], rows)


def _md_intro(summary: dict[str, Any]) -> list[str]:
    n_seeds = len(summary["config"]["seeds"])
    lines = ["# Table 5: attacks x defenses", ""]
    lines += report.reduced_banner(summary["reduced_strength"])
    n_clips = summary.get("data", {}).get("clips", "?")
    lines += [
        f"Top-1 accuracy (%) on {n_clips} class-stratified test clips"
        + (f", mean ± 95% CI (Student t) over {n_seeds} seeds" if n_seeds > 1 else ", one seed")
        + ". The clean, I-FGSM, flickering and OFA columns are crafted once against the"
        " **undefended** model and then classified by each defense (the paper's setting);"
        " the EOT column is **adaptive to each row's randomness** (shuffles, Gaussian noise,"
        " noise through the denoiser, or both), and for the `none` row it is EOT with identity"
        " shuffles. Smoothing rows abstain by a two-sided binomial test; an abstention counts"
        " as wrong. `*` marks an incomplete cell.",
        "",
        *report.produced_by(summary["command"]),
    ]
    return lines


def _md_table(summary: dict[str, Any]) -> list[str]:
    n_seeds, cells, cols = len(summary["config"]["seeds"]), summary["cells"], summary["columns"]
    lines: list[str] = []
    header = ["defense", *[column_title(c) for c in cols]]
    body = [
        [row_title(r), *[_fmt_cell(_cell(cells, r, c), n_seeds) for c in cols]]
        for r in summary["rows"]
    ]
    lines += [report.markdown_table(header, body), ""]
    return lines


def _md_checks(summary: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if summary.get("skipped_rows"):
        lines += [
            f"Rows not run (no `--denoiser` given): {', '.join(summary['skipped_rows'])}.",
            "",
        ]
    check = summary["credibility_check"]
    if check.get("measured"):
        verdict = "PASSES" if check["passed"] else "FAILS"
        lines += [
            f"**EOT credibility check {verdict}:** on the undefended model, EOT with identity"
            f" shuffles leaves {report.pct(check['eot_identity_accuracy'])}% correct vs"
            f" {report.pct(check['ifgsm_accuracy'])}% for I-FGSM ({check['pairs']} seed x clip"
            f" pairs; {len(check['ifgsm_only_fooled'])} fooled by I-FGSM only).",
            "",
        ]
    return lines


def _md_goals(summary: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    g = summary["goals"]
    if g:
        lines += [
            "Goals for the shuffle row (accuracy relative to the undefended clean accuracy;"
            " the interval is the 95% Wilson interval of the accuracy over all clip x seed"
            " trials, so it shows how few clips a small run has):",
            "",
            report.markdown_table(
                ["column", "goal", "shuffle acc.", "95% interval (n)", "ratio", "met"],
                [
                    [
                        column_title(x["column"]),
                        f">= {report.pct(x['goal'], 0)}%",
                        report.pct(x["shuffle_accuracy"]),
                        f"{report.pct(x['wilson_low'])}-{report.pct(x['wilson_high'])} ({x['n']})",
                        report.pct(x["ratio"]),
                        "yes" if x["met"] else "**no**",
                    ]
                    for x in g
                ],
            ),
            "",
        ]
    return lines


def _md_settings(summary: dict[str, Any]) -> list[str]:
    cfg, cells = summary["config"], summary["cells"]
    lines: list[str] = []
    preset = summary.get("preset", {})
    lines += [
        "Settings: shuffle preset h1 = {h1}, h2 = {h2}, ensemble = {ens} ({src}); RS sigma = {sig}"
        " (pixel units), n = {n}, alpha = {a}; I-FGSM/OFA/EOT eps = {eps:.5f} ({eps255:.1f}/255),"
        " {steps} steps, EOT {draws} draws per step; flickering {fsteps} Adam steps, offsets"
        " within ±{feps}.".format(
            h1=preset.get("h1"),
            h2=preset.get("h2"),
            ens=preset.get("ensemble"),
            src=summary.get("preset_source", "?"),
            sig=cfg["sigma"],
            n=cfg["rs_n"],
            a=cfg["rs_alpha"],
            eps=cfg["eps"],
            eps255=cfg["eps"] * 255,
            steps=cfg["steps"],
            draws=cfg["eot_draws"],
            fsteps=cfg["flicker_steps"],
            feps=cfg["flicker_eps"],
        ),
        "",
        "Cost (mean seconds per clip): "
        + ", ".join(
            f"{column_title(c['attack'])} on {c['defense']}: attack {c['attack_seconds_mean']:.1f}"
            f" + defense {c['defense_seconds_mean']:.2f}"
            for c in cells
            if c["attack"] != "clean" and (c["attack"] == "eot" or c["defense"] == "none")
        )
        + ".",
        "",
    ]
    return lines


def _md_footer(summary: dict[str, Any]) -> list[str]:
    cfg = summary["config"]
    lines: list[str] = []
    if cfg.get("report_only"):
        lines += [
            "Tabulated with `--report-only` from records computed on: "
            + ", ".join(summary.get("computed_on", []))
            + " (see `records.jsonl`).",
            "",
        ]
    env = summary.get("environment", {})
    if env:
        lines += [
            f"Environment: torch {env.get('torch')}, device {env.get('device')}"
            + (f" ({env['gpu']})" if env.get("gpu") else "")
            + f", {env.get('threads')} CPU threads.",
            "",
        ]
    return [*lines, "![Table 5](table5.png)", ""]


def markdown(summary: dict[str, Any]) -> str:
    """``table5.md``: the table, the credibility check, the goals, settings and costs."""
    parts = (_md_intro, _md_table, _md_checks, _md_goals, _md_settings, _md_footer)
    return "\n".join(line for part in parts for line in part(summary))


def plot(summary: dict[str, Any], path: Path) -> None:
    cols = summary["columns"]
    rows = summary["rows"]
    cells = summary["cells"]
    fig, ax = report.setup_figure(max(6.0, 1.6 * len(cols)), 4.2)
    width = 0.8 / max(1, len(rows))
    for j, row in enumerate(rows):
        xs, ys, es = [], [], []
        for i, col in enumerate(cols):
            c = _cell(cells, row, col)
            if c is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(100 * c["accuracy"])
            es.append(100 * c["ci95_seeds"])
        ax.bar(xs, ys, width=width, yerr=es, capsize=2, label=row_title(row))
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([column_title(c) for c in cols])
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    title = "Table 5: attacks x defenses"
    if summary["reduced_strength"]:
        title += " (REDUCED STRENGTH: plumbing test)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(rows), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    report.save_figure(fig, path)
