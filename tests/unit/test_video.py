"""service.decoder: sampling maths, every accepted format, and every rejection.

Videos are real files encoded by PyAV (tests/media.py); their frames carry the
frame index in a black/white bit grid and a seed-derived background colour, so
the tests check *which* frames were sampled and that colours survive.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.decoder import resize
from service.decoder.clip import DecodedClip
from service.decoder.decode import decode_clip
from service.decoder.errors import (
    LIMIT_CODES,
    BadVideoError,
    LimitExceededError,
    NotAVideoError,
    VideoError,
)
from service.decoder.limits import DecodeLimits
from service.decoder.sampling import sample_frame_indices
from service.gateway.errors import ERROR_CODES
from tests import media


class ClipArgs(TypedDict):
    clip_len: int
    frame_interval: int
    crop_size: int


CLIP: ClipArgs = {"clip_len": 8, "frame_interval": 2, "crop_size": 64}
EncodeVideo = Callable[..., bytes]


def frame_indices_read(clip: DecodedClip) -> list[int]:
    return [media.read_frame_index(frame) for frame in clip.frames]


def assert_clip_shape(clip: DecodedClip, clip_len: int, crop: int) -> None:
    assert clip.frames.shape == (clip_len, crop, crop, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.frames.flags.c_contiguous
    assert clip.frame_indices.shape == (clip_len,) and clip.frame_indices.dtype == np.int64


# --------------------------------------------------------------------------- #
# sample_frame_indices
# --------------------------------------------------------------------------- #
def mmaction_test_clip(total: int, clip_len: int, interval: int) -> np.ndarray:
    """MMAction2 SampleFrames._get_test_clips + loop, num_clips=1, written as upstream does."""
    ori_clip_len = clip_len * interval
    avg_interval = (total - ori_clip_len + 1) / float(1)
    if total > ori_clip_len - 1:
        base_offsets = np.arange(1) * avg_interval
        clip_offsets = (base_offsets + avg_interval / 2.0).astype(np.int32)
    else:
        clip_offsets = np.zeros((1,), dtype=np.int32)
    frame_inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * interval
    return np.mod(np.concatenate(frame_inds), total)


@pytest.mark.parametrize(
    ("total", "clip_len", "interval", "expected"),
    [
        (40, 8, 2, [12, 14, 16, 18, 20, 22, 24, 26]),  # centred: 12 before, 13 after
        (16, 8, 2, [0, 2, 4, 6, 8, 10, 12, 14]),  # exactly one span
        (17, 8, 2, [1, 3, 5, 7, 9, 11, 13, 15]),
        (10, 8, 2, [0, 2, 4, 6, 8, 0, 2, 4]),  # total < clip_len * interval: loops
        (3, 8, 1, [0, 1, 2, 0, 1, 2, 0, 1]),  # total < clip_len
        (1, 4, 3, [0, 0, 0, 0]),  # a single frame
    ],
)
def test_sample_frame_indices_examples(
    total: int, clip_len: int, interval: int, expected: list[int]
) -> None:
    got = sample_frame_indices(total, clip_len, interval)
    assert got.dtype == np.int64
    assert got.tolist() == expected


@pytest.mark.parametrize(("total", "clip_len", "interval"), [(0, 8, 2), (5, 0, 2), (5, 8, 0)])
def test_sample_frame_indices_rejects_nonsense(total: int, clip_len: int, interval: int) -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(total, clip_len, interval)


@settings(max_examples=400, deadline=None)
@given(total=st.integers(1, 5000), clip_len=st.integers(1, 64), interval=st.integers(1, 16))
def test_sample_frame_indices_properties(total: int, clip_len: int, interval: int) -> None:
    idx = sample_frame_indices(total, clip_len, interval)
    assert idx.shape == (clip_len,)
    assert idx.min() >= 0 and idx.max() < total
    np.testing.assert_array_equal(idx, mmaction_test_clip(total, clip_len, interval))
    span = clip_len * interval
    if total >= span:
        # Fits: a strided run, centred (margins before and after differ by at most 1).
        assert (np.diff(idx) == interval).all()
        before, after = int(idx[0]), total - (int(idx[-1]) + interval)
        assert 0 <= before - after <= 1
    else:
        # Too short: the strided run from frame 0, looped.
        np.testing.assert_array_equal(idx, (np.arange(clip_len) * interval) % total)


# --------------------------------------------------------------------------- #
# Accepted formats
# --------------------------------------------------------------------------- #
CODEC_OF_KIND = {
    "mp4_h264": "h264",
    "webm_vp8": "vp8",
    "webm_vp9": "vp9",
    "mkv_h264": "h264",
    "avi_mjpeg": "mjpeg",
    "mov_h264": "h264",
    "gif": "gif",
}


@pytest.mark.parametrize("kind", sorted(media.VIDEO_KINDS))
def test_every_format_decodes_the_centre_clip(kind: str, encoded_video: EncodeVideo) -> None:
    t, h, w, seed = 40, 96, 128, 7
    data = encoded_video(kind, t=t, h=h, w=w, seed=seed)
    clip = decode_clip(data, **CLIP)
    assert_clip_shape(clip, 8, 64)
    expected = sample_frame_indices(t, 8, 2)
    np.testing.assert_array_equal(clip.frame_indices, expected)
    assert frame_indices_read(clip) == expected.tolist()  # the right frames, in order
    background = np.asarray(media.background_color(seed), dtype=np.float64)
    for frame in clip.frames:
        assert np.abs(media.bottom_half_color(frame) - background).max() <= 8
    assert clip.source_codec == CODEC_OF_KIND[kind]
    assert clip.source_format != "npy"
    assert clip.source_frames == t
    assert (clip.source_width, clip.source_height) == (w, h)
    assert not clip.passthrough
    # Decoding stopped at the last sampled frame (the clip is centred, not at the end);
    # with every frame a keyframe (MJPEG) it skipped to each sampled frame instead.
    intra_only = kind == "avi_mjpeg"
    needed = len(set(expected.tolist())) if intra_only else int(expected.max()) + 1
    assert clip.frames_decoded == needed


@pytest.mark.parametrize("kind", ["mp4_h264", "webm_vp9", "avi_mjpeg"])
def test_video_matches_the_lossless_npy_path(
    kind: str, encoded_video: EncodeVideo, npy_clip: Callable[..., bytes]
) -> None:
    # The same frames as a video and as an .npy give the same clip up to codec loss:
    # a wrong resize, crop or colour conversion in either path would show here.
    from_video = decode_clip(encoded_video(kind, t=40, h=96, w=128, seed=3), **CLIP)
    from_npy = decode_clip(npy_clip(40, 96, 128, seed=3), **CLIP)
    np.testing.assert_array_equal(from_video.frame_indices, from_npy.frame_indices)
    diff = np.abs(from_video.frames.astype(np.int16) - from_npy.frames.astype(np.int16))
    assert diff.mean() < 4.0


def test_short_video_loops(encoded_video: EncodeVideo) -> None:
    clip = decode_clip(encoded_video("mp4_h264", t=5, h=64, w=80), **CLIP)
    assert frame_indices_read(clip) == [0, 2, 4, 1, 3, 0, 2, 4]
    assert clip.source_frames == 5


def test_two_frame_gif_is_a_video(encoded_video: EncodeVideo) -> None:
    clip = decode_clip(
        encoded_video("gif", t=2, h=64, w=64), clip_len=4, frame_interval=1, crop_size=32
    )
    assert frame_indices_read(clip) == [0, 1, 0, 1]


@pytest.mark.parametrize(("h", "w"), [(160, 96), (96, 160)])
def test_portrait_and_landscape(h: int, w: int, encoded_video: EncodeVideo) -> None:
    clip = decode_clip(encoded_video("mp4_h264", t=24, h=h, w=w, seed=4), **CLIP)
    assert_clip_shape(clip, 8, 64)
    assert frame_indices_read(clip) == sample_frame_indices(24, 8, 2).tolist()
    assert (clip.source_width, clip.source_height) == (w, h)


@pytest.mark.parametrize(("rotation", "k"), [(90, -1), (-90, 1), (180, 2)])
def test_display_rotation_is_applied(rotation: int, k: int) -> None:
    # A portrait clip stored sideways with rotation metadata (as phones record it)
    # comes out upright: the index grid is only readable the right way up.
    portrait = media.synthetic_frames(12, 160, 96, seed=2)
    stored = np.ascontiguousarray(np.rot90(portrait, k=k, axes=(1, 2)))
    data = media.write_video(None, stored, "mp4", "libx264", rotation=rotation)
    clip = decode_clip(data, clip_len=4, frame_interval=2, crop_size=48)
    assert clip.rotation == rotation % 360
    assert (clip.source_width, clip.source_height) == (96, 160)
    assert frame_indices_read(clip) == sample_frame_indices(12, 4, 2).tolist()


def test_only_sampled_frames_are_converted(
    encoded_video: EncodeVideo, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []
    real = resize.resize_crop

    def counting(image: np.ndarray, crop_size: int) -> np.ndarray:
        calls.append(image.shape)
        return real(image, crop_size)

    monkeypatch.setattr(resize, "resize_crop", counting)
    clip = decode_clip(encoded_video("webm_vp8", t=40, h=96, w=128), **CLIP)
    assert len(calls) == len(set(clip.frame_indices.tolist())) == 8
    looped = decode_clip(encoded_video("mp4_h264", t=5, h=64, w=80), **CLIP)
    assert len(calls) == 8 + len(set(looped.frame_indices.tolist())) == 8 + 5


@pytest.mark.parametrize("claimed", [1, 1000])
def test_wrong_container_frame_count_is_corrected(claimed: int, encoded_video: EncodeVideo) -> None:
    # An avi whose headers claim 1 or 1000 frames for 48 real ones: the decoder counts
    # them and samples the true centre.
    data = bytearray(encoded_video("avi_mjpeg", t=48, h=64, w=80))
    strh = data.find(b"strh")
    data[strh + 8 + 32 : strh + 8 + 36] = struct.pack("<I", claimed)  # strh.dwLength
    avih = data.find(b"avih")
    data[avih + 24 : avih + 28] = struct.pack("<I", claimed)  # avih.dwTotalFrames
    clip = decode_clip(bytes(data), **CLIP)
    assert clip.source_frames == 48
    assert frame_indices_read(clip) == sample_frame_indices(48, 8, 2).tolist()


# --------------------------------------------------------------------------- #
# npy
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("content_type", [None, "application/x-npy", "application/octet-stream"])
@pytest.mark.parametrize("fortran", [False, True])
def test_npy_at_model_shape_passes_through_bit_exact(
    content_type: str | None, fortran: bool, random_clip: Callable[..., np.ndarray]
) -> None:
    clip_array = random_clip(8, 64, 64, seed=11)
    stored = np.asfortranarray(clip_array) if fortran else clip_array
    clip = decode_clip(media.npy_bytes(stored), **CLIP, content_type=content_type)
    assert clip.passthrough
    assert np.array_equal(clip.frames, clip_array)
    assert clip.frames.flags.c_contiguous and clip.frames.flags.writeable
    assert clip.frame_indices.tolist() == list(range(8))
    assert (clip.source_format, clip.source_codec, clip.frames_decoded) == ("npy", None, 0)


def test_npy_other_shapes_are_sampled_and_resized(npy_clip: Callable[..., bytes]) -> None:
    clip = decode_clip(npy_clip(30, 120, 90, seed=5), **CLIP)
    assert_clip_shape(clip, 8, 64)
    assert not clip.passthrough
    assert frame_indices_read(clip) == sample_frame_indices(30, 8, 2).tolist()
    assert (clip.source_frames, clip.source_width, clip.source_height) == (30, 90, 120)


def test_npy_with_short_side_at_crop_is_only_cropped(
    random_clip: Callable[..., np.ndarray],
) -> None:
    frames = random_clip(20, 64, 90, seed=2)
    clip = decode_clip(media.npy_bytes(frames), **CLIP)
    idx = sample_frame_indices(20, 8, 2)
    left = (90 - 64) // 2
    assert np.array_equal(clip.frames, frames[idx, :, left : left + 64])


def test_resize_is_antialiased_bilinear(random_clip: Callable[..., np.ndarray]) -> None:
    frames = random_clip(16, 128, 192, seed=3)
    clip = decode_clip(media.npy_bytes(frames), **CLIP)
    idx = sample_frame_indices(16, 8, 2)
    x = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float()
    ref = torch.nn.functional.interpolate(
        x, size=(64, 96), mode="bilinear", antialias=True, align_corners=False
    )
    ref_crop = ref[:, :, :, 16:80].permute(0, 2, 3, 1).round().clamp(0, 255).numpy()
    assert np.abs(clip.frames.astype(np.float64) - ref_crop).max() <= 1.0


# --------------------------------------------------------------------------- #
# Rejections
# --------------------------------------------------------------------------- #
def raises(
    exc_type: type[VideoError], status: int, code: str, data: bytes, **kwargs: object
) -> VideoError:
    args = {**CLIP, **kwargs}
    with pytest.raises(exc_type) as info:
        decode_clip(data, **args)  # type: ignore[arg-type]
    err = info.value
    assert isinstance(err, VideoError)
    assert (ERROR_CODES[err.code].status, err.code) == (status, code)
    assert err.message and str(err) == err.message
    return err


def test_empty_body() -> None:
    err = raises(BadVideoError, 400, "bad_video", b"")
    assert "empty" in err.message


def test_random_bytes() -> None:
    junk = np.random.default_rng(0).integers(0, 256, size=20_000, dtype=np.uint8).tobytes()
    err = raises(BadVideoError, 400, "bad_video", junk)
    assert "could not" in err.message


@pytest.mark.parametrize("content_type", [None, "text/plain; charset=utf-8"])
def test_text_is_a_bad_video(content_type: str | None) -> None:
    # Subtitle-like text would otherwise reach FFmpeg's subtitle demuxers.
    body = "1\n00:00:01,000 --> 00:00:02,000\nhello\n\nnot a video, just text é\n".encode()
    err = raises(BadVideoError, 400, "bad_video", body, content_type=content_type)
    assert "text" in err.message


def test_truncated_mp4(sample_mp4: bytes) -> None:
    for cut in (16, len(sample_mp4) // 2):
        raises(BadVideoError, 400, "bad_video", sample_mp4[:cut])


def test_truncated_fragmented_mp4() -> None:
    # moov first, so it opens; the cut lands before the sampled frames.
    frames = media.synthetic_frames(60, 64, 80)
    data = media.write_video(
        None, frames, "mp4", "libx264", container_options={"movflags": "frag_keyframe+empty_moov"}
    )
    err = raises(BadVideoError, 400, "bad_video", data[: int(len(data) * 0.4)])
    assert "truncated" in err.message


def test_npy_content_type_without_npy_body(sample_mp4: bytes) -> None:
    err = raises(BadVideoError, 400, "bad_video", sample_mp4, content_type="application/x-npy")
    assert "npy" in err.message


@pytest.mark.parametrize("content_type", ["text/plain", "image/png", "video/mp4; codecs=avc1"])
def test_content_type_is_not_trusted_for_videos(content_type: str, sample_mp4: bytes) -> None:
    clip = decode_clip(sample_mp4, **CLIP, content_type=content_type)
    assert clip.source_codec == "h264"


@pytest.mark.parametrize(
    ("codec", "name"), [("png", "PNG"), ("mjpeg", "JPEG"), ("bmp", "BMP"), ("libwebp", "WebP")]
)
def test_still_images_are_not_videos(codec: str, name: str) -> None:
    if not media.encoder_available(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder")
    image = media.write_image(None, media.synthetic_frames(1, 96, 128)[0], codec)
    err = raises(NotAVideoError, 415, "not_a_video", image)
    assert name in err.message


def test_still_fixtures_and_a_broken_png(still_png: bytes, still_jpeg: bytes) -> None:
    raises(NotAVideoError, 415, "not_a_video", still_png)
    raises(NotAVideoError, 415, "not_a_video", still_jpeg)
    # A PNG FFmpeg cannot parse is still recognised as an image, not a video.
    raises(NotAVideoError, 415, "not_a_video", still_png[:8] + b"\x00garbage" * 50)


def test_audio_only_is_not_a_video(audio_m4a: bytes) -> None:
    for data in (audio_m4a, media.write_audio_only(fmt="wav", codec="pcm_s16le", seconds=0.2)):
        err = raises(NotAVideoError, 415, "not_a_video", data)
        assert "no video stream" in err.message and "audio" in err.message


@pytest.mark.parametrize("kind", ["mp4_h264", "gif", "avi_mjpeg"])
def test_single_frame_video_is_not_a_video(kind: str, encoded_video: EncodeVideo) -> None:
    err = raises(NotAVideoError, 415, "not_a_video", encoded_video(kind, t=1, h=64, w=64))
    assert "single frame" in err.message


def test_single_frame_npy_is_not_a_video(npy_clip: Callable[..., bytes]) -> None:
    raises(NotAVideoError, 415, "not_a_video", npy_clip(1, 96, 96))


def test_oversized_upload(sample_mp4: bytes) -> None:
    limits = DecodeLimits(max_bytes=len(sample_mp4) - 1)
    err = raises(LimitExceededError, 413, "video_too_large", sample_mp4, limits=limits)
    assert isinstance(err, LimitExceededError)
    assert (err.limit, err.value, err.maximum) == (
        "max_bytes",
        len(sample_mp4),
        len(sample_mp4) - 1,
    )
    assert "max_bytes" in err.message and str(len(sample_mp4)) in err.message
    decode_clip(sample_mp4, **CLIP, limits=DecodeLimits(max_bytes=len(sample_mp4)))


def test_frame_over_the_default_pixel_limit() -> None:
    # 4096x2048 = 8.4 Mpx > 3840x2160 = 8.3 Mpx: refused from the stream header.
    data = media.write_video(None, np.zeros((2, 2048, 4096, 3), np.uint8), "mp4", "libx264")
    err = raises(LimitExceededError, 413, "frame_too_large", data)
    assert "4096x2048" in err.message and "max_pixels" in err.message


def test_frame_over_a_small_pixel_limit(sample_mp4: bytes, npy_clip: Callable[..., bytes]) -> None:
    limits = DecodeLimits(max_pixels=160 * 120 - 1)
    raises(LimitExceededError, 413, "frame_too_large", sample_mp4, limits=limits)
    raises(LimitExceededError, 413, "frame_too_large", npy_clip(10, 120, 160), limits=limits)
    decode_clip(sample_mp4, **CLIP, limits=DecodeLimits(max_pixels=160 * 120))


@pytest.mark.parametrize("kind", ["mp4_h264", "webm_vp9"])
def test_too_many_frames(kind: str, encoded_video: EncodeVideo) -> None:
    data = encoded_video(kind, t=48, h=64, w=80)
    needed = int(sample_frame_indices(48, 8, 2).max()) + 1  # 31: decoding stops there
    err = raises(
        LimitExceededError, 413, "too_many_frames", data, limits=DecodeLimits(max_frames=needed - 1)
    )
    assert "max_frames" in err.message
    clip = decode_clip(data, **CLIP, limits=DecodeLimits(max_frames=needed))
    assert clip.frames_decoded == needed


def test_too_many_frames_counted_while_decoding(encoded_video: EncodeVideo) -> None:
    # The header claims 1 frame, so the up-front check cannot see the 48; the counter does.
    data = bytearray(encoded_video("avi_mjpeg", t=48, h=64, w=80))
    strh = data.find(b"strh")
    data[strh + 40 : strh + 44] = struct.pack("<I", 1)
    err = raises(
        LimitExceededError, 413, "too_many_frames", bytes(data), limits=DecodeLimits(max_frames=20)
    )
    assert isinstance(err, LimitExceededError) and err.value == 21


def test_npy_too_many_frames(npy_clip: Callable[..., bytes]) -> None:
    raises(
        LimitExceededError,
        413,
        "too_many_frames",
        npy_clip(12, 16, 16),
        limits=DecodeLimits(max_frames=11),
    )


@pytest.mark.parametrize("kind", ["mp4_h264", "webm_vp8"])
def test_decode_timeout(kind: str, encoded_video: EncodeVideo) -> None:
    limits = DecodeLimits(max_decode_seconds=1e-9)
    err = raises(LimitExceededError, 413, "decode_timeout", encoded_video(kind), limits=limits)
    assert "max_decode_seconds" in err.message


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((8, 64, 64, 3), np.float32), "dtype"),
        (np.zeros((8, 64, 64), np.uint8), "dimensions"),
        (np.zeros((2, 8, 64, 64, 3), np.uint8), "dimensions"),
        (np.zeros((8, 64, 64, 4), np.uint8), "channels"),
        (np.zeros((0, 64, 64, 3), np.uint8), "empty"),
    ],
)
def test_npy_with_wrong_layout(array: np.ndarray, fragment: str) -> None:
    err = raises(BadVideoError, 400, "bad_video", media.npy_bytes(array))
    assert fragment in err.message and "uint8 [T, H, W, 3]" in err.message


def test_npy_object_array_is_never_unpickled() -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    err = raises(BadVideoError, 400, "bad_video", buf.getvalue())
    assert "dtype" in err.message


def test_npy_malformed_header() -> None:
    raises(BadVideoError, 400, "bad_video", b"\x93NUMPY\x01\x00\x10\x00{not a dict}   \n")
    raises(BadVideoError, 400, "bad_video", b"\x93NUMPY")


def test_npy_huge_declared_shape_rejected_before_allocation() -> None:
    # A 100-byte upload declaring terabytes: refused from the header alone.
    raises(LimitExceededError, 413, "too_many_frames", media.npy_header_only((10**9, 64, 64, 3)))
    raises(LimitExceededError, 413, "frame_too_large", media.npy_header_only((8, 10**6, 10**6, 3)))


def test_npy_header_and_payload_disagree() -> None:
    full = media.npy_bytes(np.zeros((8, 64, 64, 3), np.uint8))
    for data in (full[:-1], full + b"\x00", media.npy_header_only((8, 64, 64, 3))):
        err = raises(BadVideoError, 400, "bad_video", data)
        assert "declares" in err.message


# --------------------------------------------------------------------------- #
# API details
# --------------------------------------------------------------------------- #
def test_error_classes() -> None:
    assert issubclass(BadVideoError, VideoError) and issubclass(NotAVideoError, VideoError)
    assert issubclass(LimitExceededError, VideoError)
    assert (ERROR_CODES[BadVideoError.code].status, BadVideoError.code) == (400, "bad_video")
    assert (ERROR_CODES[NotAVideoError.code].status, NotAVideoError.code) == (415, "not_a_video")
    codes = {LimitExceededError(name, 2, 1, "m").code for name in LIMIT_CODES}
    assert {ERROR_CODES[code].status for code in codes} == {413}
    assert codes == {"video_too_large", "frame_too_large", "too_many_frames", "decode_timeout"}


def test_limits_defaults_and_validation() -> None:
    limits = DecodeLimits()
    assert limits.max_pixels == 3840 * 2160 and limits.max_frames == 3000
    assert limits.max_decode_seconds == 30.0 and limits.max_bytes == 50 * 1024 * 1024
    for bad in ({"max_bytes": 0}, {"max_pixels": -1}, {"max_frames": 0}, {"max_decode_seconds": 0}):
        with pytest.raises(ValueError):
            DecodeLimits(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("clip_len", "frame_interval", "crop_size"), [(0, 2, 64), (8, 0, 64), (8, 2, 0)]
)
def test_caller_bugs_are_value_errors(
    clip_len: int, frame_interval: int, crop_size: int, sample_mp4: bytes
) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        decode_clip(
            sample_mp4, clip_len=clip_len, frame_interval=frame_interval, crop_size=crop_size
        )
