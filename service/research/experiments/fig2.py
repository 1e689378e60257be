"""Fig. 2: temporal (chunk) vs spatial (row) randomization (paper Sec. 3.1).

Two ways to scramble a clip with one group size ``N``:

* **chunk** -- the frame order is randomized inside chunks of ``N`` consecutive
  frames (:func:`service.core.transforms.chunk_shuffle_indices`); ``N = T`` is a full random
  permutation of the frames;
* **row** -- the rows of every frame are permuted inside groups of ``N`` rows, the
  same order for all frames (:func:`service.core.transforms.apply_row_shuffle`).

The paper's point: accuracy survives temporal randomization far better than
spatial randomization of the same group size. Each clip gets a fresh draw; each
``N`` is measured over ``--draws`` seeded draws (mean ± std).

Writes ``fig2.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from service.options import opt
from service.research.experiments import common, report
from service.research.experiments.config import AnalysisConfig

KINDS = ("chunk", "row")


@dataclass
class Fig2Config(AnalysisConfig, analysis="fig2"):
    """Settings of ``shuffleguard analyze fig2`` (see the module docstring)."""

    chunk_sizes: list[int] | None = opt(None, "chunk sizes N (default 1,2,4..T)")
    row_sizes: list[int] | None = opt(None, "row group sizes N (default 1,2,4..H)")
    draws: int = opt(3, "seeded draws per N", show="always")
    seed: int = opt(0, "seed of the draws", show="always")

    def check(self) -> None:
        super().check()
        if self.draws < 1:
            raise ValueError("--draws must be >= 1")


def _powers(limit: int) -> list[int]:
    out, n = [], 1
    while n < limit:
        out.append(n)
        n *= 2
    return [*out, limit]


def _randomizer(kind: str, n: int, T: int, gen: torch.Generator) -> Any:
    """``transform(batch, start)`` for :func:`common.predict`: the frame order in chunks
    of ``n`` (``chunk``) or the rows in groups of ``n`` (``row``), drawn from ``gen``."""
    from service.core.transforms import apply_row_shuffle, chunk_shuffle_indices

    def transform(b: torch.Tensor, _s: int) -> torch.Tensor:
        if kind == "chunk":
            return common.gather_time(b, chunk_shuffle_indices(T, n, b.shape[0], generator=gen))
        return torch.stack([apply_row_shuffle(c, n, row_dim=2, generator=gen) for c in b])

    return transform


def run_fig2(args: Fig2Config) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, ckpt, subset, x = common.load_inputs(args)
    T, H = x.shape[2], x.shape[3]
    sizes = {
        "chunk": sorted({n for n in (args.chunk_sizes or _powers(T)) if 1 <= n <= T}),
        "row": sorted({n for n in (args.row_sizes or _powers(H)) if 1 <= n <= H}),
    }
    rows = []
    bar = common.progress_bar(
        [],
        desc="randomizations",
        enabled=not args.no_progress,
        total=sum(1 if n == 1 else args.draws for k in KINDS for n in sizes[k]),
    )
    for kind_id, kind in enumerate(KINDS):
        for n in sizes[kind]:
            accs = []
            for draw in range(1 if n == 1 else args.draws):
                gen = common.generator(args.seed, kind_id, n, draw)

                transform = _randomizer(kind, n, T, gen)
                pred = common.predict(model, x, batch_size=args.batch_size, transform=transform)
                accs.append(common.accuracy(pred, subset.labels))
                bar.update(1)
            rows.append(
                {
                    "kind": kind,
                    "size": n,
                    "accuracy_mean": statistics.fmean(accs),
                    "accuracy_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                    "draws": len(accs),
                }
            )
    bar.close()
    return report.results(args, t0, ckpt, len(subset), frames=T, height=H, rows=rows)


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Fig. 2: frame-order (chunk) vs row randomization",
        "",
        f"Top-1 accuracy (%) on {res['clips']} class-stratified test clips ({res['frames']} frames,"
        f" {res['height']} rows) when the frame order is randomized inside chunks of N frames, or"
        " the rows inside groups of N rows (mean ± std over seeded draws; a fresh draw per clip).",
        "",
        *report.produced_by(res["command"]),
    ]
    body = [
        [
            r["kind"],
            r["size"],
            f"{report.pct(r['accuracy_mean'])} ± {report.pct(r['accuracy_std'])}",
            r["draws"],
        ]
        for r in res["rows"]
    ]
    lines += [report.markdown_table(["randomization", "N", "accuracy (%)", "draws"], body, "lrrr")]
    lines += report.figure_link("Fig. 2", "fig2")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Any) -> None:
    fig, ax = report.setup_figure(5.2, 3.6)
    for kind, marker in zip(KINDS, ("o", "s"), strict=True):
        rs = [r for r in res["rows"] if r["kind"] == kind]
        ax.errorbar(
            [r["size"] for r in rs],
            [100 * r["accuracy_mean"] for r in rs],
            yerr=[100 * r["accuracy_std"] for r in rs],
            marker=marker,
            capsize=3,
            label="frame order in chunks of N" if kind == "chunk" else "rows in groups of N",
        )
    ax.axhline(100 / 8, color="gray", linestyle=":", linewidth=1, label="chance")
    report.style_axes(ax, "Fig. 2: temporal vs spatial randomization", "group size N", logx=True)
    report.save_figure(fig, path)


#: ``fig2.csv``: (column, format) per row.
FIELDS = report.series_fields("kind", "size")


def _summary(res: dict[str, Any]) -> list[str]:
    return report.series_summary(res["rows"], "kind", "size", KINDS)


def run(args: Fig2Config) -> int:
    return report.run_analysis(
        args, run_fig2, fields=FIELDS, markdown=markdown, plot=plot, summary=_summary
    )
