"""Read a user's checkpoint and fit it to a family's library model, or say exactly why not.

Accepted files (``torch.load`` with ``weights_only=True``: tensors, dicts, lists,
strings and numbers only, so a checkpoint cannot run code when it is read):

* PyTorchVideo / PySlowFast model-zoo files (``.pyth``): a dict with ``model_state``
  (other entries such as ``epoch``, ``optimizer_state`` or ``cfg`` are ignored);
* a dict with ``state_dict`` (PyTorch Lightning and many training scripts), and a
  ``provenance`` dict beside it when ``shuffleguard weights`` wrote the file;
* torchvision's weights files and any plain ``state_dict`` (a dict of tensors);
* keys prefixed ``module.`` (``DataParallel``/``DistributedDataParallel``) or ``net.``
  (a :class:`service.models.families.VideoClassifier`'s own state dict) are
  unprefixed first.

The keys are the library model's own (``blocks.0.conv.weight``, ``layer1.0.conv1.0.weight``,
...). :func:`fit_state_dict` compares them with the family's model before anything is
loaded or written and raises :class:`CheckpointMismatchError` naming the missing keys,
the unexpected keys and the shapes that differ. BatchNorm's ``num_batches_tracked``
counters may be absent (older checkpoints): they do not change an eval-mode forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.models import ARCH
from service.models.resnet3d import resnet3d_18
from service.modelserver.archive import sha256_file

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadedCheckpoint",
    "fit_state_dict",
    "is_training_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
]

_LIST_LIMIT = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes differ from the family's model."""

    def __init__(
        self,
        message: str,
        *,
        missing: list[str],
        unexpected: list[str],
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        #: key -> (checkpoint shape, model shape)
        self.shapes = shapes


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint's library-model ``state_dict``, how it was stored, and its digest."""

    state_dict: dict[str, torch.Tensor]
    format: str  # "model_state", "state_dict" or "plain"
    sha256: str
    stripped_prefix: str = ""
    #: the file's ``provenance`` entry, when it has one (``shuffleguard weights``' files)
    provenance: dict[str, Any] | None = None


def _load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or pickled files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a checkpoint torch.load can read with weights_only=True ({first});"
            " save the model's state_dict with torch.save(model.state_dict(), path)"
        ) from None


def is_training_checkpoint(path: Path | str) -> bool:
    """True for a checkpoint written by ``shuffleguard train`` (the toy R3D-18)."""
    obj = _load(Path(path))
    return isinstance(obj, dict) and "model_kwargs" in obj and "arch" in obj


def read_checkpoint(path: Path | str) -> LoadedCheckpoint:
    """The library-model ``state_dict`` stored in ``path`` (see the module docstring)."""
    path = Path(path)
    obj = _load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict or a dict with"
            " 'model_state' / 'state_dict'"
        )
    fmt = "plain"
    provenance = obj.get("provenance") if isinstance(obj.get("provenance"), dict) else None
    for key in ("model_state", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj, fmt = obj[key], key
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not state:
        raise CheckpointError(
            f"{path} holds no tensors (keys: {', '.join(others[:_LIST_LIMIT])}); expected a"
            " state_dict, or a dict with 'model_state' (PyTorchVideo) or 'state_dict'"
        )
    if fmt == "plain" and others:
        raise CheckpointError(
            f"{path} mixes tensors with other entries ({', '.join(others[:_LIST_LIMIT])}) and"
            " has neither 'model_state' nor 'state_dict'; save the model's state_dict alone"
        )
    stripped = ""
    for prefix in ("module.", "net."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            stripped += prefix
    if stripped == "" and all(k.startswith(("net.", "normalize.")) for k in state):
        # a VideoClassifier's own state dict: the normalization comes from the family
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        stripped = "net."
    return LoadedCheckpoint(state, fmt, sha256_file(path), stripped, provenance)


def _short(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return shown + (f", ... and {more} more" if more > 0 else "")


def fit_state_dict(
    net: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    what: str = "the checkpoint",
    head_weight: str | None = None,
    labels_note: str = "",
) -> dict[str, torch.Tensor]:
    """Check ``state`` against ``net.state_dict()``; return it ready for
    ``net.load_state_dict(..., strict=False)`` (only ``num_batches_tracked`` may lack).

    Raises:
        CheckpointMismatchError: missing or unexpected keys, or shapes that differ,
            all of them named in the message (the first ten of each kind).
    """
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = {
        k: (tuple(state[k].shape), tuple(expected[k].shape))
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    }
    if not (missing or unexpected or shapes):
        return state
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_short(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_short(unexpected)})")
    if shapes:
        listed = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, (a, b) in shapes.items()]
        parts.append(f"{len(shapes)} shapes differ ({_short(listed)})")
    message = f"{what} does not fit the model: " + "; ".join(parts)
    if head_weight is not None and head_weight in shapes:
        got, want = shapes[head_weight]
        message += (
            f". The checkpoint's classifier has {got[0]} classes, the model was built for"
            f" {want[0]}{labels_note}"
        )
    raise CheckpointMismatchError(message, missing=missing, unexpected=unexpected, shapes=shapes)


def load_checkpoint(
    path: str | Path, map_location: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a training-format checkpoint
    (:func:`service.research.train.save_checkpoint`).

    Returns ``(model, ckpt)``: the model in eval mode on ``map_location`` (contiguous
    memory format, ready for :func:`torch.jit.trace`), and the checkpoint dict.
    """
    from service.models.families import FAMILY_NAMES, build_family

    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    arch = ckpt.get("arch")
    model: nn.Module
    if arch == ARCH:
        model = resnet3d_18(**ckpt["model_kwargs"])
    elif arch in FAMILY_NAMES:
        kwargs = dict(ckpt["model_kwargs"])
        model = build_family(kwargs.pop("name"), seed=0, **kwargs)  # weights loaded below
    else:
        raise ValueError(f"{path}: unknown arch {arch!r} (not {ARCH!r} or a model family)")
    model.load_state_dict(ckpt["state_dict"])
    model.to(map_location).eval()
    return model, ckpt
