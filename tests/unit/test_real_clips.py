"""The real-clip set (``shuffleguard real-clips``, service/research/real_clips.py).

A small set is rebuilt from the fetched footage and must reproduce the committed
manifest's entries (source sha256, start frames, frame counts, frames' sha256), and its
clip files must decode to exactly those frames (lossless).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from service import cli
from service.commands.real_clips import RealClipsConfig, run
from service.decoder.decode import decode_clip
from service.research import real_clips
from tests.sysdeps import require_real_clips

MANIFEST = Path(__file__).resolve().parents[2] / "docs/results/i3d/real_clips_manifest.json"
SMALL = ("cup.mp4", "tree.avi")


def committed() -> dict:
    return json.loads(MANIFEST.read_text())


def test_committed_manifest_records_its_command() -> None:
    manifest = committed()
    config = cli.parse(shlex.split(manifest["command"])[1:])
    assert isinstance(config, RealClipsConfig)
    assert (config.clip_len, config.frame_interval, config.stride) == (
        manifest["clip_len"], manifest["frame_interval"], manifest["stride"],
    )  # fmt: skip
    assert config.clip_len == 32  # the paper's I3D
    listed = {s.name: s.sha256 for s in real_clips.read_sources()}
    assert {s["name"]: s["sha256"] for s in manifest["sources"]} == listed
    for clip in manifest["clips"]:
        assert clip["source_sha256"] == listed[clip["source"]]
        assert clip["frames"] == manifest["clip_len"]
        assert clip["start_frame"] % manifest["stride"] == 0


def test_small_set_reproduces_the_committed_manifest(tmp_path: Path) -> None:
    require_real_clips(SMALL)
    manifest = committed()
    config = RealClipsConfig(
        out=str(tmp_path),
        clip_len=manifest["clip_len"],
        frame_interval=manifest["frame_interval"],
        stride=manifest["stride"],
        sources=list(SMALL),
        max_windows=2,
    )
    assert run(config) == 0
    built = json.loads((tmp_path / "manifest.json").read_text())
    expected = {c["file"]: c for c in manifest["clips"]}
    assert [(c["source"], c["start_frame"]) for c in built["clips"]] == [
        ("cup.mp4", 0), ("cup.mp4", 32), ("tree.avi", 0), ("tree.avi", 32),
    ]  # fmt: skip
    for clip in built["clips"]:
        assert clip == expected[clip["file"]]
        count, digest = real_clips.clip_frames_sha256(tmp_path / clip["file"])
        assert (count, digest) == (clip["frames"], clip["frames_sha256"])  # lossless
    sources = {s["name"]: s for s in manifest["sources"]}
    for source in built["sources"]:
        assert {**source, "windows": 0} == {**sources[source["name"]], "windows": 0}
    # the gateway takes a clip file as it is
    decoded = decode_clip(
        (tmp_path / "tree_00032.mkv").read_bytes(), clip_len=16, frame_interval=1, crop_size=112
    )
    assert decoded.source_codec == "ffv1" and decoded.source_frames == 32


def test_missing_sources_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bash scripts/fetch-real-clips.sh"):
        real_clips.locate(["vtest.avi"], tmp_path)
    (tmp_path / "vtest.avi").write_bytes(b"not the pinned file")
    with pytest.raises(ValueError, match="does not have the sha256 pinned"):
        real_clips.locate(["vtest.avi"], tmp_path)
    with pytest.raises(ValueError, match="unknown sources"):
        real_clips.locate(["nope.avi"], tmp_path)


@pytest.mark.parametrize(
    ("total", "clip_len", "interval", "stride", "starts"),
    [
        (795, 32, 1, 32, list(range(0, 764, 32))),
        (68, 32, 1, 32, [0, 32]),
        (64, 32, 1, 32, [0, 32]),
        (63, 32, 1, 32, [0]),
        (16, 32, 1, 32, []),
        (100, 16, 2, 50, [0, 50]),  # needs 31 frames: 50 + 30 < 100
    ],
)
def test_window_starts(
    total: int, clip_len: int, interval: int, stride: int, starts: list[int]
) -> None:
    assert real_clips.window_starts(total, clip_len, interval, stride) == starts
