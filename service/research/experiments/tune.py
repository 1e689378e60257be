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

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from service.core.presets import ShufflePreset
from service.options import opt, out_opt
from service.research.experiments import common, report
from service.research.experiments.config import AnalysisConfig, attack_batch_opt
from service.research.robustness.attacks import EOT
from service.research.robustness.registry import DEFENSE_ROWS, RowContext

__all__ = [
    "TuneConfig", "choose_cell", "choose_ensemble", "run", "run_tune", "tune_on", "write_preset",
]  # fmt: skip

#: The attacks tune measures (names of the attack registry).
TUNE_ATTACKS: tuple[str, ...] = ("ifgsm", "eot")


@dataclass
class TuneConfig(AnalysisConfig):
    """Settings of ``shuffleguard tune`` (see the module docstring)."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "tune")

    split: str = opt("val", "clips to use (default val: the train clips training held out)",
                     choices=("test", "val", "train", "all"))  # fmt: skip
    out: str = out_opt("docs/results/tune")
    h1s: list[int] = opt([1, 2, 3, 4, 8, 16], "grid h1 values", show="always")
    h2s: list[int] = opt([1, 2, 4], "grid h2 values", show="always")
    ensembles: list[int] = opt([1, 3, 5, 10, 20], "ensemble sizes (Table 4)", show="always")
    grid_ensemble: int = opt(10, "ensemble size on the grid", show="always")
    attacks: list[str] = opt(list(TUNE_ATTACKS), "attacks", show="always", choices=TUNE_ATTACKS)
    seeds: list[int] = opt([0], "seeds", show="always")
    clean_ratio: float = opt(0.95, "clean floor vs undefended", show="always")
    tolerance: float = opt(0.01, "ensemble-size tolerance", show="always")
    attack_batch: int = attack_batch_opt()
    archive_meta: str | None = opt(None, "meta.json whose preset to update")
    no_preset: bool = opt(
        False, "report only: write no <checkpoint>.preset.json and leave --archive-meta alone"
    )

    def check(self) -> None:
        super().check()
        if min(self.h1s) < 0 or min(self.h2s) < 1 or min(self.ensembles) < 1:
            raise ValueError("need h1 >= 0, h2 >= 1 and ensemble sizes >= 1")
        if self.grid_ensemble < 1:
            raise ValueError("need --grid-ensemble >= 1")
        self.h1s, self.h2s = sorted(set(self.h1s)), sorted(set(self.h2s))
        self.ensembles = sorted(set(self.ensembles))
        self.attacks = [a for a in TUNE_ATTACKS if a in self.attacks]


def _ensemble_accuracy(
    model: nn.Module,
    clips: torch.Tensor,
    labels: torch.Tensor,
    ids: list[int],
    preset: ShufflePreset,
    seeds: list[int],
    tag: int,
) -> float:
    """Mean over seeds of the ``shuffle`` row's accuracy; per-clip generators from
    (seed, tag, preset, clip)."""
    defense = DEFENSE_ROWS["shuffle"].build(RowContext(model, 0, preset))
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
    config: TuneConfig,
) -> torch.Tensor:
    """EOT clips adaptive to ``preset``'s shuffles (one set of draws per attack batch)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, x.shape[0], config.attack_batch):
        attack = EOT(model, preset, seed=common.derive_seed(seed, preset.h1, preset.h2, start))
        xb = x[start : start + config.attack_batch].to(device)
        out.append(attack(xb, labels[start : start + config.attack_batch].to(device)).cpu())
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


@dataclass
class _Inputs:
    model: nn.Module
    x: torch.Tensor
    labels: torch.Tensor
    ids: list[int]
    attacked: dict[str, torch.Tensor]


def _accuracies(
    inp: _Inputs, preset: ShufflePreset, config: TuneConfig, tags: tuple[int, int, int],
    eot: list[torch.Tensor] | None,
) -> dict[str, Any]:  # fmt: skip
    """Clean, I-FGSM and EOT accuracy of the ensemble ``preset``; ``tags`` seed each."""
    acc = functools.partial(_ensemble_accuracy, inp.model, labels=inp.labels, ids=inp.ids,
                            preset=preset)  # fmt: skip
    out: dict[str, Any] = {"clean": acc(inp.x, seeds=config.seeds, tag=tags[0])}
    if "ifgsm" in config.attacks:
        out["ifgsm"] = acc(inp.attacked["ifgsm"], seeds=config.seeds, tag=tags[1])
    if eot is not None:
        accs = [acc(a, seeds=[s], tag=tags[2]) for a, s in zip(eot, config.seeds, strict=True)]
        out["eot"] = sum(accs) / len(accs)
    out["worst"] = min(out[a] for a in config.attacks)
    return out


def _grid(inp: _Inputs, config: TuneConfig) -> tuple[list[dict[str, Any]], dict[Any, Any]]:
    """Fig. 10: every (h1, h2) cell; and the EOT clips of each cell (for Table 4)."""
    cells, eot_clips = [], {}
    grid = [(h1, h2) for h1 in config.h1s for h2 in config.h2s]
    for h1, h2 in common.progress_bar(
        grid, desc="h1 x h2 grid", unit="cell", enabled=not config.no_progress
    ):
        preset = ShufflePreset(h1, h2, config.grid_ensemble)
        eot = None
        if "eot" in config.attacks:
            eot = [
                _eot_clips(inp.model, inp.x, inp.labels, preset, s, config) for s in config.seeds
            ]
            eot_clips[(h1, h2)] = eot
        cells.append({"h1": h1, "h2": h2, **_accuracies(inp, preset, config, (0, 1, 2), eot)})
    return cells, eot_clips


def run_tune(config: TuneConfig) -> dict[str, Any]:
    """The grid, the chosen cell, the ensemble sizes and the chosen preset."""
    t0 = time.perf_counter()
    model, ckpt, subset, x = common.load_inputs(config)
    res = tune_on(config, model, x, subset.labels, subset.index)
    res["dataset"] = ckpt.get("dataset")
    res["seconds"] = time.perf_counter() - t0
    return res


def tune_on(
    config: TuneConfig, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, ids: list[int]
) -> dict[str, Any]:
    """The tune of :func:`run_tune` on clips already loaded (``shuffleguard audit`` tunes a
    served network on a user's clips this way): float ``x [N, 3, T, H, W]`` in ``[0, 1]``,
    ``labels [N]``, stable clip ``ids`` (they seed the per-clip draws). ``config`` gives
    the grid, the attacks, the seeds and the rule; its ``checkpoint``, ``data``, ``split``
    and ``clips`` are not read here (``adv_cache`` is, with ``checkpoint`` and ``data``)."""
    t0 = time.perf_counter()
    undefended = common.accuracy(common.predict(model, x, batch_size=config.batch_size), labels)
    attacked = {}
    if "ifgsm" in config.attacks:
        attacked["ifgsm"], _ = common.ifgsm_for(config, model, x, labels, ids)
    inp = _Inputs(model, x, labels, ids, attacked)
    cells, eot_clips = _grid(inp, config)
    floor = config.clean_ratio * undefended
    chosen = choose_cell(cells, floor)
    h1, h2 = chosen["h1"], chosen["h2"]
    ens_rows = [
        {"ensemble": n, **_accuracies(inp, ShufflePreset(h1, h2, n), config, (10, 11, 12),
                                      eot_clips.get((h1, h2)))}
        for n in config.ensembles
    ]  # fmt: skip
    chosen_n = choose_ensemble(ens_rows, config.tolerance)
    return {
        "analysis": "tune", "command": config.command(), "clips": len(ids),
        "split": config.split, "undefended_clean": undefended, "clean_floor": floor,
        "attacks": list(config.attacks), "grid_ensemble": config.grid_ensemble,
        "cells": cells, "chosen_cell": chosen, "ensembles": ens_rows,
        "chosen_ensemble": chosen_n,
        "preset": ShufflePreset(h1, h2, chosen_n["ensemble"]).to_dict(),
        "criterion": (
            f"max worst-case accuracy over {list(config.attacks)} among cells with clean >= "
            f"{config.clean_ratio} x undefended clean ({100 * floor:.1f}%); ties: higher clean, "
            f"smaller h1, larger h2; ensemble: smallest within {config.tolerance} of the best"
        ),
        "seconds": time.perf_counter() - t0, "environment": report.environment(config.device),
    }  # fmt: skip


def run(config: TuneConfig) -> int:
    """``shuffleguard tune``: run, write the report and (unless ``--no-preset``) the preset."""
    common.prepare_torch(config.device, config.threads, "shuffleguard tune")
    res = run_tune(config)
    paths = write_outputs(res, config.out)
    written = [] if config.no_preset else write_preset(res, config.checkpoint, config.archive_meta)
    p, c = res["preset"], res["chosen_cell"]
    print(
        f"chosen preset h1={p['h1']} h2={p['h2']} ensemble={p['ensemble']}: clean "
        f"{100 * c['clean']:.1f}%, worst case {100 * c['worst']:.1f}% (undefended clean "
        f"{100 * res['undefended_clean']:.1f}%)"
    )
    print(f"wrote {', '.join(map(str, paths + written))}")
    if config.archive_meta and not config.no_preset:
        print(
            f"rebuild the archive: shuffleguard archive --checkpoint {config.checkpoint}"
            f" --name <name> --h1 {p['h1']} --h2 {p['h2']} --ensemble {p['ensemble']}"
        )
    return 0


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
    report.write_json(sidecar, payload)
    written = [sidecar]
    if archive_meta:
        path = Path(archive_meta)
        meta = json.loads(path.read_text())
        meta["preset"] = dict(results["preset"])
        path.write_text(json.dumps(meta, indent=2) + "\n")
        written.append(path)
    return written


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
            report.pct(c["clean"]),
            *[report.pct(c[a]) for a in attacks],
            report.pct(c["worst"])
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
            f" 4/255). Undefended clean accuracy {report.pct(res['undefended_clean'])}%.",
            "",
            *report.produced_by(res["command"]),
            report.markdown_table(header, body, "rr" + "r" * (len(header) - 2)),
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
            report.pct(r["clean"]),
            *[report.pct(r[a]) for a in attacks],
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
            *report.produced_by(res["command"]),
            report.markdown_table(header, body),
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
    fig, ax = report.setup_figure(4.6, 3.4)
    ns = [r["ensemble"] for r in res["ensembles"]]
    for key in ["clean", *res["attacks"]]:
        label = {"clean": "clean", "ifgsm": "I-FGSM", "eot": "EOT (adaptive)"}[key]
        ax.plot(ns, [100 * r[key] for r in res["ensembles"]], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    report.style_axes(ax, "Table 4: ensemble size", "ensemble size")
    report.save_figure(fig, path)


def write_outputs(res: dict[str, Any], out: str | Path) -> list[Path]:
    """``fig10.{csv,json,md,png}`` (the grid) and ``table4.{...}`` (ensemble sizes)."""
    scores = [(k, ".4f") for k in ("clean", *res["attacks"], "worst")]
    header, rows = report.csv_table(res["cells"], [("h1", ""), ("h2", ""), *scores])
    paths = report.write_report(
        out, "fig10", results=res, header=header, rows=rows,
        markdown=fig10_markdown(res), plot=lambda p: plot_fig10(res, p),
    )  # fmt: skip
    header, rows = report.csv_table(res["ensembles"], [("ensemble", ""), *scores])
    paths += report.write_report(
        out, "table4", results={k: v for k, v in res.items() if k != "cells"}, header=header,
        rows=rows, markdown=table4_markdown(res), plot=lambda p: plot_table4(res, p),
    )  # fmt: skip
    return paths
