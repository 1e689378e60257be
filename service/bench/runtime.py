"""What an inference runtime buys a CPU user: one model, several ways to run its forward.

``shuffleguard bench runtime`` builds a model family (default DeepMind's Kinetics-400
I3D, ``i3d_inception``, with the weights of ``shuffleguard weights i3d``; ``--random-init``
for plumbing tests) at ``--clip-len x --crop-size`` and runs the same clips through

* ``eager`` -- float32 eager PyTorch (the reference);
* ``channels_last`` -- the model and input in ``torch.channels_last_3d``;
* ``bf16`` -- eager under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* ``compile`` -- ``torch.compile(model)`` (inductor; its first call compiles);
* ``export`` -- the program of ``torch.export.export(model, (clip,))``, run as a module.

Per way: the setup and first call (compilation included), then per clip one timed
forward, ways interleaved clip by clip (drift on a shared machine hits every way alike),
as wall time and as the process's CPU time; the figure is the median over clips and
``--repeats`` rounds. Agreement with ``eager``: the largest absolute logit difference
and the share of clips with the same top-1. The clips are real windows
(``--clips-dir``, ``shuffleguard real-clips``) decoded as the gateway decodes them, or
seeded random clips when the directory has none.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from service.options import ExperimentConfig, opt

WAYS = ("eager", "channels_last", "bf16", "compile", "export")


@dataclass
class RuntimeBenchConfig(ExperimentConfig):
    """Settings of ``shuffleguard bench runtime``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "bench", "runtime")
    USAGE_ERRORS: ClassVar[bool] = True

    arch: str = opt("i3d_inception", "model family", show="always")
    weights: str = opt(
        "runs/weights/i3d_inception_kinetics400.pt", "converted weights (shuffleguard weights i3d)"
    )
    random_init: bool = opt(False, "untrained weights (plumbing tests)")
    clip_len: int = opt(32, "frames per clip", show="always")
    crop_size: int = opt(224, "crop side", show="always")
    ways: list[str] = opt(list(WAYS), "ways to run the forward", choices=WAYS, show="always")
    clips_dir: str = opt("data/real_clips", "real windows (shuffleguard real-clips)")
    clips: int = opt(4, "clips (one window per source first)", show="always")
    repeats: int = opt(1, "timed rounds over the clips", show="always")
    threads: int = opt(1, "CPU threads for torch", show="always")
    seed: int = opt(0, "seed of the random clips and init")
    out: Path | None = opt(None, "also write the results as JSON")

    def check(self) -> None:
        if min(self.clip_len, self.crop_size, self.clips, self.repeats, self.threads) < 1:
            raise ValueError("--clip-len, --crop-size, --clips, --repeats, --threads must be >= 1")
        if "eager" not in self.ways:
            raise ValueError("--ways must include eager (the reference)")


def load_model(args: RuntimeBenchConfig) -> torch.nn.Module:
    """The family at the bench's size (converted weights, or seeded random init)."""
    from service.commands.real_set import RealSetConfig, build_checkpoint
    from service.models.families import build_family

    if args.random_init:
        return build_family(
            args.arch, clip_len=args.clip_len, crop_size=args.crop_size, seed=args.seed
        )
    cfg = RealSetConfig(
        weights=args.weights, arch=args.arch, clip_len=args.clip_len, crop_size=args.crop_size
    )
    return build_checkpoint(cfg)[0]


def load_clips(args: RuntimeBenchConfig) -> tuple[list[torch.Tensor], str]:
    """Float ``[1, 3, T, S, S]`` clips in ``[0, 1]`` and where they came from."""
    from service.commands.real_set import choose_windows, decode_window

    directory = Path(args.clips_dir)
    files = [p.name for p in directory.glob("*_*.mkv")] if directory.is_dir() else []
    if files:
        picked = choose_windows(files, 1)[: args.clips]
        clips = []
        for name in picked:
            frames = decode_window(directory / name, args.arch, args.clip_len, args.crop_size)
            clips.append(torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(255)[None])
        return clips, "real windows " + ", ".join(picked)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (1, 3, args.clip_len, args.crop_size, args.crop_size)
    return [torch.rand(shape, generator=gen) for _ in range(args.clips)], "seeded random clips"


def build_way(way: str, model: torch.nn.Module, example: torch.Tensor) -> Callable[..., Any]:
    """``f(clip) -> float32 logits`` running ``model`` the way ``way`` says."""
    if way == "eager":
        return model
    if way == "channels_last":
        cl = model.to(memory_format=torch.channels_last_3d)
        return lambda x: cl(x.contiguous(memory_format=torch.channels_last_3d))
    if way == "bf16":

        def bf16(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).float()

        return bf16
    if way == "compile":
        return torch.compile(model)  # type: ignore[no-any-return]
    if way == "export":
        return torch.export.export(model, (example,)).module()
    raise ValueError(f"unknown way {way!r}")


def _timed(f: Callable[..., Any], x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = f(x)
    return out.float(), time.perf_counter() - wall, time.process_time() - cpu


def bench(args: RuntimeBenchConfig) -> dict[str, Any]:
    """Set up every way, then the interleaved timed rounds; results per way."""
    import copy

    torch.set_num_threads(args.threads)
    base = load_model(args).eval()
    clips, source = load_clips(args)
    ways: dict[str, Callable[..., Any]] = {}
    res: dict[str, dict[str, Any]] = {}
    for way in args.ways:
        t0 = time.perf_counter()
        ways[way] = build_way(way, copy.deepcopy(base) if way != "eager" else base, clips[0])
        _, first, _ = _timed(ways[way], clips[0])
        res[way] = {"setup_s": time.perf_counter() - t0 - first, "first_call_s": first,
                    "wall_s": [], "cpu_s": [], "logits": []}  # fmt: skip
    for r in range(args.repeats):
        for x in clips:
            for way in args.ways:
                out, wall, cpu = _timed(ways[way], x)
                res[way]["wall_s"].append(wall)
                res[way]["cpu_s"].append(cpu)
                if r == 0:
                    res[way]["logits"].append(out)
    ref = torch.cat(res["eager"]["logits"])
    for v in res.values():
        logits = torch.cat(v.pop("logits"))
        v["max_abs_diff"] = float((logits - ref).abs().max())
        v["top1_agree"] = float((logits.argmax(1) == ref.argmax(1)).float().mean())
        v["wall_p50_s"] = statistics.median(v["wall_s"])
        v["cpu_p50_s"] = statistics.median(v["cpu_s"])
    return {"ways": res, "clips": len(clips), "clip_source": source,
            "logit_scale": float(ref.abs().max())}  # fmt: skip


def markdown(result: dict[str, Any], command: str) -> str:
    eager = result["ways"]["eager"]
    lines = [
        f"# bench runtime: {result['arch']} at {result['size']}, {result['threads']} thread(s)",
        "",
        f"{result['clips']} clips ({result['clip_source']}); largest |logit| of eager"
        f" {result['logit_scale']:.2f}.",
        "",
        "| way | setup + first call s | forward p50 s (wall) | (CPU) | x eager (wall) |"
        " max abs logit diff | top-1 agree |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for way, v in result["ways"].items():
        lines.append(
            f"| {way} | {v['setup_s'] + v['first_call_s']:.1f} | {v['wall_p50_s']:.2f} |"
            f" {v['cpu_p50_s']:.2f} | {v['wall_p50_s'] / eager['wall_p50_s']:.2f} |"
            f" {v['max_abs_diff']:.2e} | {v['top1_agree']:.0%} |"
        )
    return "\n".join([*lines, "", f"Command: `{command}`", ""])


def run(args: RuntimeBenchConfig) -> int:
    result = bench(args)
    result.update(arch=args.arch, size=f"{args.clip_len}x{args.crop_size}x{args.crop_size}",
                  threads=args.threads, command=args.command(),
                  weights="random init" if args.random_init else args.weights)  # fmt: skip
    table = markdown(result, args.command())
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0
