"""The ``shuffleguard`` command line.

Each sub-command lives in ``service.commands.<name>`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Command modules keep their
heavy imports (torch, FastAPI, ...) inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.commands.serve", "start TorchServe + the gateway in the foreground"),
    "classify": ("service.commands.classify", "send a clip to a running gateway"),
    "toy-data": ("service.commands.toy_data", "write the paper's synthetic toy datasets"),
    "train": ("service.commands.train", "train a 3D ResNet-18 on a toy dataset"),
    "archive": ("service.commands.archive", "export a checkpoint and build its TorchServe .mar"),
    "evaluate": ("service.commands.evaluate", "attacks x defenses table (paper Table 5)"),
    "analyze": ("service.commands.analyze", "the paper's analyses (Tables 1-3, Fig. 2/5/7/8)"),
    "tune": ("service.commands.tune", "h1 x h2 grid and ensemble sizes (Fig. 10, Table 4)"),
    "bench": ("service.commands.bench", "benchmarks: shuffle kernel, serving overhead"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shuffleguard",
        description="Temporal-shuffling defense proxy for video action recognition.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
