"""Benchmark the decoder: skipping to keyframes vs decoding every frame, on the real clips.

For each real clip of ``scripts/real-clips.tsv`` (fetched by
``scripts/fetch-real-clips.sh``) and each sampling ``CLIPxINTERVAL``, the upload bytes
are decoded by :func:`service.decoder.decode.decode_clip` two ways, interleaved round by round in
a seeded random order within one process:

* ``sequential`` -- ``seek=False``: every frame from the first up to the last sampled one
  (the decoder before the seek pass);
* ``seek`` -- the default: only the packet runs the sampled frames need, from the
  keyframe that starts each run (falls back to ``sequential`` where it cannot).

Each figure is the median of ``--repeats`` rounds after ``--warmup``, as wall time and
as the process's CPU time (all its threads: FFmpeg's decoding threads included), the
latter much less disturbed by other load on a shared machine. Both ways must give
identical clips (checked every round). Printed per clip: both medians, their ratios,
frames decoded each way and what the seek pass did (``skipped``: fewer frames decoded;
``gave up``: it stopped after a few frames and decoded sequentially; ``sequential``:
nothing to skip); then the median over clips of each column.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from service.decoder.clip import DecodedClip
from service.decoder.decode import decode_clip
from service.options import ExperimentConfig, opt


def _sampling(text: str) -> tuple[int, int]:
    clip_len, _, interval = text.partition("x")
    return int(clip_len), int(interval)


@dataclass
class DecodeBenchConfig(ExperimentConfig):
    """Settings of ``shuffleguard bench decode``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "bench", "decode")
    USAGE_ERRORS: ClassVar[bool] = True

    sources: list[str] = opt(["all"], "real clips (names from scripts/real-clips.tsv) or all")
    samplings: list[str] = opt(
        ["16x1", "32x2"], "CLIPxINTERVAL: 16x1 the toy models', 32x2 MMAction2's I3D test clip"
    )
    crop_size: int = opt(224, "output side (resize short side to it, centre crop)")
    repeats: int = opt(7, "measured rounds (the median is reported)")
    warmup: int = opt(1, "unmeasured rounds first")
    seed: int = opt(0, "seeds the order of the two ways in each round")
    out: Path | None = opt(None, "also write the results as JSON")

    def check(self) -> None:
        for text in self.samplings:
            try:
                clip_len, interval = _sampling(text)
            except ValueError:
                raise ValueError(f"--samplings: {text!r} is not CLIPxINTERVAL, e.g. 32x2") from None
            if clip_len < 1 or interval < 1:
                raise ValueError(f"--samplings: {text!r} needs both numbers >= 1")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("--repeats must be >= 1 and --warmup >= 0")


def bench_clip(
    data: bytes, clip_len: int, interval: int, crop_size: int, repeats: int, warmup: int, seed: int
) -> dict[str, Any]:
    """Median seconds of both ways on one upload, frames decoded each way, their ratio."""
    kwargs: dict[str, Any] = {"clip_len": clip_len, "frame_interval": interval}
    kwargs["crop_size"] = crop_size
    ways = {"sequential": False, "seek": True}
    times: dict[str, list[float]] = {way: [] for way in ways}
    cpu: dict[str, list[float]] = {way: [] for way in ways}
    clips: dict[str, DecodedClip] = {}
    order = list(ways)
    order_rng = random.Random(seed)
    for r in range(warmup + repeats):
        order_rng.shuffle(order)
        for way in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            clips[way] = decode_clip(data, seek=ways[way], **kwargs)
            if r >= warmup:
                times[way].append(time.perf_counter() - start)
                cpu[way].append(time.process_time() - start_cpu)
        if not np.array_equal(clips["seek"].frames, clips["sequential"].frames):
            raise AssertionError("the seek pass gave other frames than the sequential decode")
    med = {way: statistics.median(v) for way, v in times.items()}
    med_cpu = {way: statistics.median(v) for way, v in cpu.items()}
    decoded = {way: clips[way].frames_decoded for way in ways}
    if decoded["seek"] < decoded["sequential"]:
        path = "skipped"
    else:
        path = "gave up" if decoded["seek"] > decoded["sequential"] else "sequential"
    return {
        "median_ms": {way: 1e3 * v for way, v in med.items()},
        "sequential_over_seek": med["sequential"] / med["seek"],
        "median_cpu_ms": {way: 1e3 * v for way, v in med_cpu.items()},
        "cpu_sequential_over_seek": med_cpu["sequential"] / med_cpu["seek"],
        "frames_decoded": decoded,
        "codec": clips["seek"].source_codec,
        "source_frames": clips["seek"].source_frames,
        "seek_pass": path,
    }


def _print_medians(rows: list[dict[str, Any]]) -> None:
    """The median over clips of each column, for all clips and for those that skip."""
    for label, subset in (
        ("median, all clips", rows),
        ("median, clips that skip", [r for r in rows if r["seek_pass"] == "skipped"]),
    ):
        if not subset:
            continue
        cols = [
            statistics.median(r[key][way] for r in subset)
            for key in ("median_ms", "median_cpu_ms")
            for way in ("sequential", "seek")
        ]
        ratio = statistics.median(r["sequential_over_seek"] for r in subset)
        ratio_cpu = statistics.median(r["cpu_sequential_over_seek"] for r in subset)
        print(
            f"{label:<40} {cols[0]:>7.1f} {cols[1]:>7.1f} {ratio:>6.2f}"
            f" {cols[2]:>7.1f} {cols[3]:>8.1f} {ratio_cpu:>6.2f}"
        )
    print()


def run(args: DecodeBenchConfig) -> int:
    from service.research import real_clips

    located = real_clips.locate(args.sources)
    print(
        f"decode bench: crop {args.crop_size}, median of {args.repeats} rounds;"
        f" command: {args.command()}"
    )
    header = (
        f"{'clip':<22} {'sampling':>8} {'codec':>8} {'seq ms':>7} {'seek ms':>7} {'ratio':>6}"
        f" {'seq cpu':>7} {'seek cpu':>8} {'ratio':>6} {'frames seq':>10} {'frames seek':>11}"
        "  seek pass"
    )
    results = []
    for text in args.samplings:
        clip_len, interval = _sampling(text)
        print(header)
        rows = []
        for source, path in located.items():
            res = bench_clip(
                path.read_bytes(), clip_len, interval, args.crop_size,
                args.repeats, args.warmup, args.seed,
            )  # fmt: skip
            res.update(clip=source.name, sampling=text)
            ms, cp, fd = res["median_ms"], res["median_cpu_ms"], res["frames_decoded"]
            print(
                f"{source.name:<22} {text:>8} {res['codec']:>8} {ms['sequential']:>7.1f}"
                f" {ms['seek']:>7.1f} {res['sequential_over_seek']:>6.2f}"
                f" {cp['sequential']:>7.1f} {cp['seek']:>8.1f}"
                f" {res['cpu_sequential_over_seek']:>6.2f}"
                f" {fd['sequential']:>10} {fd['seek']:>11}  {res['seek_pass']}"
            )
            rows.append(res)
        _print_medians(rows)
        results += rows
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": args.command(), "results": results}, indent=2))
    return 0
