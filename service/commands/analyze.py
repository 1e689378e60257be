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
    "table1": ("service.experiments.table1", "accuracy on uniformized clips (Table 1)"),
    "fig2": ("service.experiments.fig2", "frame-order vs row randomization curves (Fig. 2)"),
    "fig7": ("service.experiments.fig7", "accuracy vs monotonic ratio of the frame order (Fig. 7)"),
    "fig8": ("service.experiments.fig8", "attacked accuracy vs chunk size (Fig. 8)"),
    "table2": ("service.experiments.table2", "static / framewise vs regular I-FGSM (Table 2)"),
    "table3": ("service.experiments.table3", "attacked and uniformized clips (Table 3)"),
    "detection": ("service.experiments.detection", "ROC/AUC of the suspected_adversarial signals"),
    "denoiser": ("service.experiments.denoiser", "train the DnCNN of the denoised-smoothing rows"),
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
