"""Fig. 7: accuracy vs monotonic ratio of the frame order (paper Sec. 3.3).

Why does a model survive frame-order randomization? The paper's answer: the first
temporal convolution still sees many windows whose frames are in increasing order.
For a first conv layer of temporal kernel ``k``, stride ``s`` and padding ``p`` (read
from the model), the *monotonic ratio* of an order is the share of its windows with
strictly increasing frame numbers (:func:`service.core.transforms.monotonic_ratio`).

We draw frame orders -- chunk-wise randomizations of every chunk size ``2..T``, and
Algorithm 1 shuffles for ``h1`` in ``--h1s`` (``h2 = 1``) -- apply each order to every
test clip, and plot the accuracy against the order's monotonic ratio, with Pearson
and Spearman correlations.

Writes ``fig7.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from service.options import opt
from service.research.experiments import common, report
from service.research.experiments.config import AnalysisConfig


@dataclass
class Fig7Config(AnalysisConfig, analysis="fig7"):
    """Settings of ``shuffleguard analyze fig7`` (see the module docstring)."""

    orders: int = opt(5, "orders drawn per chunk size / h1", show="always")
    chunk_sizes: list[int] | None = opt(None, "chunk sizes (default 2..T)")
    h1s: list[int] = opt([1, 2, 3, 4], "Algorithm 1 h1s", show="always")
    seed: int = opt(0, "seed of the orders", show="always")

    def check(self) -> None:
        super().check()
        if self.orders < 1:
            raise ValueError("--orders must be >= 1")


def _orders(T: int, args: Fig7Config) -> list[tuple[str, list[int]]]:
    from service.core.ensemble import shuffle_indices
    from service.core.transforms import chunk_shuffle_indices

    out: list[tuple[str, list[int]]] = [("identity", list(range(T)))]
    chunks = [c for c in range(2, T + 1) if c in (args.chunk_sizes or range(2, T + 1))]
    for c in chunks:
        idx = chunk_shuffle_indices(T, c, args.orders, generator=common.generator(args.seed, 1, c))
        out += [(f"chunk {c}", row.tolist()) for row in idx]
    for h1 in args.h1s:
        idx = shuffle_indices(T, h1, 1, args.orders, generator=common.generator(args.seed, 2, h1))
        out += [(f"algorithm1 h1={h1}", row.tolist()) for row in idx]
    return out


def run_fig7(args: Fig7Config) -> dict[str, Any]:
    from scipy.stats import pearsonr, spearmanr

    from service.core.transforms import monotonic_ratio

    t0 = time.perf_counter()
    model, ckpt, subset, x = common.load_inputs(args)
    T = x.shape[2]
    k, s, p = common.first_conv_temporal(model)
    points = []
    orders = _orders(T, args)
    for source, order in common.progress_bar(orders, desc="orders", enabled=not args.no_progress):
        idx = torch.tensor(order, dtype=torch.int64)

        def transform(b: torch.Tensor, _s: int, idx: torch.Tensor = idx) -> torch.Tensor:
            return b.index_select(2, idx.to(b.device))

        pred = common.predict(model, x, batch_size=args.batch_size, transform=transform)
        points.append(
            {
                "source": source,
                "order": order,
                "monotonic_ratio": monotonic_ratio(order, k, s, p),
                "accuracy": common.accuracy(pred, subset.labels),
            }
        )
    xs = [q["monotonic_ratio"] for q in points]
    ys = [q["accuracy"] for q in points]
    varied = len(set(xs)) > 1 and len(set(ys)) > 1
    return report.results(
        args, t0, ckpt, len(subset), frames=T, first_conv={"kernel": k, "stride": s, "padding": p},
        points=points, pearson=float(pearsonr(xs, ys)[0]) if varied else None,
        spearman=float(spearmanr(xs, ys)[0]) if varied else None,
    )  # fmt: skip


def _corr(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(res: dict[str, Any]) -> str:
    fc = res["first_conv"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for q in res["points"]:
        groups.setdefault(q["source"], []).append(q)
    body = [
        [
            src,
            len(qs),
            f"{sum(q['monotonic_ratio'] for q in qs) / len(qs):.3f}",
            report.pct(sum(q["accuracy"] for q in qs) / len(qs)),
        ]
        for src, qs in groups.items()
    ]
    return "\n".join(
        [
            "# Fig. 7: accuracy vs monotonic ratio",
            "",
            f"Each point: one frame order applied to all {res['clips']} test clips. Monotonic ratio"
            f" for the model's first conv layer (temporal kernel {fc['kernel']}, stride"
            f" {fc['stride']}, padding {fc['padding']}). Pearson r = {_corr(res['pearson'])},"
            f" Spearman rho = {_corr(res['spearman'])} over {len(res['points'])} orders.",
            "",
            *report.produced_by(res["command"]),
            report.markdown_table(
                ["orders", "count", "mean monotonic ratio", "mean accuracy (%)"], body
            ),
            *report.figure_link("Fig. 7", "fig7"),
        ]
    )


def plot(res: dict[str, Any], path: Any) -> None:
    fig, ax = report.setup_figure(5.2, 3.8)
    kinds = sorted({q["source"].split(" ")[0] for q in res["points"]})
    for kind, marker in zip(kinds, "o^sD", strict=False):
        qs = [q for q in res["points"] if q["source"].split(" ")[0] == kind]
        ax.scatter(
            [q["monotonic_ratio"] for q in qs],
            [100 * q["accuracy"] for q in qs],
            marker=marker,
            s=18,
            alpha=0.7,
            label=kind,
        )
    report.style_axes(
        ax, f"Fig. 7: Pearson r = {_corr(res['pearson'])}", "monotonic ratio of the frame order"
    )
    report.save_figure(fig, path)


#: ``fig7.csv``: (column, format) per row.
FIELDS = (("source", ""), ("order", ""), ("monotonic_ratio", ".4f"), ("accuracy", ".4f"))


def _summary(res: dict[str, Any]) -> list[str]:
    return [
        f"{len(res['points'])} orders: Pearson {_corr(res['pearson'])},"
        f" Spearman {_corr(res['spearman'])}"
    ]


def _table(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    points = [{**q, "order": " ".join(map(str, q["order"]))} for q in res["points"]]
    return report.csv_table(points, FIELDS)


def run(args: Fig7Config) -> int:
    return report.run_analysis(
        args, run_fig7, table=_table, markdown=markdown, plot=plot, summary=_summary
    )
