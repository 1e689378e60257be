"""Benchmarks: ``shuffleguard bench shuffle`` and ``shuffleguard bench serve``."""

from __future__ import annotations

import argparse
import importlib

BENCHES: dict[str, tuple[str, str]] = {
    "shuffle": ("service.bench.shuffle", "frame-block gather, index_select, loop, bare copy"),
    "serve": ("service.bench.serve", "undefended, copy, index and early-stop serving, two sizes"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, (module_name, help_text) in BENCHES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_bench=module)


def run(args: argparse.Namespace) -> int:
    return int(args._bench.run(args) or 0)
