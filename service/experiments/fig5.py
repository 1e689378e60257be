"""Fig. 5: toy datasets under chunk-wise frame-order randomization (placeholder)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SystemExit("shuffleguard: analyze fig5 is not implemented yet")
