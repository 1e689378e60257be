"""Attack detection: ROC and AUC of the gateway's ``suspected_adversarial`` signals.

The gateway flags a clip when the undefended label differs from the ensemble's
majority vote, or when the winning vote share is under a threshold (default 0.5;
:func:`service.core.vote.suspected`). This analysis scores clean clips
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

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from service.core.stats import auc, roc_curve, wilson
from service.core.vote import suspected
from service.options import (
    ExperimentConfig,
    command_line,
    device_opt,
    opt,
    out_opt,
    progress_opt,
    threads_opt,
)
from service.research.experiments import common, report
from service.research.experiments.evaluate import EvalConfig
from service.research.experiments.records import Records
from service.research.robustness.registry import ATTACKS, PAPER_ATTACKS, Budget

__all__ = ["SIGNALS", "DetectionConfig", "detection_results", "flag_at_fpr", "run"]

SIGNALS = ("vote_share", "disagreement", "gateway")


def signal_scores(rec: dict[str, Any], threshold: float) -> dict[str, float]:
    """The three scores of one ``shuffle``-row record."""
    share = float(rec["vote_share"])
    undefended, label = int(rec["undefended_pred"]), int(rec["pred"])
    return {
        "vote_share": 1.0 - share,
        "disagreement": float(undefended != label),
        "gateway": float(suspected(undefended, label, share, threshold)),
    }


def detection_results(records: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    """ROC/AUC per attack and signal from evaluation records (``shuffle`` row only).

    Negatives: the clean records; positives: every attacked record of that attack
    (``all``) and, separately, only those whose attack fooled the undefended model
    (``successful``).
    """
    shuffle = [r for r in records if r["defense"] == "shuffle" and r.get("vote_share") is not None]
    clean = [signal_scores(r, threshold) for r in shuffle if r["attack"] == "clean"]
    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in shuffle)]
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


def flag_at_fpr(
    clean: Sequence[dict[str, Any]],
    attacked: Sequence[dict[str, Any]],
    threshold: float = 0.5,
    max_fpr: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """Per signal, the ROC point of most TPR whose FPR on the clean records is at most
    ``max_fpr`` (records as :func:`signal_scores` reads them), with a Wilson interval
    on the TPR: ``{tpr, k, n, lo, hi, fpr, score_threshold}``. A binary signal whose
    own FPR exceeds ``max_fpr`` gets the point (0, 0): it must flag nothing."""
    out: dict[str, dict[str, Any]] = {}
    for sig in SIGNALS:
        neg = [signal_scores(r, threshold)[sig] for r in clean]
        pos = [signal_scores(r, threshold)[sig] for r in attacked]
        fpr, tpr, thr = roc_curve(neg, pos)
        i = max((j for j in range(len(fpr)) if fpr[j] <= max_fpr + 1e-12), key=lambda j: tpr[j])
        k = round(tpr[i] * len(pos))
        lo, hi = wilson(k, len(pos))
        out[sig] = {"tpr": tpr[i], "k": k, "n": len(pos), "lo": lo, "hi": hi,
                    "fpr": fpr[i], "score_threshold": thr[i]}  # fmt: skip
    return out


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #
@dataclass
class DetectionConfig(ExperimentConfig):
    """Settings of ``shuffleguard analyze detection``: read ``--evaluation DIR``, or make
    (or resume) an evaluation of the ``none`` and ``shuffle`` rows in ``<out>/evaluation``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "analyze", "detection")

    evaluation: str | None = opt(None, "an `evaluate` output directory to read")
    out: str = out_opt("docs/results/detection")
    threshold: float = opt(0.5, "gateway vote-share threshold", show="always")
    checkpoint: str | None = opt(None, "model of a fresh run (without --evaluation)")
    data: str | None = opt(None, "toy-data directory of a fresh run")
    clips: int | None = opt(None, "clips of a fresh run (default all)")
    subset_seed: int = opt(0, "seed of the clip subset")
    seeds: list[int] = opt([0], "seeds of a fresh run", show="always")
    attacks: list[str] = opt(list(PAPER_ATTACKS), "attacks of a fresh run", show="always",
                             choices=tuple(ATTACKS))  # fmt: skip
    h1: int | None = opt(None, "preset of a fresh run (default: tune's sidecar)")
    h2: int | None = opt(None, "preset of a fresh run (default: tune's sidecar)")
    ensemble: int | None = opt(None, "preset of a fresh run (default: tune's sidecar)")
    flicker_steps: int = opt(Budget().flicker_steps, "flickering steps (lower = plumbing test)")
    device: str = device_opt()
    threads: int = threads_opt()
    no_progress: bool = progress_opt()

    def check(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("--threshold must be in [0, 1]")
        if not self.evaluation and not (self.checkpoint and self.data):
            raise ValueError("give --evaluation DIR or --checkpoint and --data")

    def command(self) -> str:
        if self.evaluation:
            opts = {"evaluation": self.evaluation, "out": self.out, "threshold": self.threshold}
            return command_line(self.COMMAND, opts)
        return super().command()

    def evaluation_config(self) -> EvalConfig:
        """The evaluation a fresh run makes (rows ``none`` and ``shuffle``)."""
        assert self.checkpoint and self.data
        return EvalConfig(
            checkpoint=self.checkpoint, data=self.data, out=str(Path(self.out) / "evaluation"),
            clips=self.clips, subset_seed=self.subset_seed, seeds=list(self.seeds),
            attacks=list(self.attacks), defenses=["none", "shuffle"], h1=self.h1, h2=self.h2,
            ensemble=self.ensemble, flicker_steps=self.flicker_steps, device=self.device,
            threads=self.threads,
        )  # fmt: skip


def _records_of(evaluation: Path) -> tuple[list[dict[str, Any]], str | None, list[str]]:
    """The evaluation's records restricted to the clips and seeds its table holds (a
    resumed or report-only run can hold more), its command and reduced budgets."""
    records = Records.of(evaluation)
    table5 = evaluation / "table5.json"
    if not table5.exists():
        return records.select(), None, []
    t5 = json.loads(table5.read_text())
    recs = records.select(t5.get("clip_ids", []), t5["config"]["seeds"])
    return recs, t5.get("command"), t5.get("reduced_strength", [])


def run(config: DetectionConfig) -> int:
    from service.research.experiments.evaluate import run_evaluation
    from service.research.experiments.table5 import write_outputs

    evaluation = Path(config.evaluation or Path(config.out) / "evaluation")
    source_command = None
    if not config.evaluation:
        common.prepare_torch(config.device, config.threads, "shuffleguard analyze detection")
        summary = run_evaluation(config.evaluation_config(), progress=not config.no_progress)
        write_outputs(summary, evaluation)
        source_command = summary["command"]
    if not (evaluation / "records.jsonl").exists():
        raise ValueError(f"no {evaluation / 'records.jsonl'}")
    records, t5_command, reduced = _records_of(evaluation)
    results = detection_results(records, config.threshold)
    results.update(
        {
            "analysis": "detection",
            "command": config.command(),
            "evaluation": str(evaluation),
            "evaluation_command": source_command or t5_command,
            "reduced_strength": reduced,
        }
    )
    paths = write_outputs_detection(results, config.out)
    for r in results["rows"]:
        if r["positives"] == "all" and r.get("auc") is not None:
            print(f"{r['attack']:>10} {r['signal']:>12}: AUC {r['auc']:.3f}")
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def write_outputs_detection(results: dict[str, Any], out: str | Path) -> list[Path]:
    keys = ("attack", "positives", "signal", "auc", "tpr", "fpr", "n_clean", "n_attacked")
    return report.write_report(
        out,
        "detection",
        results=results,
        header=list(keys),
        rows=[
            [_f(r.get(k)) if k in ("auc", "tpr", "fpr") else r[k] for k in keys]
            for r in results["rows"]
        ],
        markdown=_markdown(results),
        plot=lambda p: _plot(results, p),
    )


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Attack detection: the gateway's suspected_adversarial signals", ""]
    lines += report.reduced_banner(results["reduced_strength"])
    lines += [
        "Clean clips (negatives) vs attacked clips (positives), scored by the shuffle ensemble."
        " `vote share` = 1 - winning vote share; `disagreement` = undefended label differs"
        f" from the vote; `gateway` = disagreement or share < {results['threshold']}"
        " (the gateway's flag). AUC over all attacked clips, and over the clips whose"
        " attack fooled the undefended model; TPR/FPR for the binary signals.",
        "",
        *report.produced_by(results["command"]),
    ]
    if results.get("evaluation_command"):
        lines += ["from the evaluation:", "", "```", results["evaluation_command"], "```", ""]
    body = []
    for r in results["rows"]:
        if r.get("auc") is None:
            continue
        tf = "" if "tpr" not in r else f"{report.pct(r['tpr'])} / {report.pct(r['fpr'])}"
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
        report.markdown_table(
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
    fig, ax = report.setup_figure(4.6, 4.2)
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
    report.save_figure(fig, path)
