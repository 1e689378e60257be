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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "environment",
    "markdown_table",
    "pct",
    "produced_by",
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
