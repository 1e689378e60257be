"""Table 1: accuracy on uniformized clips (paper Sec. 3.1).

A uniformized clip repeats one frame ``i`` at every position
(:func:`service.core.transforms.uniformize`): it keeps all the spatial content of that frame
and has no motion at all. A model that still classifies it leans on spatial cues.
For every frame position ``i`` (``--positions``, default all) we report the test
accuracy on clips uniformized to frame ``i``, beside the accuracy on the original
clips.

Writes ``table1.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from service.options import opt
from service.research.experiments import common, report
from service.research.experiments.config import AnalysisConfig


@dataclass
class Table1Config(AnalysisConfig, analysis="table1"):
    """Settings of ``shuffleguard analyze table1`` (see the module docstring)."""

    positions: list[int] | None = opt(None, "frames (default all)")


def run_table1(args: Table1Config) -> dict[str, Any]:
    from service.core.transforms import uniformize

    t0 = time.perf_counter()
    model, ckpt, subset, x = common.load_inputs(args)
    T = x.shape[2]
    positions = list(range(T)) if not args.positions else sorted({p % T for p in args.positions})
    original = common.accuracy(common.predict(model, x, batch_size=args.batch_size), subset.labels)
    rows = []
    for i in common.progress_bar(positions, desc="uniformized", enabled=not args.no_progress):
        pred = common.predict(
            model, x, batch_size=args.batch_size, transform=lambda b, _s, i=i: uniformize(b, i, 2)
        )
        rows.append({"frame": i, "accuracy": common.accuracy(pred, subset.labels)})
    accs = [r["accuracy"] for r in rows]
    return report.results(
        args, t0, ckpt, len(subset), frames=T, original_accuracy=original, rows=rows,
        uniformized_mean=sum(accs) / len(accs), uniformized_min=min(accs),
        uniformized_max=max(accs),
    )  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    per = ", ".join(f"{r['frame']}: {report.pct(r['accuracy'])}" for r in res["rows"])
    return "\n".join(
        [
            "# Table 1: accuracy on uniformized clips",
            "",
            f"Top-1 accuracy (%) on {res['clips']} class-stratified test clips when every frame"
            " is replaced by frame i (no motion left), beside the original clips.",
            "",
            *report.produced_by(res["command"]),
            report.markdown_table(
                ["original", "uniformized (mean over i)", "min over i", "max over i"],
                [
                    [
                        report.pct(res["original_accuracy"]),
                        report.pct(res["uniformized_mean"]),
                        report.pct(res["uniformized_min"]),
                        report.pct(res["uniformized_max"]),
                    ]
                ],
                "rrrr",
            ),
            "",
            f"Per frame i: {per}.",
            *report.figure_link("Table 1", "table1"),
        ]
    )


def plot(res: dict[str, Any], path: Any) -> None:
    fig, ax = report.setup_figure(5.0, 3.4)
    xs = [r["frame"] for r in res["rows"]]
    ax.plot(
        xs, [100 * r["accuracy"] for r in res["rows"]], marker="o", label="uniformized to frame i"
    )
    ax.axhline(100 * res["original_accuracy"], color="C1", linestyle="--", label="original clips")
    ax.axhline(100 / 8, color="gray", linestyle=":", linewidth=1, label="chance (8 classes)")
    report.style_axes(ax, "Table 1: uniformized clips", "frame i")
    report.save_figure(fig, path)


#: ``table1.csv``: (column, format) per row.
FIELDS = (("frame", ""), ("accuracy", ".4f"), ("original_accuracy", ".4f"))  # fmt: skip


def _summary(res: dict[str, Any]) -> list[str]:
    return [
        f"original {100 * res['original_accuracy']:.1f}%, uniformized mean "
        f"{100 * res['uniformized_mean']:.1f}% (min {100 * res['uniformized_min']:.1f}%)"
    ]


def _table(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [{**r, "original_accuracy": res["original_accuracy"]} for r in res["rows"]]
    return report.csv_table(rows, FIELDS)


def run(args: Table1Config) -> int:
    return report.run_analysis(
        args, run_table1, table=_table, markdown=markdown, plot=plot, summary=_summary
    )
