"""``audit.png``: every figure with its interval, the chance level, the clean floor and
the verdict's threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.research.experiments import report
from service.research.experiments.audit.config import TITLES

__all__ = ["plot"]


def plot(res: dict[str, Any], path: Path) -> None:
    fig_, ax = report.setup_figure(6.4, 4.6)
    names = list(TITLES)
    figs = [res["figures"][f"{m}/{r}"] for m, r in names]
    ys = list(range(len(names)))[::-1]
    acc = [100 * f["accuracy"] for f in figs]
    err = [[100 * (f["accuracy"] - f["low"]) for f in figs],
           [100 * (f["high"] - f["accuracy"]) for f in figs]]  # fmt: skip
    colors = ["tab:blue" if r == "none" else "tab:orange" for _, r in names]
    ax.barh(ys, acc, xerr=err, color=colors, capsize=3)
    ax.set_yticks(ys, [TITLES[n] for n in names], fontsize=8)
    ax.axvline(100 * res["chance"], color="grey", ls=":", label="chance")
    ax.axvline(100 * res["verdict"]["floor"], color="tab:red", ls="--", label="clean floor")
    ax.axvline(100 * res["verdict"]["half"], color="tab:green", ls="-.", label="half of clean")
    ax.set_xlim(0, 105)
    ax.set_xlabel(f"accuracy (%), {100 * res['level']:.0f}% intervals")
    ax.set_title(f"audit of {res['model']}: {res['verdict']['code']}", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    report.save_figure(fig_, path)
