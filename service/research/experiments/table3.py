"""Table 3: attacked and uniformized clips (paper Sec. 4.1).

I-FGSM clips (``eps = 4/255``, 30 steps, crafted against the undefended model) are
uniformized: every frame is replaced by adversarial frame ``i``
(:func:`service.core.transforms.uniformize`). If the attack's power lay in each frame on its
own, a uniformized adversarial clip would still fool the model; if it lies in the
temporal arrangement of the perturbation, accuracy comes back. Clean clips
uniformized the same way are the reference (the model's spatial accuracy, Table 1).

Writes ``table3.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from service.options import opt
from service.research.experiments import common, report
from service.research.experiments.config import AnalysisConfig, attack_batch_opt


@dataclass
class Table3Config(AnalysisConfig, analysis="table3"):
    """Settings of ``shuffleguard analyze table3`` (see the module docstring)."""

    positions: list[int] | None = opt(None, "frames (default all)")
    attack_batch: int = attack_batch_opt()


def run_table3(args: Table3Config) -> dict[str, Any]:
    from service.core.transforms import uniformize

    t0 = time.perf_counter()
    model, ckpt, subset, x, adv, per_clip = common.load_attacked(args)
    T = x.shape[2]
    positions = list(range(T)) if not args.positions else sorted({p % T for p in args.positions})
    acc = {
        "clean": common.accuracy(
            common.predict(model, x, batch_size=args.batch_size), subset.labels
        ),
        "ifgsm": common.accuracy(
            common.predict(model, adv, batch_size=args.batch_size), subset.labels
        ),
    }
    rows = []
    for i in common.progress_bar(positions, desc="uniformized", enabled=not args.no_progress):
        row: dict[str, Any] = {"frame": i}
        for kind, clips in (("clean", x), ("ifgsm", adv)):
            pred = common.predict(
                model,
                clips,
                batch_size=args.batch_size,
                transform=lambda b, _s, i=i: uniformize(b, i, 2),
            )
            row[kind] = common.accuracy(pred, subset.labels)
        rows.append(row)
    return report.results(
        args, t0, ckpt, len(subset), frames=T,
        attack={"name": "ifgsm", "eps": 4 / 255, "steps": 30, "seconds_per_clip": per_clip},
        original=acc, rows=rows,
        uniformized_mean={k: sum(r[k] for r in rows) / len(rows) for k in ("clean", "ifgsm")},
    )  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    um = res["uniformized_mean"]
    per = ", ".join(f"{r['frame']}: {report.pct(r['ifgsm'])}" for r in res["rows"])
    return "\n".join(
        [
            "# Table 3: attacked and uniformized clips",
            "",
            f"Top-1 accuracy (%) on {res['clips']} test clips; I-FGSM (eps 4/255, 30 steps) crafted"
            " against the undefended model; uniformized = every frame replaced by frame i (mean"
            " over i).",
            "",
            *report.produced_by(res["command"]),
            report.markdown_table(
                ["input", "original order", "uniformized (mean over i)"],
                [
                    ["clean", report.pct(res["original"]["clean"]), report.pct(um["clean"])],
                    ["I-FGSM", report.pct(res["original"]["ifgsm"]), report.pct(um["ifgsm"])],
                ],
            ),
            "",
            f"I-FGSM clips uniformized to frame i: {per}.",
            *report.figure_link("Table 3", "table3"),
        ]
    )


def plot(res: dict[str, Any], path: Any) -> None:
    fig, ax = report.setup_figure(5.0, 3.4)
    xs = [r["frame"] for r in res["rows"]]
    for kind, label in (("clean", "clean, uniformized"), ("ifgsm", "I-FGSM, uniformized")):
        ax.plot(xs, [100 * r[kind] for r in res["rows"]], marker="o", label=label)
    ax.axhline(
        100 * res["original"]["ifgsm"], color="C1", linestyle="--", label="I-FGSM, original order"
    )
    report.style_axes(ax, "Table 3: attacked and uniformized", "frame i")
    report.save_figure(fig, path)


#: ``table3.csv``: (column, format) per row.
FIELDS = (
    ("frame", ""), ("clean_uniformized", ".4f"), ("ifgsm_uniformized", ".4f"),
    ("clean_original", ".4f"), ("ifgsm_original", ".4f"),
)  # fmt: skip


def _summary(res: dict[str, Any]) -> list[str]:
    um = res["uniformized_mean"]
    return [
        f"I-FGSM: {100 * res['original']['ifgsm']:.1f}% as crafted,"
        f" {100 * um['ifgsm']:.1f}% uniformized (clean uniformized {100 * um['clean']:.1f}%)"
    ]


def _table(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    original = res["original"]
    rows = [
        {
            "frame": r["frame"],
            "clean_uniformized": r["clean"],
            "ifgsm_uniformized": r["ifgsm"],
            "clean_original": original["clean"],
            "ifgsm_original": original["ifgsm"],
        }
        for r in res["rows"]
    ]
    return report.csv_table(rows, FIELDS)


def run(args: Table3Config) -> int:
    return report.run_analysis(
        args, run_table3, table=_table, markdown=markdown, plot=plot, summary=_summary
    )
