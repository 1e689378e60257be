"""Benchmark the shuffle: frame-block gather vs index_select vs a per-frame loop vs a copy.

For each frame size (and each ``--threads`` count), one uint8 ``[T, H, W, 3]``
clip is turned into ``N`` shuffled copies four ways, on the same device,
interleaved round by round in one process so that drift (turbo, other load)
hits all alike:

* ``blocks`` -- what the TorchServe handler runs in index mode:
  :func:`service.core.ensemble.shuffle_indices` + :func:`service.modelserver.handler.gather_frames`
  (each frame one contiguous block: ``np.take`` on the ``[T, frame bytes]`` view
  split over ``threads`` threads on the CPU, ``index_select`` on dim 0 of that
  view on a GPU);
* ``vectorized`` -- :func:`service.core.ensemble.shuffle_indices` on the host +
  :func:`service.core.ensemble.apply_shuffles` on the clip's device (index maths + one
  ``index_select`` on the 4-d clip: the research harness's differentiable path);
* ``per_frame`` -- a plain Python implementation of Algorithm 1
  (:func:`shuffle_per_frame`): ``random`` draws and one frame copy at a time;
* ``bare_copy`` -- the same ``N * T`` frames copied with no shuffling at all
  (the memory-bandwidth floor).

Each number is the median of ``--repeats`` rounds after ``--warmup`` rounds.
Printed ratios: blocks / bare copy and vectorized / bare copy (target <= 1.5 at
224x224) and per-frame / vectorized (target >= 20 at the small size, and on a GPU
at 224).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from service.core.ensemble import apply_shuffles, make_generator, shuffle_indices
from service.modelserver.handler import gather_frames
from service.options import ExperimentConfig, opt


def shuffle_per_frame(
    clip: torch.Tensor, h1: int, h2: int, n: int, rng: random.Random
) -> torch.Tensor:
    """Algorithm 1 written the slow way: Python draws, one frame copied at a time.

    ``clip`` is ``[T, ...]``; returns ``[n, T, ...]``. Same semantics and edge
    cases as :func:`service.core.ensemble.shuffle_indices` (an empty window keeps the
    group's own frames); used as the benchmark's baseline and a test oracle.
    """
    T = clip.shape[0]
    out = torch.empty((n, *clip.shape), dtype=clip.dtype, device=clip.device)
    for k in range(n):
        for t in range(0, T, h2):
            lo, hi = max(t - h1, 0), min(t + h1, T - h2)
            candidates = [c for c in range(lo, hi + 1) if c != t]
            src = rng.choice(candidates) if candidates else t
            for j in range(min(h2, T - t)):
                out[k, t + j] = clip[src + j]
    return out


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    def run(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return run


def bench_size(
    *,
    T: int,
    size: int,
    n: int,
    h1: int,
    h2: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    seed: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """One size: median seconds of each method and their ratios.

    ``threads``: torch's intra-op threads and the block gather's threads for this
    run (default: leave torch's setting, and use it)."""
    if threads is not None:
        torch.set_num_threads(threads)
    n_threads = torch.get_num_threads()
    gen_cpu = torch.Generator().manual_seed(seed)
    clip = torch.randint(0, 256, (T, size, size, 3), dtype=torch.uint8, generator=gen_cpu)
    clip = clip.to(device)
    fns = _methods(clip, h1=h1, h2=h2, n=n, seed=seed, threads=n_threads)
    med = _median_times(fns, device, warmup=warmup, repeats=repeats, seed=seed)
    return {
        "T": T,
        "size": size,
        "n": n,
        "h1": h1,
        "h2": h2,
        "device": str(device),
        "threads": n_threads,
        "bytes_out": n * clip.numel(),
        "median_s": med,
        "blocks_over_bare_copy": med["blocks"] / med["bare_copy"],
        "vectorized_over_bare_copy": med["vectorized"] / med["bare_copy"],
        "per_frame_over_vectorized": med["per_frame"] / med["vectorized"],
        "vectorized_GBps": n * clip.numel() / med["vectorized"] / 1e9,
        "repeats": repeats,
    }


def _methods(
    clip: torch.Tensor, *, h1: int, h2: int, n: int, seed: int, threads: int
) -> dict[str, Callable[[], torch.Tensor]]:
    """The methods compared, each making the ``n`` shuffled copies of ``clip``."""
    T = clip.shape[0]
    # Index maths stays on the host (tiny tensors, no kernel launches); only the
    # gather runs on the clip's device. Drawing on a CUDA generator instead costs
    # ~8 extra kernel launches, which dominate a 48 MB gather on an H100.
    gen = make_generator(seed)
    rng = random.Random(seed)

    def vectorized() -> torch.Tensor:
        idx = shuffle_indices(T, h1, h2, n, generator=gen)
        return apply_shuffles(clip, idx, temporal_dim=0)

    def blocks() -> torch.Tensor:
        idx = shuffle_indices(T, h1, h2, n, generator=gen)
        return gather_frames(clip, idx.numpy(), threads=threads)

    def per_frame() -> torch.Tensor:
        return shuffle_per_frame(clip, h1, h2, n, rng)

    def bare_copy() -> torch.Tensor:
        return clip.unsqueeze(0).expand(n, *clip.shape).contiguous()

    return {
        "blocks": blocks,
        "vectorized": vectorized,
        "per_frame": per_frame,
        "bare_copy": bare_copy,
    }


def _median_times(
    fns: dict[str, Callable[[], torch.Tensor]],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    seed: int,
) -> dict[str, float]:
    """Median seconds of each method over ``repeats`` rounds after ``warmup``, the
    methods in a new seeded order every round."""
    timer = _timer(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    order_rng = random.Random(seed + 1)
    for r in range(warmup + repeats):
        order_rng.shuffle(order)  # no method always runs right after another
        for name in order:
            dt = timer(fns[name])
            if r >= warmup:
                times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


@dataclass
class ShuffleBenchConfig(ExperimentConfig):
    """Settings of ``shuffleguard bench shuffle``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "bench", "shuffle")
    USAGE_ERRORS: ClassVar[bool] = True

    frames: int = opt(32, "T")
    sizes: list[int] = opt([224, 16], "frame sizes")
    n: int = opt(10, "shuffled copies")
    h1: int = opt(3, "I3D preset 3")
    h2: int = opt(4, "I3D preset 4")
    repeats: int = opt(21, "measured rounds (the median is reported)")
    warmup: int = opt(3, "unmeasured rounds first")
    device: str | None = opt(None, "cpu or cuda (default: cuda if present)")
    seed: int = opt(0, "seeds the clip, the shuffles and the method order")
    threads: list[int] | None = opt(
        None, "CPU thread counts to run (default: torch's current setting)"
    )
    out: Path | None = opt(None, "also write the results as JSON")


def run(args: ShuffleBenchConfig) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = []
    print(
        f"shuffle bench: T={args.frames} N={args.n} h1={args.h1} h2={args.h2} "
        f"device={device} torch={torch.__version__} median of {args.repeats}"
    )
    header = (
        f"{'size':>5} {'threads':>7} {'blocks ms':>10} {'vectorized ms':>14} "
        f"{'per-frame ms':>13} {'bare copy ms':>13} {'blocks/copy':>11} {'vec/copy':>9} "
        f"{'loop/vec':>9}"
    )
    print(header)
    thread_counts: list[int | None] = [*args.threads] if args.threads else [None]
    for threads in thread_counts:
        for size in args.sizes:
            res = bench_size(
                T=args.frames,
                size=size,
                n=args.n,
                h1=args.h1,
                h2=args.h2,
                repeats=args.repeats,
                warmup=args.warmup,
                device=device,
                seed=args.seed,
                threads=threads,
            )
            m = res["median_s"]
            print(
                f"{size:>5} {res['threads']:>7} {m['blocks'] * 1e3:>10.3f} "
                f"{m['vectorized'] * 1e3:>14.3f} {m['per_frame'] * 1e3:>13.3f} "
                f"{m['bare_copy'] * 1e3:>13.3f} {res['blocks_over_bare_copy']:>11.2f} "
                f"{res['vectorized_over_bare_copy']:>9.2f} "
                f"{res['per_frame_over_vectorized']:>9.1f}"
            )
            results.append(res)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0
