"""Tuning the shuffle defense: the h1 x h2 grid (paper Fig. 10) and ensemble sizes (Table 4).

For every ``(h1, h2)`` of the grid, the shuffle ensemble (``--grid-ensemble`` copies)
classifies the clean clips, I-FGSM clips crafted once against the undefended model
(the paper's setting) and EOT clips adaptive to that cell's shuffles (30 steps x 10
draws). Then, at the chosen ``(h1, h2)``, ensembles of each size in ``--ensembles``
classify the same clips (Table 4; the EOT clips of that cell are reused: EOT's
gradient does not depend on the ensemble size).

Choice (written down, so it is reproducible): among cells whose clean accuracy is at
least ``--clean-ratio`` (0.95) of the undefended clean accuracy, the highest
*worst-case* attacked accuracy (minimum over the attacks run); ties go to the higher
clean accuracy, then the smaller ``h1``, then the larger ``h2``. The ensemble size is
the smallest whose clean and worst-case accuracies are within ``--tolerance`` of the
best size's.

Tuning runs on ``--split val`` by default: the train clips that training held out for
validation (the checkpoint's ``val_fraction``), so neither fitted clips nor the reported
test clips play a part in choosing the preset (``--split train`` for a checkpoint
trained without a holdout).

Writes ``fig10.{csv,json,md,png}`` and ``table4.{csv,json,md,png}`` in ``--out``, the
preset to ``<checkpoint>.preset.json`` (read by ``evaluate`` and the analyses) and,
with ``--archive-meta``, into that ``meta.json``'s ``preset`` (then rebuild the
``.mar`` with ``shuffleguard archive --h1 --h2 --ensemble``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.defense import ShufflePreset
from service.experiments import common

__all__ = ["choose_cell", "choose_ensemble", "run_tune", "write_preset"]


def _ensemble_accuracy(
    model: nn.Module,
    clips: torch.Tensor,
    labels: torch.Tensor,
    ids: list[int],
    preset: ShufflePreset,
    seeds: list[int],
    tag: int,
    batch_size: int,
) -> float:
    """Mean over seeds of the ensemble's accuracy; per-clip generators from (seed, tag, clip)."""
    from service.robustness.smoothing import ShuffleDefense

    defense = ShuffleDefense(model, preset, batch_size=batch_size)
    device = next(model.parameters()).device
    accs = []
    for s in seeds:
        correct = 0
        for i in range(clips.shape[0]):
            gen = common.generator(s, tag, preset.h1, preset.h2, preset.ensemble, ids[i])
            correct += int(defense.predict(clips[i : i + 1].to(device), gen)[0]) == int(labels[i])
        accs.append(correct / clips.shape[0])
    return sum(accs) / len(accs)


def _eot_clips(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    preset: ShufflePreset,
    seed: int,
    args: Any,
) -> torch.Tensor:
    from service.robustness.adaptive import AdaptiveEOT

    device = next(model.parameters()).device
    out = []
    for start in range(0, x.shape[0], args.attack_batch):
        attack = AdaptiveEOT(
            model, preset=preset, seed=common.derive_seed(seed, preset.h1, preset.h2, start)
        )
        xb = x[start : start + args.attack_batch].to(device)
        out.append(attack(xb, labels[start : start + args.attack_batch].to(device)).cpu())
    return torch.cat(out)


def choose_cell(cells: list[dict[str, Any]], clean_floor: float) -> dict[str, Any]:
    """The grid cell chosen by the rule in the module docstring."""
    eligible = [c for c in cells if c["clean"] >= clean_floor - 1e-12] or cells
    return max(eligible, key=lambda c: (c["worst"], c["clean"], -c["h1"], c["h2"]))


def choose_ensemble(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The smallest ensemble within ``tolerance`` of the best size on clean and worst case."""
    best_worst = max(r["worst"] for r in rows)
    best_clean = max(r["clean"] for r in rows)
    ok = [
        r
        for r in rows
        if r["worst"] >= best_worst - tolerance and r["clean"] >= best_clean - tolerance
    ]
    return min(ok, key=lambda r: r["ensemble"])


def run_tune(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    model, ckpt, subset, x = common.load_inputs(args)
    labels, ids = subset.labels, subset.index
    undefended = common.accuracy(common.predict(model, x, batch_size=args.batch_size), labels)
    attacked: dict[str, torch.Tensor] = {}
    if "ifgsm" in args.attacks:
        attacked["ifgsm"], _ = common.ifgsm_for(args, model, x, labels, ids)
    cells: list[dict[str, Any]] = []
    eot_cache: dict[tuple[int, int], list[torch.Tensor]] = {}
    grid = [(h1, h2) for h1 in args.h1s for h2 in args.h2s]
    for h1, h2 in tqdm(grid, desc="h1 x h2 grid", unit="cell", disable=args.no_progress):
        preset = ShufflePreset(h1, h2, args.grid_ensemble)
        cell: dict[str, Any] = {"h1": h1, "h2": h2}
        cell["clean"] = _ensemble_accuracy(
            model, x, labels, ids, preset, args.seeds, 0, args.batch_size
        )
        for a_id, name in enumerate(("ifgsm", "eot"), start=1):
            if name not in args.attacks:
                continue
            if name == "eot":
                advs = [_eot_clips(model, x, labels, preset, s, args) for s in args.seeds]
                eot_cache[(h1, h2)] = advs
                accs = [
                    _ensemble_accuracy(model, a, labels, ids, preset, [s], a_id, args.batch_size)
                    for a, s in zip(advs, args.seeds, strict=True)
                ]
                cell[name] = sum(accs) / len(accs)
            else:
                cell[name] = _ensemble_accuracy(
                    model, attacked[name], labels, ids, preset, args.seeds, a_id, args.batch_size
                )
        cell["worst"] = min(cell[a] for a in args.attacks)
        cells.append(cell)
    floor = args.clean_ratio * undefended
    chosen = choose_cell(cells, floor)
    h1, h2 = chosen["h1"], chosen["h2"]
    ens_rows = []
    for n in args.ensembles:
        preset = ShufflePreset(h1, h2, n)
        row: dict[str, Any] = {"ensemble": n}
        row["clean"] = _ensemble_accuracy(
            model, x, labels, ids, preset, args.seeds, 10, args.batch_size
        )
        if "ifgsm" in args.attacks:
            row["ifgsm"] = _ensemble_accuracy(
                model, attacked["ifgsm"], labels, ids, preset, args.seeds, 11, args.batch_size
            )
        if "eot" in args.attacks:
            accs = [
                _ensemble_accuracy(model, a, labels, ids, preset, [s], 12, args.batch_size)
                for a, s in zip(eot_cache[(h1, h2)], args.seeds, strict=True)
            ]
            row["eot"] = sum(accs) / len(accs)
        row["worst"] = min(row[a] for a in args.attacks)
        ens_rows.append(row)
    chosen_n = choose_ensemble(ens_rows, args.tolerance)
    preset = ShufflePreset(h1, h2, chosen_n["ensemble"])
    return {
        "analysis": "tune",
        "command": command(args),
        "clips": len(subset),
        "split": args.split,
        "undefended_clean": undefended,
        "clean_floor": floor,
        "attacks": list(args.attacks),
        "grid_ensemble": args.grid_ensemble,
        "cells": cells,
        "chosen_cell": chosen,
        "ensembles": ens_rows,
        "chosen_ensemble": chosen_n,
        "preset": preset.to_dict(),
        "criterion": (
            f"max worst-case accuracy over {list(args.attacks)} among cells with clean >= "
            f"{args.clean_ratio} x undefended clean ({100 * floor:.1f}%); ties: higher clean, "
            f"smaller h1, larger h2; ensemble: smallest within {args.tolerance} of the best"
        ),
        "dataset": ckpt.get("dataset"),
        "seconds": time.perf_counter() - t0,
        "environment": common.environment(args.device),
    }


def write_preset(
    results: dict[str, Any], checkpoint: str | Path, archive_meta: str | Path | None
) -> list[Path]:
    """Write ``<checkpoint>.preset.json`` and update ``archive_meta``'s ``preset``."""
    sidecar = Path(str(checkpoint) + ".preset.json")
    payload = {
        "preset": results["preset"],
        "selected_by": "shuffleguard tune",
        "command": results["command"],
        "criterion": results["criterion"],
        "tuned_on": {"split": results["split"], "clips": results["clips"]},
        "chosen_cell": results["chosen_cell"],
        "chosen_ensemble": results["chosen_ensemble"],
    }
    common.write_json(sidecar, payload)
    written = [sidecar]
    if archive_meta:
        path = Path(archive_meta)
        meta = json.loads(path.read_text())
        meta["preset"] = dict(results["preset"])
        path.write_text(json.dumps(meta, indent=2) + "\n")
        written.append(path)
    return written


def command(args: argparse.Namespace) -> str:
    opts = common.common_options(args)
    opts["split"] = args.split if args.split != "val" else None
    opts.update(
        {
            "h1s": args.h1s,
            "h2s": args.h2s,
            "ensembles": args.ensembles,
            "grid_ensemble": args.grid_ensemble,
            "attacks": args.attacks,
            "seeds": args.seeds,
            "clean_ratio": args.clean_ratio,
            "tolerance": args.tolerance,
            "archive_meta": args.archive_meta,
            "no_preset": getattr(args, "no_preset", False),
        }
    )
    return common.command_line(["shuffleguard", "tune"], opts)


# --------------------------------------------------------------------------- #
# Outputs
# --------------------------------------------------------------------------- #
def fig10_markdown(res: dict[str, Any]) -> str:
    attacks = res["attacks"]
    header = [
        "h1",
        "h2",
        "clean",
        *[{"ifgsm": "I-FGSM", "eot": "EOT (adaptive)"}[a] for a in attacks],
        "worst",
    ]
    body = [
        [
            c["h1"],
            c["h2"],
            common.pct(c["clean"]),
            *[common.pct(c[a]) for a in attacks],
            common.pct(c["worst"])
            + (" **chosen**" if c is res["chosen_cell"] or c == res["chosen_cell"] else ""),
        ]
        for c in res["cells"]
    ]
    return "\n".join(
        [
            "# Fig. 10: the h1 x h2 grid",
            "",
            f"Top-1 accuracy (%) of the shuffle ensemble ({res['grid_ensemble']} copies) on"
            f" {res['clips']} class-stratified {res['split']} clips; I-FGSM crafted against the"
            " undefended model, EOT adaptive to each cell's shuffles (30 steps x 10 draws, eps"
            f" 4/255). Undefended clean accuracy {common.pct(res['undefended_clean'])}%.",
            "",
            *common.produced_by(res["command"]),
            common.markdown_table(header, body, "rr" + "r" * (len(header) - 2)),
            "",
            f"Rule: {res['criterion']}.",
            "",
            "![Fig. 10](fig10.png)",
            "",
        ]
    )


def table4_markdown(res: dict[str, Any]) -> str:
    attacks = res["attacks"]
    c = res["chosen_cell"]
    header = [
        "ensemble",
        "clean",
        *[{"ifgsm": "I-FGSM", "eot": "EOT (adaptive)"}[a] for a in attacks],
    ]
    body = [
        [
            r["ensemble"] if r != res["chosen_ensemble"] else f"**{r['ensemble']}** (chosen)",
            common.pct(r["clean"]),
            *[common.pct(r[a]) for a in attacks],
        ]
        for r in res["ensembles"]
    ]
    p = res["preset"]
    return "\n".join(
        [
            "# Table 4: ensemble size",
            "",
            f"Top-1 accuracy (%) at h1 = {c['h1']}, h2 = {c['h2']} on the same {res['clips']}"
            f" {res['split']} clips as Fig. 10. Chosen preset: h1 = {p['h1']}, h2 = {p['h2']},"
            f" ensemble = {p['ensemble']}.",
            "",
            *common.produced_by(res["command"]),
            common.markdown_table(header, body),
            "",
            "![Table 4](table4.png)",
            "",
        ]
    )


def plot_fig10(res: dict[str, Any], path: Path) -> None:
    import numpy as np

    h1s = sorted({c["h1"] for c in res["cells"]})
    h2s = sorted({c["h2"] for c in res["cells"]})
    panels = ["clean", *res["attacks"]]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.0 * len(panels), 3.0), dpi=120, squeeze=False
    )
    for ax, key in zip(axes[0], panels, strict=True):
        grid = np.full((len(h2s), len(h1s)), np.nan)
        for c in res["cells"]:
            grid[h2s.index(c["h2"]), h1s.index(c["h1"])] = 100 * c[key]
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", origin="lower")
        for (r, q), v in np.ndenumerate(grid):
            color = "black" if v > 60 else "white"
            ax.text(q, r, f"{v:.0f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(h1s)), [str(h) for h in h1s])
        ax.set_yticks(range(len(h2s)), [str(h) for h in h2s])
        ax.set_xlabel("h1")
        if key == "clean":
            ax.set_ylabel("h2")
        ax.set_title(
            {"clean": "clean", "ifgsm": "I-FGSM", "eot": "EOT (adaptive)"}[key], fontsize=9
        )
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy (%)")
    fig.savefig(path)
    plt.close(fig)


def plot_table4(res: dict[str, Any], path: Path) -> None:
    fig, ax = common.setup_figure(4.6, 3.4)
    ns = [r["ensemble"] for r in res["ensembles"]]
    for key in ["clean", *res["attacks"]]:
        label = {"clean": "clean", "ifgsm": "I-FGSM", "eot": "EOT (adaptive)"}[key]
        ax.plot(ns, [100 * r[key] for r in res["ensembles"]], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(0, 105)
    ax.set_xlabel("ensemble size")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Table 4: ensemble size", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    common.save_figure(fig, path)


def write_outputs(res: dict[str, Any], out: str | Path) -> list[Path]:
    attacks = res["attacks"]
    paths = common.write_report(
        out,
        "fig10",
        results=res,
        header=["h1", "h2", "clean", *attacks, "worst"],
        rows=[
            [
                c["h1"],
                c["h2"],
                f"{c['clean']:.4f}",
                *[f"{c[a]:.4f}" for a in attacks],
                f"{c['worst']:.4f}",
            ]
            for c in res["cells"]
        ],
        markdown=fig10_markdown(res),
        plot=lambda p: plot_fig10(res, p),
    )
    paths += common.write_report(
        out,
        "table4",
        results={k: v for k, v in res.items() if k != "cells"},
        header=["ensemble", "clean", *attacks, "worst"],
        rows=[
            [
                r["ensemble"],
                f"{r['clean']:.4f}",
                *[f"{r[a]:.4f}" for a in attacks],
                f"{r['worst']:.4f}",
            ]
            for r in res["ensembles"]
        ],
        markdown=table4_markdown(res),
        plot=lambda p: plot_table4(res, p),
    )
    return paths
