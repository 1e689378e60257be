"""Build the real-clip set (``shuffleguard real-clips``): see :mod:`service.research.real_clips`.

Writes ``<out>/<source stem>_<start frame>.mkv`` per window and ``<out>/manifest.json``
(and the same manifest at ``--manifest`` when given, e.g. the committed
``docs/results/i3d/real_clips_manifest.json``). The same arguments give the same
manifest: the sources are pinned by sha256 and decoding is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from service.options import ExperimentConfig, opt


@dataclass
class RealClipsConfig(ExperimentConfig):
    """Settings of ``shuffleguard real-clips``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "real-clips")

    out: str = opt("data/real_clips", "output directory: the clips and manifest.json")
    clip_len: int = opt(
        32, "frames per clip (32: the paper's I3D; 16 for 16-frame models)", show="always"
    )
    frame_interval: int = opt(
        1, "sampling: a clip takes every frame_interval-th source frame", show="always"
    )
    stride: int = opt(32, "source frames between the first frames of two windows", show="always")
    sources: list[str] = opt(["all"], "names from scripts/real-clips.tsv, or all")
    max_windows: int = opt(0, "at most this many windows per source (0: every window)")
    manifest: str = opt("", "also write the manifest to this path")
    sources_dir: str = opt(
        "", "the fetched files (default: $SHUFFLEGUARD_SOURCES or data/sources)", show="never"
    )

    def check(self) -> None:
        for name in ("clip_len", "frame_interval", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_windows < 0:
            raise ValueError("--max-windows must be >= 0")


def run(args: RealClipsConfig) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from service.research import real_clips

    located = real_clips.locate(args.sources, Path(args.sources_dir) if args.sources_dir else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "clip_len": args.clip_len, "frame_interval": args.frame_interval,
        "stride": args.stride, "max_windows": args.max_windows,
    }  # fmt: skip
    sources, clips = [], []
    with tqdm(desc="real clips", unit="clip") as bar:
        for source, path in located.items():
            entry, windows = real_clips.cut_source(source, path, out, settings, bar.update)
            sources.append(entry)
            clips += windows
    manifest = {
        "command": args.command(),
        "clip_len": args.clip_len,
        "frame_interval": args.frame_interval,
        "stride": args.stride,
        "sampling": "window w of a source holds its frames s_w + i * frame_interval,"
        " i < clip_len, s_w = w * stride, while the window fits; frame i is the decoder's"
        " i-th frame (service.video's count)",
        "clip_format": "FFV1 in Matroska, the source's decoded pixels unchanged (lossless)",
        "frames_sha256": "sha256 of the window's frames as uint8 RGB [T, H, W, 3] (rgb24)",
        "labels": "none: not Kinetics data; a clip's reference label is the undefended"
        " model's own prediction",
        "sources": sources,
        "clips": clips,
    }
    real_clips.write_manifest(out / "manifest.json", manifest)
    if args.manifest:
        real_clips.write_manifest(Path(args.manifest), manifest)
    print(f"real clips: {len(clips)} clips from {len(sources)} sources in {out}")
    return 0
