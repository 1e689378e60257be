"""The user's clips: the labels file, the clips decoded as the gateway decodes them, and
their fingerprint (see docs/audit.md, "Inputs")."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["AuditDataError", "LabelRow", "data_fingerprint", "decode_clips", "read_labels"]


class AuditDataError(ValueError):
    """The clips or the labels cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class LabelRow:
    """One clip of the labels file: its row (0-based, header excluded), file, class index."""

    row: int
    file: str
    label: int


def read_labels(
    directory: str | Path, labels_file: str, model_labels: list[str], split: str | None = None
) -> list[LabelRow]:
    """The rows of ``directory/labels_file``, checked against the model's labels.

    The file is a CSV with a header: ``file`` (a path relative to ``directory``) and
    ``label_index`` and/or ``label`` (the model's class index / name; when both are
    given they must agree), and an optional ``split`` column that ``split`` filters on.
    This is the layout ``shuffleguard toy-data`` writes.

    Raises:
        AuditDataError: no such file, a missing column, an unknown label, a label index
            out of range, a clip file that does not exist, no rows left.
    """
    root = Path(directory)
    path = root / labels_file
    if not root.is_dir():
        raise AuditDataError(f"--data {root} is not a directory")
    if not path.is_file():
        raise AuditDataError(
            f"no labels file {path}: write a CSV with a header and the columns file,label_index,"
            "label (or give its name with --labels); see docs/audit.md"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        rows = list(reader)
    if "file" not in columns or not columns & {"label", "label_index"}:
        raise AuditDataError(
            f"{path}: needs a header with 'file' and 'label_index' and/or 'label'; got"
            f" {sorted(columns)}"
        )
    if split is not None and "split" not in columns:
        raise AuditDataError(f"--split {split} given but {path} has no 'split' column")
    names = {name: k for k, name in enumerate(model_labels)}
    out = []
    for r, row in enumerate(rows):
        if split is not None and row.get("split") != split:
            continue
        where = f"{path} row {r + 2}"  # 1-based, after the header
        index = _label_index(row, names, model_labels, where)
        file = (row.get("file") or "").strip()
        if not file or not (root / file).is_file():
            raise AuditDataError(f"{where}: clip file {file!r} not found in {root}")
        out.append(LabelRow(r, file, index))
    if not out:
        raise AuditDataError(f"{path}: no clips" + (f" in split {split!r}" if split else ""))
    return out


def _label_index(
    row: dict[str, Any], names: dict[str, int], model_labels: list[str], where: str
) -> int:
    raw_index, label = (row.get("label_index") or "").strip(), (row.get("label") or "").strip()
    known = f"the model's labels are {model_labels[:10]}" + (
        f" ... ({len(model_labels)} in all)" if len(model_labels) > 10 else ""
    )
    index: int | None = None
    if raw_index:
        try:
            index = int(raw_index)
        except ValueError:
            raise AuditDataError(f"{where}: label_index {raw_index!r} is not an integer") from None
        if not 0 <= index < len(model_labels):
            raise AuditDataError(
                f"{where}: label_index {index} is outside 0..{len(model_labels) - 1}; {known}"
            )
    if label:
        if label not in names:
            raise AuditDataError(f"{where}: unknown label {label!r}; {known}")
        if index is not None and names[label] != index:
            raise AuditDataError(
                f"{where}: label_index {index} is {model_labels[index]!r} in the model, the file"
                f" says {label!r}"
            )
        index = names[label]
    if index is None:
        raise AuditDataError(f"{where}: no label_index and no label")
    return index


def decode_clips(directory: str | Path, rows: list[LabelRow], meta: Any) -> torch.Tensor:
    """uint8 ``[N, clip_len, crop, crop, 3]`` RGB 0..255 of ``rows``, decoded as the gateway
    decodes an upload for the model of ``meta`` (a :class:`service.gateway.backend.ModelMeta`).

    Raises:
        AuditDataError: a clip the gateway would refuse (its message, with the file name).
    """
    import numpy as np

    from service.decoder.decode import decode_clip
    from service.decoder.errors import VideoError

    root = Path(directory)
    frames = []
    for r in rows:
        try:
            clip = decode_clip(
                (root / r.file).read_bytes(), clip_len=meta.clip_len,
                frame_interval=meta.frame_interval, crop_size=meta.crop_size,
                resize=meta.resize, transform=meta.transform,
            )  # fmt: skip
        except VideoError as exc:
            raise AuditDataError(f"{root / r.file}: {exc.message}") from None
        frames.append(clip.frames)
    return torch.from_numpy(np.stack(frames))


def data_fingerprint(directory: str | Path, labels_file: str, rows: list[LabelRow]) -> str:
    """sha256 of the labels file and of every listed clip's bytes."""
    root = Path(directory)
    h = hashlib.sha256((root / labels_file).read_bytes())
    for r in rows:
        h.update(r.file.encode() + b"\0")
        with open(root / r.file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
