"""Videos through PyAV (FFmpeg): one upload's bytes in memory -> the sampled, resized frames.

Any container and codec FFmpeg decodes whose first video stream yields at least 2
frames: mp4/H.264, webm/VP8/VP9, mkv, avi/MJPEG, mov, animated GIF, ... Display
rotation metadata (phone videos) is applied, so portrait clips come out upright.

Frame count and memory
----------------------
Sampling needs the total frame count ``N`` before choosing frames, and frames
are decoded in order. Memory stays at what the decoder holds (its reference
frames, one per thread with frame threading) plus one full-resolution RGB frame
at a time plus ``clip_len`` small output frames -- never the whole video:

1. ``N`` comes from the container when it records it (mp4/mov sample tables, avi
   headers); otherwise (mkv/webm, gif, ...) from a demux-only pass that counts
   the stream's packets -- no decoding, so it costs a fraction of one decode.
   Encoders used in practice emit one packet per shown frame (VP8/VP9
   alt-ref frames are packed into superframes), so this count is exact for them.
2. One decoding pass then converts only the sampled frames to RGB
   (``to_ndarray`` is the expensive step; every other frame it passes is decoded,
   since inter-coded frames depend on each other, but never converted), resizes and
   crops each one immediately, and stops at the last frame it needs. It skips the
   packets no sampled frame depends on (see "Skipping to keyframes").
3. If the stream ends cleanly before that frame (the recorded or packet count
   was too high, e.g. a lying header), the pass has just counted the frames
   exactly, and a second pass samples with the true count. (A file cut short
   mid-packet is rejected instead: the demuxer flags the incomplete packet.)

A one-pass reservoir was rejected: with ``N`` unknown until the end, any frame
from the middle onwards may still be needed, so it would hold about half the
video. If a count is too *low*, the clip is sampled as if the video ended
there (slightly off-centre); no container in the tests does that.

Skipping to keyframes
---------------------
Step 2 need not decode from the first frame. The demux pass of step 1 (run also
when the container records ``N``, except for GIF, whose frames draw over the
previous canvas) notes each packet's ``pts`` and keyframe flag
(:class:`~service.decoder.keyframes.KeyIndex`).
A keyframe packet ``s`` *splits the stream cleanly* when the ``s`` packets before it
hold exactly the first ``s`` frames in presentation order and it is frame ``s``:
decoding from it then gives frames ``s, s+1, ...``, the same pixels as from the
start (closed GOPs, intra-only codecs; an open GOP's keyframe, whose leading
B-frames follow it, does not split). The sampled frames are grouped into runs, each
decoded from the last clean split before its first frame (the decoder flushed,
the packets in between demuxed but not decoded), up to its last frame; runs that
meet are decoded in one go.

Each frame that comes out must be the next one in presentation order (its ``pts``
rank) and the first after a skip a keyframe to the decoder; on any surprise, or a
demuxer or decoder error, the request decodes sequentially from the start instead
(the frames already decoded count towards ``max_frames``). No index is used, and
the decode stays sequential, when ``pts`` are missing or repeated (raw elementary
streams), when the packet count differs from the count sampling uses (a lying
header: the two-pass path of step 3), after a corrupt packet, and for GIF. Files
that start a seek pass and give it up: B-frames whose container timestamps are in
decode order (MPEG-4 with packed B-frames in avi, an mp4 muxed with pts = dts).
tests/unit/test_video_seek.py checks the clips are identical to the sequential
decode (``seek=False``) on toy and real files; ``shuffleguard bench decode`` times both.
"""

from __future__ import annotations

import io
import logging
import math

import av
import numpy as np

from service.decoder.clip import DecodedClip
from service.decoder.errors import (
    ACCEPTED,
    BadVideoError,
    LimitExceededError,
    NotAVideoError,
    VideoError,
)
from service.decoder.keyframes import Cursor, KeyIndex, PacketKey
from service.decoder.limits import Budget
from service.decoder.resize import Geometry
from service.decoder.sampling import sample_frame_indices
from service.decoder.sniff import still_image_kind

__all__ = ["SEQUENTIAL_FORMATS", "VideoDecoder"]

logger = logging.getLogger(__name__)

#: What PyAV raises on hostile input: FFmpegError subclasses (also OSError/ValueError
#: subclasses), plus decoding of metadata and odd container states.
_AV_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)


def _rotation_of(frame: av.VideoFrame) -> int:
    """Display rotation of ``frame`` in degrees counter-clockwise, as 0/90/180/270."""
    try:
        degrees = float(frame.rotation)
    except (AttributeError, TypeError, ValueError):
        return 0
    if not math.isfinite(degrees):
        return 0
    return (round(degrees / 90) * 90) % 360


#: Demuxers whose packets are decoded from the first one on, never skipped: an
#: animated GIF's frames draw over the previous canvas whatever their keyframe flag says.
SEQUENTIAL_FORMATS = frozenset({"gif"})


class VideoDecoder:
    """Decoding passes over one upload (see the module docstring, "Frame count and memory")."""

    def __init__(
        self,
        data: bytes,
        clip_len: int,
        frame_interval: int,
        geometry: Geometry,
        budget: Budget,
        *,
        seek: bool = True,
    ) -> None:
        self.data = data
        self.seek = seek
        self.clip_len = clip_len
        self.frame_interval = frame_interval
        self.geometry = geometry
        self.budget = budget
        self.format_name = ""
        self.codec_name: str | None = None
        self.width = 0
        self.height = 0
        self.rotation = 0
        self.key_index: KeyIndex | None = None
        self.seeked = False

    # -- container ------------------------------------------------------- #
    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(io.BytesIO(self.data), mode="r", metadata_errors="replace")
        except _AV_ERRORS as exc:
            raise self._unreadable(
                "could not read the upload as a video: it is not a video file, or it is"
                " truncated or corrupt",
                exc,
            ) from exc

    def _unreadable(self, what: str, exc: BaseException | None = None) -> VideoError:
        """The error for an upload FFmpeg cannot read: 415 when its magic bytes say it
        is a still image (one FFmpeg cannot open is still not a video), else 400."""
        kind = still_image_kind(self.data)
        if kind is not None:
            return NotAVideoError(f"the upload is a {kind} still image, not a video; {ACCEPTED}")
        detail = f" ({_describe(exc)})" if exc is not None else ""
        return BadVideoError(f"{what}{detail}; {ACCEPTED}")

    def _video_stream(self, container: av.container.InputContainer) -> av.VideoStream:
        attached = av.stream.Disposition.attached_pic
        videos = [s for s in container.streams.video if not (s.disposition & attached)]
        if not videos:
            kinds = sorted({s.type for s in container.streams})
            if kinds:
                raise NotAVideoError(
                    f"the upload has no video stream (it holds {' and '.join(kinds)} only);"
                    f" {ACCEPTED}"
                )
            raise BadVideoError(f"the container holds no streams; {ACCEPTED}")
        stream = videos[0]
        ctx = stream.codec_context
        if ctx is None:  # FFmpeg has no decoder for the stream's codec (or its id is garbage)
            raise BadVideoError(
                f"the video stream's codec is unknown or has no decoder here; {ACCEPTED}"
            )
        self.format_name = container.format.name
        self.codec_name = ctx.name
        if ctx.width and ctx.height:
            self.budget.check_pixels(ctx.width, ctx.height, "a frame of the video stream")
        # Backstop: the decoder itself refuses to allocate a far bigger frame (a size
        # change in mid-stream, a header without dimensions). FFmpeg counts padded
        # sizes (up to 1.2x for tiny frames), hence the slack; the exact limit is
        # checked on every decoded frame.
        cap = 2 * self.budget.limits.max_pixels
        ctx.options = {**ctx.options, "max_pixels": str(cap)}
        stream.thread_type = "AUTO"
        return stream

    # -- passes ---------------------------------------------------------- #
    def _frame_count_hint(self) -> int:
        """Frames in the stream, from the container or by counting packets (no decoding).

        The packet scan also records where decoding may start (:class:`KeyIndex`),
        except for containers in :data:`SEQUENTIAL_FORMATS`; when the container
        records the count, that scan is only an optimisation and any error in it
        just leaves the decode sequential (the decoding pass reports the error).
        """
        with self._open() as container:
            stream = self._video_stream(container)
            recorded = int(stream.frames)
            seekable = self.seek and self.format_name not in SEQUENTIAL_FORMATS
            if recorded > 0 and not (seekable and self._reachable(recorded)):
                return recorded  # nothing to index: sampling refuses or reads from the start
            # Past this many packets the centre clip lies beyond max_frames: no index.
            span = self.clip_len * self.frame_interval
            limit = recorded or 2 * self.budget.limits.max_frames + span
            packets, keys = self._scan_packets(container, stream, strict=not recorded, limit=limit)
            total = recorded if recorded > 0 else packets
            # avi stores no presentation times: with B-frames its pts are guesses
            reorders = bool(stream.codec_context.has_b_frames)
            if seekable and keys is not None and not (reorders and self.format_name == "avi"):
                self.key_index = KeyIndex.build(keys, total, reorders)
            return total

    def _scan_packets(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        *,
        strict: bool,
        limit: int,
    ) -> tuple[int, list[PacketKey] | None]:
        """Demux only: the number of non-empty packets and each one's ``(pts, dts,
        is_keyframe)`` in decode order (None after a corrupt packet or a demuxer
        error, which raise :class:`BadVideoError` when ``strict``, or past ``limit``
        packets: then a ``strict`` scan goes on counting, another stops)."""
        keys: list[PacketKey] | None = []
        packets = 0
        try:
            for packet in container.demux(stream):
                self.budget.check_time()
                if packet.size:
                    if (packet.is_corrupt or packets >= limit) and not strict:
                        return packets, None
                    self._check_packet(packet, packets)
                    packets += 1
                    if keys is not None and len(keys) < limit:
                        keys.append((packet.pts, packet.dts, bool(packet.is_keyframe)))
                    else:
                        keys = None  # memory stays bounded whatever the packet count
        except _AV_ERRORS as exc:
            if not strict:
                return packets, None
            raise BadVideoError(
                f"the video is corrupt or truncated: reading its packets failed after"
                f" {packets} ({_describe(exc)}); re-encode or re-upload the file"
            ) from exc
        return packets, keys

    @staticmethod
    def _check_packet(packet: av.Packet, position: int) -> None:
        # The demuxer flags a packet cut short by the end of the data (a truncated upload).
        if packet.is_corrupt:
            raise BadVideoError(
                f"the video is corrupt or truncated: packet {position} of the video stream is"
                " incomplete; re-encode or re-upload the file"
            )

    def _decode_pass(self, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
        """Decode in order, keeping the resized crops of the ``wanted`` frames; stop
        after the last one (or decode to the end when ``wanted`` is empty).

        Returns the kept crops by index and the number of frames decoded in this
        pass (the exact frame count when the stream ended before the last wanted).
        """
        last = max(wanted) if wanted else None
        kept: dict[int, np.ndarray] = {}
        count = 0
        packets = 0
        with self._open() as container:
            stream = self._video_stream(container)
            try:
                for packet in container.demux(stream):
                    self.budget.check_time()
                    if packet.size:
                        self._check_packet(packet, packets)
                        packets += 1
                    # A size-0 packet flushes the decoder at the end of the stream.
                    for frame in stream.decode(packet):
                        self.budget.count_frame()
                        self.budget.check_pixels(frame.width, frame.height, "a decoded frame")
                        index = count
                        count += 1
                        if index in wanted:
                            kept[index] = self._convert(frame)
                        if last is not None and index >= last:
                            return kept, count
            except _AV_ERRORS as exc:
                if count == 0:
                    raise self._unreadable("the video stream could not be decoded", exc) from exc
                raise BadVideoError(
                    f"the video is corrupt or truncated: decoding failed after {count} frames"
                    f" ({_describe(exc)}); re-encode or re-upload the file"
                ) from exc
        return kept, count

    def _sample_pass(self, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
        """:meth:`_seek_pass` when the key index lets it skip packets, else (or when
        it gives up) :meth:`_decode_pass`."""
        index, self.key_index = self.key_index, None  # valid for the first sampling only
        if index is not None and index.skips(wanted):
            self.key_index = index
            kept = self._seek_pass(wanted)
            self.key_index = None
            if kept is not None:
                self.seeked = True
                return kept, 0
            logger.debug("seek pass on %s/%s gave up", self.format_name, self.codec_name)
        return self._decode_pass(wanted)

    def _seek_pass(self, wanted: set[int]) -> dict[int, np.ndarray] | None:
        """Decode only the runs of packets the ``wanted`` frames need: skip to the
        keyframe that starts each run (dropping the decoder's state), decode up to
        the run's last wanted frame.

        Every frame that comes out is checked to be the next one in presentation
        order (the rank of its ``pts``), and the first after a skip to be a
        keyframe to the decoder; on any surprise (or a demuxer or decoder error) it
        returns None and the caller decodes sequentially instead.
        """
        index = self.key_index
        assert index is not None
        kept: dict[int, np.ndarray] = {}
        with self._open() as container:
            stream = self._video_stream(container)
            cursor = Cursor(p for p in container.demux(stream) if p.size)
            try:
                for start, last in index.runs(wanted):
                    if start > cursor.position:
                        stream.codec_context.flush_buffers()
                        cursor.skip_to(start, self.budget)
                    if not self._decode_run(stream, cursor, wanted, kept, last):
                        return None
            except _AV_ERRORS:
                return None
        return kept if len(kept) == len(wanted) else None

    def _decode_run(
        self,
        stream: av.VideoStream,
        cursor: Cursor,
        wanted: set[int],
        kept: dict[int, np.ndarray],
        last: int,
    ) -> bool:
        """Feed packets until frame ``last`` comes out, checking that frames arrive
        in presentation order; True when it did."""
        index = self.key_index
        assert index is not None
        while cursor.expected <= last:
            self.budget.check_time()
            if not cursor.pending:
                if cursor.ended:
                    return False  # the stream ended before frame ``last``
                cursor.pending = list(stream.decode(cursor.next()))
            while cursor.pending and cursor.expected <= last:
                frame = cursor.pending.pop(0)
                self.budget.count_frame()
                self.budget.check_pixels(frame.width, frame.height, "a decoded frame")
                if frame.pts is None or index.rank.get(frame.pts) != cursor.expected:
                    return False
                if cursor.jumped and not frame.key_frame:
                    return False
                cursor.jumped = False
                if cursor.expected in wanted:
                    kept[cursor.expected] = self._convert(frame)
                cursor.expected += 1
        return True

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        """One decoded frame -> uint8 ``[crop, crop, 3]`` RGB, upright."""
        image = frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)
        self.rotation = _rotation_of(frame)
        if self.rotation:
            image = np.rot90(image, k=self.rotation // 90)
        self.height, self.width = image.shape[:2]
        return self.geometry.apply(image)

    def _reachable(self, total: int) -> bool:
        """True when the centre clip of ``total`` frames ends within ``max_frames``."""
        indices = sample_frame_indices(total, self.clip_len, self.frame_interval)
        return int(indices.max()) < self.budget.limits.max_frames

    def _check_reachable(self, total: int, indices: np.ndarray) -> None:
        needed = int(indices.max()) + 1
        if needed > self.budget.limits.max_frames:
            raise LimitExceededError(
                "max_frames",
                needed,
                self.budget.limits.max_frames,
                f"the video has {total} frames; its centre clip ends at frame {needed}, so"
                f" decoding it would exceed max_frames={self.budget.limits.max_frames}; trim"
                " the video to its interesting part",
            )

    def decode(self) -> DecodedClip:
        total = self._frame_count_hint()
        exact = False
        if total < 2:
            # Too few frames to be a video on paper: decode to the end to know for sure.
            _, total = self._decode_pass(set())
            exact = True
        for _ in range(2):
            if total < 2:
                break
            indices = sample_frame_indices(total, self.clip_len, self.frame_interval)
            self._check_reachable(total, indices)
            kept, count = self._sample_pass(set(indices.tolist()))
            if len(kept) == len(set(indices.tolist())):
                frames = np.stack([kept[i] for i in indices.tolist()])
                logger.debug(
                    "decoded %s/%s: %d of %d frames sampled, %d decoded",
                    self.format_name,
                    self.codec_name,
                    self.clip_len,
                    total,
                    self.budget.frames,
                )
                return DecodedClip(
                    frames=frames,
                    frame_indices=indices,
                    source_format=self.format_name,
                    source_codec=self.codec_name,
                    source_frames=total,
                    source_width=self.width,
                    source_height=self.height,
                    frames_decoded=self.budget.frames,
                    rotation=self.rotation,
                )
            if exact:  # cannot happen with a deterministic decoder; do not loop on it
                break
            total, exact = count, True  # the stream ended early: now the count is exact
        if total == 0:
            raise self._unreadable("the video stream holds no decodable frame")
        if total == 1:
            kind = still_image_kind(self.data)
            what = f"a {kind} still image" if kind else "a single frame (a still image)"
            raise NotAVideoError(f"the upload holds {what}, not a video; {ACCEPTED}")
        raise BadVideoError(
            "the video's frames changed between decoding passes; re-encode the file"
        )


def _describe(exc: BaseException) -> str:
    """A short, client-safe description of a PyAV/FFmpeg error."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip()
