"""Attack detection: ROC and AUC of the gateway's ``suspected_adversarial`` signals.

The gateway flags a clip when the undefended label differs from the ensemble's
majority vote, or when the winning vote share is under a threshold (default 0.5;
:func:`service.gateway.pipeline.summarize`). This analysis scores clean clips
(negatives) against attacked clips (positives) with three signals of the shuffle
ensemble:

* ``vote_share``: ``1 - winning vote share`` (continuous; a full ROC curve);
* ``disagreement``: undefended label != ensemble label (binary; one operating point);
* ``gateway``: the gateway's flag, disagreement or share < ``--threshold`` (binary).

Scores come from the per-clip records of ``shuffleguard evaluate`` (its ``shuffle``
row stores the vote counts and the undefended label of the same input). With
``--evaluation DIR`` they are read from an existing run; otherwise a run restricted
to the ``none`` and ``shuffle`` rows is made (or resumed) in ``<out>/evaluation``.
The EOT column is adaptive to the shuffles, i.e. an attacker who knows the defense.

Writes ``detection.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.experiments import common
from service.stats import auc, roc_curve

__all__ = ["SIGNALS", "auc", "detection_results", "roc_curve", "run"]

SIGNALS = ("vote_share", "disagreement", "gateway")


def signal_scores(rec: dict[str, Any], threshold: float) -> dict[str, float]:
    """The three scores of one ``shuffle``-row record."""
    share = float(rec["vote_share"])
    disagree = float(rec["undefended_pred"] != rec["pred"])
    return {
        "vote_share": 1.0 - share,
        "disagreement": disagree,
        "gateway": float(bool(disagree) or share < threshold),
    }


def detection_results(records: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    """ROC/AUC per attack and signal from evaluation records (``shuffle`` row only).

    Negatives: the clean records; positives: every attacked record of that attack
    (``all``) and, separately, only those whose attack fooled the undefended model
    (``successful``).
    """
    shuffle = [r for r in records if r["defense"] == "shuffle" and r.get("vote_share") is not None]
    clean = [signal_scores(r, threshold) for r in shuffle if r["attack"] == "clean"]
    attacks = [
        a for a in ("ifgsm", "flickering", "ofa", "eot") if any(r["attack"] == a for r in shuffle)
    ]
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    for attack in attacks:
        recs = [r for r in shuffle if r["attack"] == attack]
        for subset, chosen in (
            ("all", recs),
            ("successful", [r for r in recs if r["undefended_pred"] != r["label"]]),
        ):
            pos = [signal_scores(r, threshold) for r in chosen]
            for sig in SIGNALS:
                neg_s = [c[sig] for c in clean]
                pos_s = [p[sig] for p in pos]
                row: dict[str, Any] = {
                    "attack": attack,
                    "positives": subset,
                    "signal": sig,
                    "n_clean": len(neg_s),
                    "n_attacked": len(pos_s),
                }
                if neg_s and pos_s:
                    row["auc"] = auc(neg_s, pos_s)
                    if sig != "vote_share":
                        row["tpr"] = sum(pos_s) / len(pos_s)
                        row["fpr"] = sum(neg_s) / len(neg_s)
                    elif subset == "all":
                        fpr, tpr, thr = roc_curve(neg_s, pos_s)
                        curves[attack] = {"fpr": fpr, "tpr": tpr, "thresholds": thr}
                else:
                    row["auc"] = None
                rows.append(row)
    return {"threshold": threshold, "rows": rows, "curves": curves}


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evaluation", default=None, help="an `evaluate` output directory to read")
    parser.add_argument("--out", default="docs/results/detection", help="output directory")
    parser.add_argument("--threshold", type=float, default=0.5, help="gateway vote-share threshold")
    g = parser.add_argument_group("a fresh run (without --evaluation)")
    g.add_argument("--checkpoint", default=None)
    g.add_argument("--data", default=None)
    g.add_argument("--clips", type=int, default=None)
    g.add_argument("--subset-seed", type=int, default=0)
    g.add_argument("--seeds", type=int, nargs="+", default=[0])
    g.add_argument(
        "--attacks",
        nargs="+",
        default=["ifgsm", "flickering", "ofa", "eot"],
        choices=("ifgsm", "flickering", "ofa", "eot"),
    )
    g.add_argument("--h1", type=int, default=None)
    g.add_argument("--h2", type=int, default=None)
    g.add_argument("--ensemble", type=int, default=None)
    g.add_argument("--flicker-steps", type=int, default=2500)
    g.add_argument("--device", default="cpu")
    g.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    g.add_argument("--no-progress", action="store_true")


def _command(args: argparse.Namespace) -> str:
    opts: dict[str, Any] = {"out": args.out, "threshold": args.threshold}
    if args.evaluation:
        opts = {"evaluation": args.evaluation, **opts}
    else:
        opts.update(
            {
                "checkpoint": args.checkpoint,
                "data": args.data,
                "clips": args.clips,
                "subset_seed": args.subset_seed or None,
                "seeds": args.seeds,
                "attacks": args.attacks,
                "h1": args.h1,
                "h2": args.h2,
                "ensemble": args.ensemble,
                "flicker_steps": None if args.flicker_steps == 2500 else args.flicker_steps,
                "device": args.device,
            }
        )
    return common.command_line(["shuffleguard", "analyze", "detection"], opts)


def run(args: argparse.Namespace) -> int:
    from service.experiments.evaluate import EvalConfig, run_evaluation, write_outputs

    if not 0.0 <= args.threshold <= 1.0:
        raise SystemExit("shuffleguard analyze detection: --threshold must be in [0, 1]")
    evaluation = Path(args.evaluation) if args.evaluation else Path(args.out) / "evaluation"
    source_command = None
    if not args.evaluation:
        if not args.checkpoint or not args.data:
            raise SystemExit(
                "shuffleguard analyze detection: give --evaluation DIR or --checkpoint and --data"
            )
        common.prepare_torch(args.device, args.threads, "shuffleguard analyze detection")
        config = EvalConfig(
            checkpoint=args.checkpoint,
            data=args.data,
            out=str(evaluation),
            clips=args.clips,
            subset_seed=args.subset_seed,
            seeds=list(args.seeds),
            attacks=list(args.attacks),
            defenses=["none", "shuffle"],
            h1=args.h1,
            h2=args.h2,
            ensemble=args.ensemble,
            flicker_steps=args.flicker_steps,
            device=args.device,
            threads=args.threads,
        )
        try:
            summary = run_evaluation(config, progress=not args.no_progress)
        except ValueError as exc:
            raise SystemExit(f"shuffleguard analyze detection: {exc}") from None
        write_outputs(summary, evaluation)
        source_command = summary["command"]
    records_path = evaluation / "records.jsonl"
    if not records_path.exists():
        raise SystemExit(f"shuffleguard analyze detection: no {records_path}")
    records = [json.loads(x) for x in records_path.read_text().splitlines() if x.strip()]
    table5 = evaluation / "table5.json"
    reduced: list[str] = []
    if table5.exists():
        t5 = json.loads(table5.read_text())
        source_command = source_command or t5.get("command")
        reduced = t5.get("reduced_strength", [])
        # only the clips and seeds the evaluation tabulated (a resumed or report-only
        # run can hold records of more)
        clips, seeds = set(t5.get("clip_ids", [])), set(t5["config"]["seeds"])
        records = [r for r in records if r["clip"] in clips and r["seed"] in seeds]
    results = detection_results(records, args.threshold)
    results.update(
        {
            "analysis": "detection",
            "command": _command(args),
            "evaluation": str(evaluation),
            "evaluation_command": source_command,
            "reduced_strength": reduced,
        }
    )
    paths = common.write_report(
        args.out,
        "detection",
        results=results,
        header=["attack", "positives", "signal", "auc", "tpr", "fpr", "n_clean", "n_attacked"],
        rows=[
            [
                r["attack"],
                r["positives"],
                r["signal"],
                _f(r.get("auc")),
                _f(r.get("tpr")),
                _f(r.get("fpr")),
                r["n_clean"],
                r["n_attacked"],
            ]
            for r in results["rows"]
        ],
        markdown=_markdown(results),
        plot=lambda p: _plot(results, p),
    )
    for r in results["rows"]:
        if r["positives"] == "all" and r.get("auc") is not None:
            print(f"{r['attack']:>10} {r['signal']:>12}: AUC {r['auc']:.3f}")
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Attack detection: the gateway's suspected_adversarial signals", ""]
    if results["reduced_strength"]:
        lines += [
            "**REDUCED STRENGTH -- a plumbing test, not a result:** "
            + ", ".join(results["reduced_strength"])
            + ".",
            "",
        ]
    lines += [
        "Clean clips (negatives) vs attacked clips (positives), scored by the shuffle ensemble."
        " `vote share` = 1 - winning vote share; `disagreement` = undefended label differs"
        f" from the vote; `gateway` = disagreement or share < {results['threshold']}"
        " (the gateway's flag). AUC over all attacked clips, and over the clips whose"
        " attack fooled the undefended model; TPR/FPR for the binary signals.",
        "",
        *common.produced_by(results["command"]),
    ]
    if results.get("evaluation_command"):
        lines += ["from the evaluation:", "", "```", results["evaluation_command"], "```", ""]
    body = []
    for r in results["rows"]:
        if r.get("auc") is None:
            continue
        tf = "" if "tpr" not in r else f"{common.pct(r['tpr'])} / {common.pct(r['fpr'])}"
        body.append(
            [
                r["attack"],
                r["positives"],
                r["signal"].replace("_", " "),
                f"{r['auc']:.3f}",
                tf,
                f"{r['n_clean']} / {r['n_attacked']}",
            ]
        )
    lines += [
        common.markdown_table(
            ["attack", "positives", "signal", "AUC", "TPR / FPR (%)", "clean / attacked"],
            body,
            "lllrrr",
        ),
        "",
        "![ROC](detection.png)",
        "",
    ]
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> None:
    fig, ax = common.setup_figure(4.6, 4.2)
    for attack, c in results["curves"].items():
        a = next(
            r["auc"]
            for r in results["rows"]
            if r["attack"] == attack and r["signal"] == "vote_share" and r["positives"] == "all"
        )
        ax.plot(c["fpr"], c["tpr"], marker=".", label=f"{attack} (AUC {a:.2f})")
    for r in results["rows"]:
        if r["signal"] == "gateway" and r["positives"] == "all" and r.get("tpr") is not None:
            ax.plot([r["fpr"]], [r["tpr"]], marker="x", color="black", linestyle="none")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("false positive rate (clean flagged)")
    ax.set_ylabel("true positive rate (attacked flagged)")
    ax.set_title("ROC of 1 - vote share (x: gateway flag)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, alpha=0.3)
    common.save_figure(fig, path)
