"""``records.jsonl``: the per-result records of an evaluation, read and written here only.

One JSON object per finished work unit ``(seed, clip, attack, defense)``, appended and
flushed as soon as it exists, so an interrupted run resumes. A line cut short by an
interruption is dropped when the file is opened for appending (truncated to its last
complete line), so appending after a crash never corrupts it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Key", "Records"]

logger = logging.getLogger(__name__)

Key = tuple[int, int, str, str]  # (seed, clip id, attack, defense row)


class Records:
    """The records of one evaluation directory's ``records.jsonl``.

    ``Records(path)`` reads what is there; :meth:`add` appends (the file is opened on
    the first add and closed by :meth:`close` or the ``with`` block).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[Key, dict[str, Any]] = {}
        self._f: Any = None
        if self.path.exists():
            for rec in self._read_complete_lines():
                self.records[self.key(rec)] = rec

    @classmethod
    def of(cls, directory: str | Path) -> Records:
        """The records of an evaluation output directory."""
        return cls(Path(directory) / "records.jsonl")

    def _read_complete_lines(self) -> Iterable[dict[str, Any]]:
        raw = self.path.read_bytes()
        cut = raw.rfind(b"\n") + 1
        if cut != len(raw):
            logger.warning("%s: dropping an incomplete last line", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(cut)
        return [json.loads(line) for line in raw[:cut].decode().splitlines() if line.strip()]

    @staticmethod
    def key(rec: dict[str, Any]) -> Key:
        return (int(rec["seed"]), int(rec["clip"]), str(rec["attack"]), str(rec["defense"]))

    def __contains__(self, key: Key) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, rec: dict[str, Any]) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a")  # noqa: SIM115 - held open for the run, closed in close()
        self.records[self.key(rec)] = rec
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def select(
        self, clip_ids: Iterable[int] | None = None, seeds: Iterable[int] | None = None
    ) -> list[dict[str, Any]]:
        """The records (in file order) of the given clips and seeds (all when None)."""
        clips = None if clip_ids is None else set(clip_ids)
        wanted = None if seeds is None else set(seeds)
        return [
            r
            for r in self.records.values()
            if (clips is None or r["clip"] in clips) and (wanted is None or r["seed"] in wanted)
        ]

    def in_order(self, keys: Iterable[Key]) -> list[dict[str, Any]]:
        """The records of ``keys`` that exist, in the order of ``keys``."""
        return [self.records[k] for k in keys if k in self.records]
