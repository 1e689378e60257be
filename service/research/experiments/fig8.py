"""Fig. 8: accuracy of attacked clips vs chunk size (paper Sec. 4.1).

I-FGSM clips are crafted against the undefended model at full strength
(``eps = 4/255``, 30 steps), then their frame order is randomized inside chunks of
``N`` frames (a fresh draw per clip, ``--draws`` seeded draws per ``N``). The paper's
observation: the perturbation depends on its temporal position, so even a mild
randomization restores much of the accuracy, while the clean clips barely notice.
Both curves, clean and attacked, are reported.

Writes ``fig8.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from service.options import opt
from service.research.experiments import common, report
from service.research.experiments.config import AnalysisConfig, attack_batch_opt


@dataclass
class Fig8Config(AnalysisConfig, analysis="fig8"):
    """Settings of ``shuffleguard analyze fig8`` (see the module docstring)."""

    chunk_sizes: list[int] | None = opt(None, "chunk sizes (default 1,2,4..)")
    draws: int = opt(3, "seeded draws per chunk size", show="always")
    seed: int = opt(0, "seed of the draws", show="always")
    attack_batch: int = attack_batch_opt()


def run_fig8(args: Fig8Config) -> dict[str, Any]:
    from service.core.transforms import chunk_shuffle_indices

    t0 = time.perf_counter()
    model, ckpt, subset, x, adv, per_clip = common.load_attacked(args)
    T = x.shape[2]
    sizes = sorted({n for n in (args.chunk_sizes or [1, 2, 4, 8, 16, 32]) if 1 <= n <= T})
    rows = []
    for kind, clips in (("clean", x), ("ifgsm", adv)):
        for n in sizes:
            accs = []
            for draw in range(1 if n == 1 else args.draws):
                gen = common.generator(args.seed, n, draw)  # same draws for clean and attacked

                def transform(
                    b: torch.Tensor, _s: int, n: int = n, gen: torch.Generator = gen
                ) -> torch.Tensor:
                    return common.gather_time(
                        b, chunk_shuffle_indices(T, n, b.shape[0], generator=gen)
                    )

                pred = common.predict(model, clips, batch_size=args.batch_size, transform=transform)
                accs.append(common.accuracy(pred, subset.labels))
            rows.append(
                {
                    "input": kind,
                    "chunk_size": n,
                    "accuracy_mean": statistics.fmean(accs),
                    "accuracy_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                    "draws": len(accs),
                }
            )
    return report.results(
        args, t0, ckpt, len(subset), frames=T,
        attack={"name": "ifgsm", "eps": 4 / 255, "steps": 30, "seconds_per_clip": per_clip},
        rows=rows,
    )  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    sizes = sorted({r["chunk_size"] for r in res["rows"]})

    def cell(kind: str, n: int) -> str:
        r = next(r for r in res["rows"] if r["input"] == kind and r["chunk_size"] == n)
        return f"{report.pct(r['accuracy_mean'])} ± {report.pct(r['accuracy_std'])}"

    return "\n".join(
        [
            "# Fig. 8: attacked accuracy vs chunk size",
            "",
            f"Top-1 accuracy (%) on {res['clips']} test clips, clean and under I-FGSM (eps 4/255,"
            " 30 steps, crafted against the undefended model), after randomizing the frame order"
            " inside chunks of N frames (mean ± std over seeded draws; N = 1: no randomization).",
            "",
            *report.produced_by(res["command"]),
            report.markdown_table(
                ["input", *[f"N = {n}" for n in sizes]],
                [[k, *[cell(k, n) for n in sizes]] for k in ("clean", "ifgsm")],
            ),
            *report.figure_link("Fig. 8", "fig8"),
        ]
    )


def plot(res: dict[str, Any], path: Any) -> None:
    fig, ax = report.setup_figure(5.0, 3.6)
    for kind, label in (("clean", "clean clips"), ("ifgsm", "I-FGSM clips")):
        rs = [r for r in res["rows"] if r["input"] == kind]
        ax.errorbar(
            [r["chunk_size"] for r in rs],
            [100 * r["accuracy_mean"] for r in rs],
            yerr=[100 * r["accuracy_std"] for r in rs],
            marker="o",
            capsize=3,
            label=label,
        )
    report.style_axes(
        ax, "Fig. 8: chunk-wise frame randomization of attacked clips", "chunk size N", logx=True
    )
    report.save_figure(fig, path)


#: ``fig8.csv``: (column, format) per row.
FIELDS = report.series_fields("input", "chunk_size")


def _summary(res: dict[str, Any]) -> list[str]:
    return report.series_summary(res["rows"], "input", "chunk_size", ("clean", "ifgsm"))


def run(args: Fig8Config) -> int:
    return report.run_analysis(
        args, run_fig8, fields=FIELDS, markdown=markdown, plot=plot, summary=_summary
    )
