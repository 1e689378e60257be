"""The one report writer of the experiments: CSV, JSON, Markdown, PNG, environment.

Every experiment writes ``<name>.{csv,json,md,png}`` with :func:`write_report`: the
JSON holds the results with the produced-by command (``config.command()``) and the
environment (:func:`environment`); the Markdown starts from :func:`produced_by`;
figures come from :func:`setup_figure` / :func:`save_figure` (matplotlib, Agg).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "environment",
    "figure_link",
    "markdown_table",
    "pct",
    "produced_by",
    "results",
    "run_analysis",
    "save_figure",
    "setup_figure",
    "write_csv",
    "write_json",
    "write_report",
]


def pct(value: float | None, digits: int = 1) -> str:
    """``0.923 -> '92.3'``; ``None``/NaN -> ``'-'``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}"


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(list(header))
        for row in rows:
            w.writerow(list(row))


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A GitHub Markdown table; ``align``: one ``l``/``r`` per column (default ``lrr...``)."""
    header = list(header)
    spec = align or ("l" + "r" * (len(header) - 1))
    rule = ["---:" if a == "r" else "---" for a in spec]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware, for the JSON outputs."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def figure_link(alt: str, name: str) -> list[str]:
    """The Markdown lines that show the report's figure ``<name>.png``."""
    return ["", f"![{alt}]({name}.png)", ""]


def reduced_banner(reduced: Sequence[str]) -> list[str]:
    """Markdown lines that stamp a run below full attack strength (none when full)."""
    if not reduced:
        return []
    return [f"**REDUCED STRENGTH -- a plumbing test, not a result:** {', '.join(reduced)}.", ""]


def produced_by(command: str) -> list[str]:
    """Markdown lines that give the command which produced a report."""
    return ["Produced by:", "", "```", command, "```", ""]


def write_report(
    out_dir: str | Path,
    name: str,
    *,
    results: dict[str, Any],
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    markdown: str,
    plot: Callable[[Path], None],
) -> list[Path]:
    """``<name>.csv`` (header + rows), ``<name>.json`` (results), ``<name>.md``, ``<name>.png``
    (``plot(path)``); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("csv", "json", "md", "png")]
    write_csv(paths[0], header, rows)
    write_json(paths[1], results)
    paths[2].write_text(markdown)
    plot(paths[3])
    return paths


def setup_figure(width: float = 5.2, height: float = 3.8) -> tuple[Any, Any]:
    """A matplotlib (Agg) figure and axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=120)


def save_figure(fig: Any, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: ``(column, format spec)`` of a CSV column: ``format(row[column], spec)``.
Fields = Sequence[tuple[str, str]]


def csv_table(rows: Iterable[dict[str, Any]], fields: Fields) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of a CSV from dict rows."""
    return [k for k, _ in fields], [[format(r[k], f) for k, f in fields] for r in rows]


def series_fields(group: str, size: str) -> Fields:
    """CSV columns of accuracy series: ``group``, ``size``, mean, std, draws."""
    return (
        (group, ""), (size, ""), ("accuracy_mean", ".4f"), ("accuracy_std", ".4f"), ("draws", "")
    )  # fmt: skip


def series_summary(
    rows: Sequence[dict[str, Any]], group: str, size: str, groups: Sequence[str]
) -> list[str]:
    """One line per group: ``kind: N=1: 90.0%, N=2: ...``."""
    return [
        g + ": " + ", ".join(
            f"N={r[size]}: {100 * r['accuracy_mean']:.1f}%" for r in rows if r[group] == g
        )
        for g in groups
    ]  # fmt: skip


def style_axes(
    ax: Any,
    title: str,
    xlabel: str | None = None,
    ylabel: str = "accuracy (%)",
    *,
    logx: bool = False,
    ylim: tuple[float, float] | None = (0, 105),
    grid: str = "both",
    legend: float | None = 8,
) -> None:
    """The axes chores every experiment figure shares."""
    if logx:
        ax.set_xscale("log", base=2)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=legend)
    ax.grid(True, axis=grid, alpha=0.3)  # type: ignore[arg-type]


def results(
    config: Any, t0: float, ckpt: dict[str, Any], clips: int, **fields: Any
) -> dict[str, Any]:
    """The results every analysis writes: its name (``config.COMMAND[-1]``), the
    produced-by command, the clip count, the analysis's own ``fields``, the model's
    dataset, the seconds since ``t0`` (``time.perf_counter()``) and the environment."""
    return {
        "analysis": config.COMMAND[-1],
        "command": config.command(),
        "clips": clips,
        **fields,
        "dataset": ckpt.get("dataset"),
        "seconds": time.perf_counter() - t0,
        "environment": environment(config.device),
    }


def run_analysis(
    config: Any,
    compute: Callable[[Any], dict[str, Any]],
    *,
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
    summary: Callable[[dict[str, Any]], list[str]],
    fields: Sequence[tuple[str, str]] = (),
    table: Callable[[dict[str, Any]], tuple[list[str], list[list[str]]]] | None = None,
) -> int:
    """Run one analysis from its config and write its report ``<name>.*`` (name:
    ``config.COMMAND[-1]``): ``compute(config)`` gives the results, ``table`` (default:
    ``res["rows"]`` with the columns ``fields``) / ``markdown`` / ``plot`` render them,
    ``summary`` gives the lines printed for the user."""
    from service.research.experiments.common import prepare_torch

    prepare_torch(config.device, config.threads, " ".join(config.COMMAND))
    res = compute(config)
    header, rows = table(res) if table else csv_table(res["rows"], fields)
    paths = write_report(
        config.out, config.COMMAND[-1], results=res, header=header, rows=rows,
        markdown=markdown(res), plot=lambda p: plot(res, p),
    )  # fmt: skip
    for line in summary(res):
        print(line)
    print(f"wrote {', '.join(map(str, paths))}")
    return 0
