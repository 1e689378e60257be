"""Run one of the paper's analyses: ``shuffleguard analyze NAME [options]``.

Each analysis lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this command only dispatches.
"""

from __future__ import annotations

import argparse
import importlib

#: analysis name -> (module, one-line help)
ANALYSES: dict[str, tuple[str, str]] = {
    "fig5": ("service.experiments.fig5", "toy datasets 1-3 under chunk-wise frame randomization"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, (module_name, help_text) in ANALYSES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_analysis=module)


def run(args: argparse.Namespace) -> int:
    return int(args._analysis.run(args) or 0)
