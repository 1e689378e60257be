"""What a DnCNN size costs in the denoise rows of Table 5, on this machine.

For each ``depth x features`` it times, on random 64 x 64 frames:

* one denoised-smoothing prediction's denoiser work: a forward pass over
  ``n x T`` frames (100 noisy copies of a 16-frame clip by default);
* one EOT step's denoiser work: forward + backward over ``draws x T`` frames
  (10 draws of a 16-frame clip).

The classifier's own share is left out (it is the same for every size). Usage::

    python scripts/time_denoiser.py --threads 2 --sizes 17x64 8x32
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from service.research.robustness.denoise import DnCNN


def time_size(depth: int, features: int, *, frames: int, n: int, draws: int, size: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    net = DnCNN(depth=depth, features=features).eval()
    chunk = 256
    x = torch.rand(chunk, 3, size, size, generator=gen)
    with torch.no_grad():
        net(x[:8])  # warm-up
        t0 = time.perf_counter()
        net(x)
        per_frame = (time.perf_counter() - t0) / chunk
    y = torch.rand(draws * frames, 3, size, size, generator=gen, requires_grad=True)
    t0 = time.perf_counter()
    net(y).sum().backward()
    step = time.perf_counter() - t0
    return {
        "size": f"{depth}x{features}",
        "smoothing_prediction_s": per_frame * n * frames,
        "eot_step_s": step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["17x64", "8x32"], help="DEPTHxFEATURES")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--n", type=int, default=100, help="noisy copies per prediction")
    parser.add_argument("--draws", type=int, default=10, help="EOT draws per step")
    parser.add_argument("--size", type=int, default=64, help="frame side (px)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.sizes:
        depth, features = (int(v) for v in spec.lower().split("x"))
        res = time_size(
            depth, features, frames=args.frames, n=args.n, draws=args.draws, size=args.size
        )
        res["threads"] = args.threads
        print(json.dumps(res))


if __name__ == "__main__":
    main()
