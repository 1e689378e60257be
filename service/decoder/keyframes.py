"""Where a video may be decoded from: the keyframes that split its stream cleanly
(:class:`KeyIndex`, from one demux pass), and the walk of one seek pass over the
packets (:class:`Cursor`); see "Skipping to keyframes" in :mod:`service.decoder.pyav`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

import av

from service.decoder.limits import Budget

__all__ = ["Cursor", "KeyIndex", "PacketKey"]


#: ``(pts, dts, is_keyframe)`` of one packet
PacketKey = tuple[int | None, int | None, bool]


@dataclass(frozen=True)
class KeyIndex:
    """Where decoding may start, from one demux pass (no decoding).

    ``rank`` maps each packet's ``pts`` to its frame's place in presentation order
    (the index sampling uses). ``starts`` are the decode positions ``s`` at which
    the stream splits cleanly: packet ``s`` is a keyframe, the ``s`` packets before
    it hold exactly frames ``0 .. s-1`` and it is frame ``s`` itself, so decoding
    from packet ``s`` gives frames ``s, s+1, ...`` with nothing before it (0, the
    stream's start, always is one).
    """

    rank: dict[int, int]
    starts: tuple[int, ...]

    @classmethod
    def build(cls, keys: list[PacketKey], total: int, reorders: bool) -> KeyIndex | None:
        """The index of packets ``keys`` (``(pts, dts, is_keyframe)`` in decode order),
        or None when they cannot name the frames: a missing or repeated ``pts``, a
        packet count that differs from the ``total`` frames sampling uses, or a codec
        that ``reorders`` frames (B-frames) whose timestamps are all in decode order."""
        if reorders and all(p == d for p, d, _ in keys):
            return None
        pts = [p for p, _, _ in keys if p is not None]
        if len(pts) != total or len(keys) != total or total < 2 or len(set(pts)) != total:
            return None
        rank = {p: r for r, p in enumerate(sorted(pts))}
        starts = [0]
        highest = -1
        for position, (p, (_, _, key)) in enumerate(zip(pts, keys, strict=True)):
            if position and key and rank[p] == position and highest == position - 1:
                starts.append(position)
            highest = max(highest, rank[p])
        return cls(rank=rank, starts=tuple(starts))

    def runs(self, wanted: set[int]) -> list[tuple[int, int]]:
        """``(start, last)`` per run: decode from start ``start`` up to frame ``last``;
        a wanted frame whose start lies within (or just after) the run before joins it."""
        runs: list[tuple[int, int]] = []
        for frame in sorted(wanted):
            start = self.starts[bisect_right(self.starts, frame) - 1]
            if runs and start <= runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], frame)
            else:
                runs.append((start, frame))
        return runs

    def skips(self, wanted: set[int]) -> bool:
        """True when decoding only :meth:`runs` leaves packets out."""
        runs = self.runs(wanted)
        return bool(runs) and (runs[0][0] > 0 or len(runs) > 1)


class Cursor:
    """Where a seek pass is in the stream's non-empty packets."""

    def __init__(self, packets: Iterator[av.Packet]) -> None:
        self.packets = packets
        self.position = 0  # packets consumed, fed or skipped
        self.expected = 0  # the next frame (presentation order) the decoder must give
        self.jumped = False  # True until the first frame after a skip
        self.ended = False  # the end-of-stream flush was sent
        self.pending: list[av.VideoFrame] = []  # decoded, not yet looked at (stops at a run's end)

    def next(self) -> av.Packet | None:
        """The next packet, or None (the decoder's end-of-stream flush) at the end."""
        packet = next(self.packets, None)
        self.position += packet is not None
        self.ended = packet is None
        return packet

    def skip_to(self, start: int, budget: Budget) -> None:
        """Skip packets (demuxed, not decoded) up to ``start``, a key start."""
        while self.position < start:
            budget.check_time()
            if self.next() is None:
                raise EOFError("the stream ended before the keyframe it indexed")
        self.expected, self.jumped, self.pending = start, True, []
