"""Table 2: static and framewise perturbations vs regular I-FGSM (paper Sec. 4.2).

Does an adversarial perturbation depend on its temporal position? Three attacks with
the same budget (``eps = 4/255``, 30 steps), crafted against the undefended model:

* **regular** I-FGSM (:class:`~service.research.robustness.attacks.IFGSM`);
* **static** -- one perturbation shared by every frame
  (:class:`~service.research.robustness.attacks.StaticIFGSM`): no temporal pattern at all;
* **framewise** -- each frame's perturbation crafted as a one-frame attack at its own
  position (:class:`~service.research.robustness.attacks.FramewiseIFGSM`, ``T x 30`` steps).

Each is classified as crafted, after a full random permutation of the frames
(chunk size ``T``, ``--draws`` seeded draws), and by the shuffle ensemble (preset as
for ``shuffleguard evaluate``: command line > tune's sidecar > fallback).

Writes ``table2.{csv,json,md,png}`` in ``--out``.
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

ATTACKS = ("clean", "ifgsm", "static", "framewise")
TITLES = {"clean": "clean", "ifgsm": "regular I-FGSM", "static": "static", "framewise": "framewise"}


@dataclass
class Table2Config(AnalysisConfig, analysis="table2"):
    """Settings of ``shuffleguard analyze table2`` (see the module docstring)."""

    attacks: list[str] = opt(list(ATTACKS[1:]), "perturbation kinds", choices=ATTACKS[1:])
    draws: int = opt(3, "seeded full permutations", show="always")
    seed: int = opt(0, "seed of the permutations", show="always")
    h1: int | None = opt(None, "preset (default: tune's sidecar)")
    h2: int | None = opt(None, "preset (default: tune's sidecar)")
    ensemble: int | None = opt(None, "preset (default: tune's sidecar)")
    attack_batch: int = attack_batch_opt()

    def check(self) -> None:
        super().check()
        if self.draws < 1:
            raise ValueError("--draws must be >= 1")


def _permuted_accuracies(
    model: Any, clips: torch.Tensor, labels: torch.Tensor, args: Table2Config
) -> list[float]:
    """Accuracy on ``clips`` with every clip's frames fully permuted, per seeded draw."""
    from service.core.transforms import chunk_shuffle_indices

    T, out = clips.shape[2], []
    for draw in range(args.draws):
        gen = common.generator(args.seed, 1, draw)

        def transform(b: torch.Tensor, _s: int, gen: torch.Generator = gen) -> torch.Tensor:
            return common.gather_time(b, chunk_shuffle_indices(T, T, b.shape[0], generator=gen))

        pred = common.predict(model, clips, batch_size=args.batch_size, transform=transform)
        out.append(common.accuracy(pred, labels))
    return out


def run_table2(args: Table2Config) -> dict[str, Any]:
    from service.research.experiments.evaluate import preset_for_checkpoint
    from service.research.robustness.attacks import IFGSM, FramewiseIFGSM, StaticIFGSM
    from service.research.robustness.registry import DEFENSE_ROWS, RowContext

    t0 = time.perf_counter()
    model, ckpt, subset, x = common.load_inputs(args)
    T = x.shape[2]
    preset, preset_source = preset_for_checkpoint(args.checkpoint, args.h1, args.h2, args.ensemble)
    ensemble = DEFENSE_ROWS["shuffle"].build(RowContext(model, 0, preset))
    factories = {"ifgsm": IFGSM, "static": StaticIFGSM, "framewise": FramewiseIFGSM}
    rows = []
    for a_id, name in enumerate(ATTACKS):
        if name != "clean" and name not in args.attacks:
            continue
        if name == "clean":
            clips, per_clip = x, 0.0
        else:
            clips, per_clip = common.craft_for(
                args, name, factories[name], model, x, subset.labels, subset.index
            )
        as_crafted = common.accuracy(
            common.predict(model, clips, batch_size=args.batch_size), subset.labels
        )
        permuted = _permuted_accuracies(model, clips, subset.labels, args)
        ens_correct = 0
        for i in range(clips.shape[0]):
            gen = common.generator(args.seed, 2, a_id, subset.index[i])
            dev = next(model.parameters()).device
            ens_correct += int(ensemble.predict(clips[i : i + 1].to(dev), gen)[0]) == int(
                subset.labels[i]
            )
        delta = clips - x
        rows.append(
            {
                "attack": name,
                "accuracy": as_crafted,
                "permuted_mean": statistics.fmean(permuted),
                "permuted_std": statistics.pstdev(permuted) if len(permuted) > 1 else 0.0,
                "shuffle_ensemble": ens_correct / clips.shape[0],
                "linf_max": float(delta.abs().amax()),
                "seconds_per_clip": per_clip,
            }
        )
    return report.results(
        args, t0, ckpt, len(subset), frames=T, preset=preset.to_dict(),
        preset_source=preset_source, rows=rows,
    )  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    p = res["preset"]
    body = [
        [
            TITLES[r["attack"]],
            report.pct(r["accuracy"]),
            f"{report.pct(r['permuted_mean'])} ± {report.pct(r['permuted_std'])}",
            report.pct(r["shuffle_ensemble"]),
            f"{255 * r['linf_max']:.2f}/255",
        ]
        for r in res["rows"]
    ]
    return "\n".join(
        [
            "# Table 2: static / framewise perturbations vs regular I-FGSM",
            "",
            f"Top-1 accuracy (%) on {res['clips']} test clips. Attacks crafted against the"
            " undefended model (eps 4/255, 30 steps; framewise = one-frame attacks merged),"
            " classified as crafted, after a full random permutation of the frames (mean ± std"
            f" over seeded draws), and by the shuffle ensemble (h1 = {p['h1']}, h2 = {p['h2']},"
            f" {p['ensemble']} copies; {res['preset_source']}).",
            "",
            *report.produced_by(res["command"]),
            report.markdown_table(
                ["perturbation", "as crafted", "frames permuted", "shuffle ensemble", "L-inf"], body
            ),
            *report.figure_link("Table 2", "table2"),
        ]
    )


def plot(res: dict[str, Any], path: Any) -> None:
    import numpy as np

    fig, ax = report.setup_figure(5.4, 3.6)
    names = [TITLES[r["attack"]] for r in res["rows"]]
    xs = np.arange(len(names))
    for j, (key, label) in enumerate(
        (
            ("accuracy", "as crafted"),
            ("permuted_mean", "frames permuted"),
            ("shuffle_ensemble", "shuffle ensemble"),
        )
    ):
        ax.bar(xs + (j - 1) * 0.27, [100 * r[key] for r in res["rows"]], width=0.27, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels(names)
    report.style_axes(ax, "Table 2: does the perturbation depend on time?", grid="y")
    report.save_figure(fig, path)


#: ``table2.csv``: (column, format) per row.
FIELDS = (
    ("attack", ""), ("accuracy", ".4f"), ("permuted_mean", ".4f"), ("permuted_std", ".4f"),
    ("shuffle_ensemble", ".4f"), ("linf_max", ".6f"), ("seconds_per_clip", ".3f"),
)  # fmt: skip


def _summary(res: dict[str, Any]) -> list[str]:
    return [
        f"{r['attack']:>10}: {100 * r['accuracy']:.1f}% as crafted,"
        f" {100 * r['permuted_mean']:.1f}% permuted, {100 * r['shuffle_ensemble']:.1f}% ensemble"
        for r in res["rows"]
    ]


def run(args: Table2Config) -> int:
    return report.run_analysis(
        args, run_table2, fields=FIELDS, markdown=markdown, plot=plot, summary=_summary
    )
