"""The decoder skips to keyframes: the same clip as the sequential decode, fewer frames.

Each file is decoded twice, ``seek=True`` (the default) and ``seek=False`` (every frame up
to the last sampled one, the decoder as it was), and the clips must be identical: frames
bit for bit, indices, frame count. Toy clips (tests/media.py, frames carrying their index)
cover H.264 with B-frames, closed and open GOPs, in mp4/mkv/mpeg-ts and as a raw
elementary stream, VP8/VP9 in webm, MPEG-4 with B-frames and MJPEG in avi, GIF, and
containers without an index (fragmented mp4, avi without idx1); the real clips
(scripts/real-clips.tsv) cover real encoders' files, two of which carry timestamps that
do not name the frames the decoder returns (decoded sequentially). A wrong index must
make the seek pass give up and decode sequentially.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from service.decoder import pyav
from service.decoder.clip import DecodedClip
from service.decoder.decode import decode_clip
from service.decoder.keyframes import KeyIndex
from tests import media
from tests.sysdeps import require_real_clips

KEYINT_8 = "keyint=8:min-keyint=8:scenecut=0"
B_FRAMES = KEYINT_8 + ":bframes=2"
H264 = {"preset": "ultrafast", "crf": "18"}
VPX = {"deadline": "realtime", "cpu-used": "8", "b": "2M", "g": "8"}

#: name -> (container, encoder, encoder options, does the seek pass skip packets?)
TOYS: dict[str, tuple[str, str, dict[str, str] | None, bool]] = {
    "mp4_h264_bframes": ("mp4", "libx264", {**H264, "x264-params": B_FRAMES}, True),
    "mkv_h264": ("matroska", "libx264", {**H264, "x264-params": KEYINT_8}, True),
    "mov_h264": ("mov", "libx264", {**H264, "x264-params": KEYINT_8}, True),
    "ts_h264_bframes": ("mpegts", "libx264", {**H264, "x264-params": B_FRAMES}, True),
    "webm_vp8": ("webm", "libvpx", {**VPX, "crf": "10"}, True),
    "webm_vp9": ("webm", "libvpx-vp9", {**VPX, "crf": "20"}, True),
    "avi_mjpeg": ("avi", "mjpeg", None, True),  # every frame a keyframe
    # Open GOP: the keyframes' leading B-frames come after them in decode order, so no
    # keyframe splits the stream cleanly: sequential.
    "mp4_h264_open_gop": (
        "mp4", "libx264", {**H264, "x264-params": KEYINT_8 + ":bframes=3:open-gop=1"}, False,
    ),
    # avi records no presentation times for B-frames: sequential.
    "avi_mpeg4_bframes": ("avi", "mpeg4", {"g": "8", "bf": "2", "qscale": "2"}, False),
    # No container timestamps at all: sequential.
    "raw_h264": ("h264", "libx264", {**H264, "x264-params": KEYINT_8}, False),
    # GIF frames draw over the previous canvas: never skipped (SEQUENTIAL_FORMATS).
    "gif": ("gif", "gif", None, False),
}  # fmt: skip

#: (clip_len, frame_interval): dense runs, runs across GOPs with gaps, and a looped clip
SAMPLINGS = [(8, 2), (4, 8), (16, 1), (8, 1), (32, 2)]
CLIP8: dict[str, Any] = {"clip_len": 8, "frame_interval": 2, "crop_size": 64}


def both(data: bytes, clip_len: int, frame_interval: int, crop: int = 64) -> tuple[Any, Any]:
    kwargs: dict[str, Any] = {"clip_len": clip_len, "frame_interval": frame_interval}
    kwargs["crop_size"] = crop
    return decode_clip(data, seek=False, **kwargs), decode_clip(data, **kwargs)


def assert_same(sequential: DecodedClip, seeking: DecodedClip) -> None:
    np.testing.assert_array_equal(seeking.frames, sequential.frames)
    np.testing.assert_array_equal(seeking.frame_indices, sequential.frame_indices)
    assert seeking.source_frames == sequential.source_frames
    assert (seeking.source_width, seeking.source_height) == (
        sequential.source_width, sequential.source_height,
    )  # fmt: skip


@pytest.fixture(scope="module")
def toy_files() -> dict[str, bytes]:
    frames = media.synthetic_frames(60, 96, 128, seed=5)
    files = {}
    for name, (fmt, codec, options, _) in TOYS.items():
        if not media.encoder_available(codec):
            continue
        pix_fmt = {"mjpeg": "yuvj420p", "gif": "rgb8"}.get(codec)
        files[name] = media.write_video(None, frames, fmt, codec, options=options, pix_fmt=pix_fmt)
    return files


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_clips_identical_to_the_sequential_decode(name: str, toy_files: dict) -> None:
    if name not in toy_files:
        pytest.skip(f"PyAV lacks the {TOYS[name][1]} encoder")
    skips = TOYS[name][3]
    for clip_len, interval in SAMPLINGS:
        sequential, seeking = both(toy_files[name], clip_len, interval)
        assert_same(sequential, seeking)
        read = [media.read_frame_index(f) for f in seeking.frames]
        assert read == seeking.frame_indices.tolist()  # the right frames, not just equal ones
        if not skips:
            assert seeking.frames_decoded == sequential.frames_decoded
        elif clip_len * interval > 60:  # a looped clip: skips a frame before a keyframe, at most
            assert seeking.frames_decoded <= sequential.frames_decoded
        else:
            assert seeking.frames_decoded < sequential.frames_decoded


def test_runs_across_gops_skip_the_gaps(toy_files: dict) -> None:
    # 4 frames 8 apart in 60 frames with a keyframe every 8: frames 14, 22, 30, 38, each
    # in its own GOP (keyframes 8, 16, 24, 32): 4 runs of 7 frames, plus what the
    # decoder's frame threads have in flight at each run's end (one frame per thread).
    sequential, seeking = both(toy_files["mkv_h264"], 4, 8)
    assert seeking.frame_indices.tolist() == [14, 22, 30, 38]
    assert sequential.frames_decoded == 39
    assert 4 * 7 <= seeking.frames_decoded < 39


def keys(*packets: tuple[int | None, bool]) -> list[tuple[int | None, int | None, bool]]:
    """Packets ``(pts, is_keyframe)`` in decode order, dts = position."""
    return [(pts, dts, key) for dts, (pts, key) in enumerate(packets)]


def test_key_index_refuses_timestamps_that_cannot_name_frames() -> None:
    build = KeyIndex.build
    assert build(keys((0, True), (1, False), (None, False)), 3, False) is None  # a missing pts
    assert build(keys((0, True), (1, False), (1, True)), 3, False) is None  # a repeated pts
    assert build(keys((0, True), (1, False)), 3, False) is None  # the header counts 3 frames
    # B-frames whose timestamps are all in decode order (an mp4 muxed with pts = dts)
    assert build(keys((0, True), (1, False), (2, False)), 3, True) is None
    b_frames = keys((0, True), (2, False), (1, False), (3, True), (5, False), (4, False))
    index = build(b_frames, 6, True)
    assert index is not None and index.starts == (0, 3)
    assert index.runs({4, 5}) == [(3, 5)]
    assert index.runs({1, 5}) == [(0, 1), (3, 5)]
    assert index.runs({2, 3}) == [(0, 3)]  # the next start right after the run: no jump
    # a keyframe whose leading B-frame (pts 2) comes after it in decode order: no start
    index = build(keys((0, True), (1, False), (3, True), (2, False), (4, False)), 5, True)
    assert index is not None and index.starts == (0,)
    assert not index.skips({3, 4})


#: real clips where the seek pass skips packets on every sampling below
SKIPS = {"vtest.avi", "cup.mp4", "bikes.mp4"}
#: the rest decode sequentially, as the index says before any decoding: B-frames whose
#: timestamps cannot name the frames (Megamind.avi: MPEG-4 with packed B-frames in avi,
#: which stores no presentation times; box.mp4: H.264 with B-frames, every packet muxed
#: with pts = dts), one keyframe only (bigbuckbunny.mp4, carphone_pristine.mp4), GIF, or
#: a header frame count that is not the packet count (tree.avi claims 444 frames, holds 68)
#: (clip_len, frame_interval) on the real clips (~4 s each; two more in the slow run)
SAMPLINGS_REAL = [
    (32, 2),
    (16, 16),
    pytest.param(16, 1, marks=pytest.mark.slow),
    pytest.param(8, 8, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("clip_len", "interval"), SAMPLINGS_REAL)
def test_real_clips_identical_to_the_sequential_decode(
    clip_len: int, interval: int, caplog: pytest.LogCaptureFixture
) -> None:
    paths = require_real_clips()
    for name, path in paths.items():
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger=pyav.__name__):
            sequential, seeking = both(path.read_bytes(), clip_len, interval, crop=112)
        assert_same(sequential, seeking)
        assert not any("gave up" in r.getMessage() for r in caplog.records), name
        if name in SKIPS:
            assert seeking.frames_decoded < sequential.frames_decoded, name
        else:
            assert seeking.frames_decoded == sequential.frames_decoded, name


def test_a_wrong_index_gives_up_and_decodes_sequentially(
    toy_files: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A file whose keyframe flags lie (FFmpeg's parsers correct the usual codecs' flags,
    # so the lie is made in the index): starts at P-frames 11 and 19. The decoder then
    # gives a frame that is not a keyframe, or not the frame expected, and the request
    # falls back to the sequential decode, with the same clip.
    data = toy_files["mkv_h264"]
    build = KeyIndex.build

    def lying(*args: Any) -> Any:
        index = build(*args)
        return None if index is None else KeyIndex(index.rank, (0, 11, 19))

    sequential = decode_clip(data, seek=False, **CLIP8)
    monkeypatch.setattr(KeyIndex, "build", lying)
    with caplog.at_level(logging.DEBUG, logger=pyav.__name__):
        seeking = decode_clip(data, **CLIP8)
    assert any("gave up" in r.getMessage() for r in caplog.records)
    assert_same(sequential, seeking)
    assert seeking.frames_decoded > sequential.frames_decoded  # the attempt plus the pass


def _without_avi_index(data: bytes) -> bytes:
    """The avi with its idx1 index chunk turned into a JUNK chunk (demuxers skip it)."""
    out = bytearray(data)
    at = out.rfind(b"idx1")
    assert at > 0
    out[at : at + 4] = b"JUNK"
    return bytes(out)


@pytest.mark.parametrize("name", ["mp4_fragmented", "avi_mjpeg_no_index", "avi_mpeg4_no_index"])
def test_containers_without_an_index(name: str) -> None:
    # The seek pass never asks the container to seek: it demuxes and drops the packets
    # before a keyframe, so a file without a sample table or idx1 skips the same way.
    frames = media.synthetic_frames(60, 96, 128, seed=6)
    if name == "mp4_fragmented":
        data = media.write_video(
            None, frames, "mp4", "libx264", options={**H264, "x264-params": B_FRAMES},
            container_options={"movflags": "frag_keyframe+empty_moov"},
        )  # fmt: skip
    elif name == "avi_mjpeg_no_index":
        data = _without_avi_index(media.write_video(None, frames, "avi", "mjpeg"))
    else:
        options = {"g": "8", "qscale": "2"}
        data = _without_avi_index(media.write_video(None, frames, "avi", "mpeg4", options=options))
    for clip_len, interval in [(8, 2), (4, 8)]:
        sequential, seeking = both(data, clip_len, interval)
        assert_same(sequential, seeking)
        assert [media.read_frame_index(f) for f in seeking.frames] == (
            seeking.frame_indices.tolist()
        )
        assert seeking.frames_decoded < sequential.frames_decoded
