"""The regime map: when does temporal shuffling defend? (issue 12, section 1)

The paper explains its defense by *spatial reliance*: its Kinetics models keep 62-69%
of their accuracy on uniformized clips (Table 1, no motion left), so shuffled copies
still carry the class, and the shuffle ensemble holds I-FGSM and adaptive EOT
(Table 5). This analysis puts models of ours along that axis and the paper's four
models beside them: defended accuracy (shuffle ensemble under I-FGSM crafted on the
undefended model, and under the adaptive EOT attack) against uniformized accuracy.

It computes nothing on a model: it collects the reports the other commands wrote,
one directory per model (``--runs``), each holding

* ``table1/table1.json`` -- ``shuffleguard analyze table1`` (uniformized accuracy,
  mean over the frame used, and clean accuracy);
* ``fig2/fig2.json`` -- ``shuffleguard analyze fig2`` with ``--chunk-sizes T``
  (fully permuted clips, paper Fig. 2 at N = T);
* ``table5/table5.json`` -- ``shuffleguard evaluate --defenses none shuffle --attacks
  ifgsm eot`` (undefended and shuffle rows; preset from ``shuffleguard tune``);
* optionally ``tune/fig10.json`` -- the ``shuffleguard tune`` that chose the preset
  (its command is listed with the others).

Every figure carries a 95% Wilson interval (:func:`service.core.stats.wilson`) over its
clips. Uniformized and permuted accuracies are means over frames / draws of
accuracies on the same ``n`` clips; their interval is the Wilson interval of that
mean as a share of ``n`` (the spread of one frame's or one draw's accuracy).

Writes ``regime.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from service.core.stats import wilson
from service.options import ExperimentConfig, opt, out_opt
from service.research.experiments import report

__all__ = ["PAPER", "RegimeConfig", "collect", "load_run", "run", "run_regime"]

#: The paper's four Kinetics-400 models (PAPER_NUMBERS.md): Table 1 uniformized
#: accuracy, and Table 5's shuffle row under I-FGSM and EOT and its none row under
#: I-FGSM, all in %.
PAPER: dict[str, dict[str, float]] = {
    "I3D": {"uniformized": 69.1, "shuffle_ifgsm": 94.1, "shuffle_eot": 97.6, "none_ifgsm": 0.3},
    "SlowFast": {
        "uniformized": 69.4, "shuffle_ifgsm": 89.1, "shuffle_eot": 94.8, "none_ifgsm": 2.3
    },
    "ir-CSN": {"uniformized": 62.3, "shuffle_ifgsm": 70.3, "shuffle_eot": 74.3, "none_ifgsm": 8.3},
    "X3D": {"uniformized": 67.4, "shuffle_ifgsm": 37.6, "shuffle_eot": 52.2, "none_ifgsm": 1.8},
}  # fmt: skip

#: (defense row, attack column) of ``table5.json`` -> our name of the figure
CELLS: dict[tuple[str, str], str] = {
    ("none", "clean"): "clean",
    ("none", "ifgsm"): "none_ifgsm",
    ("none", "eot"): "none_eot",
    ("shuffle", "clean"): "shuffle_clean",
    ("shuffle", "ifgsm"): "shuffle_ifgsm",
    ("shuffle", "eot"): "shuffle_eot",
}

#: the figures of a model, in table order
FIGURES = (
    "clean", "uniformized", "permuted", "none_ifgsm", "none_eot",
    "shuffle_clean", "shuffle_ifgsm", "shuffle_eot",
)  # fmt: skip
#: figures a run may lack (an evaluation without ``--attacks eot``, or one still running)
OPTIONAL = ("none_eot", "shuffle_eot")


@dataclass
class RegimeConfig(ExperimentConfig):
    """Settings of ``shuffleguard analyze regime`` (see the module docstring)."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "analyze", "regime")

    runs: list[str] = opt(
        help="one directory per model holding table1/, fig2/ and table5/ reports", show="always"
    )
    names: list[str] | None = opt(None, "one label per run (default: the directory name)")
    out: str = out_opt("docs/results/regime")

    def check(self) -> None:
        if not self.runs:
            raise ValueError("--runs needs at least one directory")
        if self.names is not None and len(self.names) != len(self.runs):
            raise ValueError(f"--names gives {len(self.names)} labels for {len(self.runs)} runs")


def _figure(accuracy: float, n: int) -> dict[str, Any]:
    """An accuracy on ``n`` clips with its Wilson interval (the mean of several
    accuracies on the same clips counts as ``round(accuracy * n)`` of ``n``)."""
    low, high = wilson(round(accuracy * n), n)
    return {"accuracy": accuracy, "n": n, "wilson_low": low, "wilson_high": high}


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"missing {path} (see `shuffleguard analyze regime --help`)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_run(directory: str | Path, name: str | None = None) -> dict[str, Any]:
    """One model's figures from its ``table1``, ``fig2`` and ``table5`` reports."""
    d = Path(directory)
    t1 = _read(d / "table1" / "table1.json")
    f2 = _read(d / "fig2" / "fig2.json")
    t5 = _read(d / "table5" / "table5.json")
    frames = int(f2["frames"])
    full = [r for r in f2["rows"] if r["kind"] == "chunk" and int(r["size"]) == frames]
    if not full:
        raise ValueError(f"{d / 'fig2'}: no N = T = {frames} (run it with --chunk-sizes {frames})")
    figures: dict[str, Any] = {
        "uniformized": _figure(float(t1["uniformized_mean"]), int(t1["clips"])),
        "permuted": _figure(float(full[0]["accuracy_mean"]), int(f2["clips"])),
    }
    for cell in t5["cells"]:
        key = CELLS.get((cell["defense"], cell["attack"]))
        if key is not None:
            figures[key] = {
                "accuracy": cell["accuracy"], "n": cell["n"],
                "wilson_low": cell["wilson_low"], "wilson_high": cell["wilson_high"],
                "complete": bool(cell.get("complete", True)),
            }  # fmt: skip
    missing = [k for k in FIGURES if k not in figures and k not in OPTIONAL]
    if missing:
        raise ValueError(f"{d / 'table5'}: no {missing} cells (evaluate --defenses none shuffle)")
    config = t5.get("config", {})
    commands = {"table1": t1["command"], "fig2": f2["command"], "evaluate": t5["command"]}
    tune = d / "tune" / "fig10.json"
    if tune.is_file():  # the preset's search (`shuffleguard tune`), when it is kept beside
        commands = {"tune": _read(tune)["command"], **commands}
    return {
        "name": name or d.name,
        "dir": str(d),
        "dataset": (t5.get("model") or {}).get("dataset"),
        "preset": t5.get("preset"),
        "preset_source": t5.get("preset_source"),
        "eps": config.get("eps"),
        "reduced_strength": t5.get("reduced_strength", []),
        "table1_clips": int(t1["clips"]),
        "table1_original": float(t1["original_accuracy"]),
        "figures": figures,
        "commands": commands,
    }


def collect(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The models sorted by uniformized accuracy (the map's x axis)."""
    return sorted(runs, key=lambda r: r["figures"]["uniformized"]["accuracy"])


def run_regime(args: RegimeConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    names = args.names or [Path(d).name for d in args.runs]
    models = collect([load_run(d, n) for d, n in zip(args.runs, names, strict=True)])
    return {
        "analysis": "regime",
        "command": args.command(),
        "models": models,
        "paper": PAPER,
        "seconds": time.perf_counter() - t0,
    }


def _cell(f: dict[str, Any] | None) -> str:
    """``acc (low-high)``; a cell still missing clips says so, one not run is ``-``."""
    if f is None:
        return "-"
    if not f.get("complete", True):
        return f"incomplete ({f['n']} clips so far)"
    low, high = report.pct(f["wilson_low"], 0), report.pct(f["wilson_high"], 0)
    return f"{report.pct(f['accuracy'])} ({low}-{high})"


def _complete(m: dict[str, Any], key: str) -> bool:
    f = m["figures"].get(key)
    return f is not None and bool(f.get("complete", True))


def _errors(models: list[dict[str, Any]], key: str) -> tuple[list[float], list[list[float]]]:
    """Values (%) of figure ``key`` and their asymmetric Wilson error bars (matplotlib's)."""
    fs = [m["figures"][key] for m in models]
    values = [100 * f["accuracy"] for f in fs]
    below = [v - 100 * f["wilson_low"] for v, f in zip(values, fs, strict=True)]
    above = [100 * f["wilson_high"] - v for v, f in zip(values, fs, strict=True)]
    return values, [below, above]


def markdown(res: dict[str, Any]) -> str:
    head = ["model", "clean", "uniformized", "permuted (N = T)", "undef. I-FGSM", "shuffle clean",
            "shuffle I-FGSM", "shuffle EOT", "preset", "eps", "clips (T5)"]  # fmt: skip
    body = []
    for m in res["models"]:
        f, p = m["figures"], m["preset"] or {}
        eps = f"{255 * m['eps']:.0f}/255" if m["eps"] else "-"
        body.append(
            [m["name"], _cell(f["clean"]), _cell(f["uniformized"]), _cell(f["permuted"]),
             _cell(f["none_ifgsm"]), _cell(f["shuffle_clean"]), _cell(f["shuffle_ifgsm"]),
             _cell(f.get("shuffle_eot")), f"{p.get('h1')}/{p.get('h2')}/{p.get('ensemble')}",
             eps, f["shuffle_ifgsm"]["n"]]
        )  # fmt: skip
    paper = [
        [k, "100", f"{v['uniformized']:.1f}", "-", f"{v['none_ifgsm']:.1f}", "-",
         f"{v['shuffle_ifgsm']:.1f}", f"{v['shuffle_eot']:.1f}", "paper", "4/255", 1900]
        for k, v in res["paper"].items()
    ]  # fmt: skip
    lines = [
        "# The regime map: defended accuracy against spatial reliance",
        "",
        "Top-1 accuracy (%) with 95% Wilson intervals. Uniformized: mean over the frame"
        " repeated (Table 1); permuted: a random order of all T frames (Fig. 2 at N = T);"
        " I-FGSM crafted on the undefended model; EOT adaptive to the shuffles (30 steps x 10"
        " draws). The paper's rows (Kinetics-400, Tables 1 and 5) are its numbers, not ours.",
        "",
        *report.produced_by(res["command"]),
        report.markdown_table(head, body + paper, "l" + "r" * (len(head) - 1)),
        "",
        "Per-model commands:",
        "",
        "```",
        *[c for m in res["models"] for c in m["commands"].values()],
        "```",
        "",
        "![regime map](regime.png)",
        "",
    ]
    return "\n".join(lines)


def _label(m: dict[str, Any]) -> str:
    """The model's name, with its eps when it is not the paper's 4/255."""
    eps = m.get("eps")
    if eps is None or abs(255 * eps - 4) < 1e-6:
        return str(m["name"])
    return f"{m['name']} (eps {255 * eps:.0f}/255)"


def plot(res: dict[str, Any], path: Any) -> None:
    fig, ax = report.setup_figure(6.2, 4.2)
    for key, colour, marker, label in (
        ("shuffle_ifgsm", "C0", "o", "ours: shuffle vs I-FGSM"),
        ("shuffle_eot", "C3", "s", "ours: shuffle vs adaptive EOT"),
    ):
        models = [m for m in res["models"] if _complete(m, key)]
        if not models:
            continue
        xs, xerr = _errors(models, "uniformized")
        ys, yerr = _errors(models, key)
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt=marker, color=colour, capsize=3, label=label)
        if key == "shuffle_ifgsm":  # one label per model
            for x, y, m in zip(xs, ys, models, strict=True):
                ax.annotate(_label(m), (x, y), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)  # fmt: skip
    for key, colour, marker, label in (
        ("shuffle_ifgsm", "C0", "^", "paper (Kinetics): I-FGSM"),
        ("shuffle_eot", "C3", "v", "paper (Kinetics): EOT"),
    ):
        xs = [v["uniformized"] for v in res["paper"].values()]
        ys = [v[key] for v in res["paper"].values()]
        ax.scatter(xs, ys, marker=marker, facecolors="none", edgecolors=colour, label=label)
        if key == "shuffle_eot":
            for x, y, k in zip(xs, ys, res["paper"], strict=True):
                ax.annotate(k, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.axvline(100 / 8, color="gray", linestyle=":", linewidth=1)
    ax.set_xlim(0, 105)
    report.style_axes(
        ax, "Regime map: shuffle defense vs spatial reliance",
        "uniformized accuracy (%, no motion left)", "defended accuracy (%)",
    )  # fmt: skip
    report.save_figure(fig, path)


#: ``regime.csv``: one row per model and figure.
CSV_HEADER = ["model", "figure", "accuracy", "wilson_low", "wilson_high", "n", "complete"]


def _table(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [
        [m["name"], k, *(f"{f[c]:.4f}" for c in ("accuracy", "wilson_low", "wilson_high")),
         str(f["n"]), str(f.get("complete", True))]
        for m in res["models"]
        for k in FIGURES
        if k in m["figures"]
        for f in [m["figures"][k]]
    ]  # fmt: skip
    return CSV_HEADER, rows


def run(args: RegimeConfig) -> int:
    res = run_regime(args)
    header, rows = _table(res)
    paths = report.write_report(
        args.out, "regime", results=res, header=header, rows=rows,
        markdown=markdown(res), plot=lambda p: plot(res, p),
    )  # fmt: skip
    for m in res["models"]:
        print(
            f"{m['name']}: uniformized {_cell(m['figures']['uniformized'])}, shuffle I-FGSM "
            f"{_cell(m['figures']['shuffle_ifgsm'])}, EOT {_cell(m['figures'].get('shuffle_eot'))}"
        )
    print(f"wrote {', '.join(map(str, paths))}")
    return 0
