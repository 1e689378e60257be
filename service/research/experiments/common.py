"""Shared plumbing of the experiments: inputs, seeds, statistics and output files.

* Inputs: :func:`load_model` (a checkpoint of ``shuffleguard train``, or a ``.mar``),
  :func:`checkpoint_weights_sha256` (what identifies a model in records and caches) and
  :func:`load_split` (a ``shuffleguard toy-data`` directory), :func:`stratified_subset`
  (a seeded, class-balanced, *nested* choice of clips: the first ``n`` of a larger
  run are the ``n`` of a smaller one, so a run can be grown and resumed).
* Seeds: :func:`derive_seed` turns a tuple of integers into one 63-bit seed
  (``numpy.random.SeedSequence``), so every random draw of a work unit is fixed by
  what the unit is, not by the order units run in.
* Statistics live in :mod:`service.core.stats` (scipy).
* Outputs: :mod:`service.research.experiments.report` (the one report writer); configs and
  the produced-by command: :mod:`service.options` (the machinery) and
  :mod:`service.research.experiments.config` (:class:`AnalysisConfig`, the experiments' base).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "SplitData",
    "checkpoint_weights_sha256",
    "derive_seed",
    "load_model",
    "is_archive",
    "load_split",
    "generator",
    "prepare_torch",
    "stratified_subset",
    "weights_sha256",
]


@dataclass
class SplitData:
    """One split of a toy-data directory: uint8 clips ``[N, T, H, W, 3]``, labels ``[N]``.

    ``index[i]`` is clip ``i``'s row in the directory's ``labels.csv`` (stable ids for
    records); ``label_names[k]`` names class ``k``.
    """

    clips: torch.Tensor
    labels: torch.Tensor
    index: list[int]
    label_names: list[str]
    dataset: object

    def __len__(self) -> int:
        return int(self.clips.shape[0])

    def take(self, positions: Sequence[int]) -> SplitData:
        idx = torch.tensor(list(positions), dtype=torch.int64)
        return SplitData(
            self.clips.index_select(0, idx),
            self.labels.index_select(0, idx),
            [self.index[p] for p in positions],
            self.label_names,
            self.dataset,
        )


def load_split(directory: str | Path, split: str = "test") -> SplitData:
    """Clips of one split (``test``/``train``/``all``) of a ``toy-data`` directory."""
    from service.research.toy.data import load_toy_dataset, read_meta

    data = load_toy_dataset(directory)
    keep = [i for i, s in enumerate(data.split) if split == "all" or s == split]
    if not keep:
        raise ValueError(f"{directory}: no clips in split {split!r}")
    idx = torch.tensor(keep, dtype=torch.int64)
    meta = read_meta(directory)
    return SplitData(
        data.clips.index_select(0, idx),
        data.labels.index_select(0, idx),
        keep,
        list(data.label_names),
        meta.get("dataset"),
    )


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model (eval mode, on ``device``) and its checkpoint dict.

    ``checkpoint`` is a ``shuffleguard train`` checkpoint, or a served ``.mar``
    (:func:`service.modelserver.archive.load_archived_model`), so the artifact that is served
    can be evaluated as it is.
    """
    if is_archive(checkpoint):
        from service.modelserver.archive import load_archived_model

        return load_archived_model(checkpoint, map_location=device)
    from service.models.checkpoints import load_checkpoint

    return load_checkpoint(checkpoint, map_location=device)


def is_archive(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` names a TorchServe archive (``.mar``)."""
    return Path(checkpoint).suffix == ".mar"


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's ``state_dict`` (names, dtypes, shapes and bytes, in order).

    It identifies the weights whatever file they came in: a training checkpoint and
    the ``.mar`` exported from it give the same digest.
    """
    import hashlib

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_WEIGHTS_DIGESTS: dict[tuple[str, int, int], str] = {}


def checkpoint_weights_sha256(checkpoint: str | Path) -> str:
    """:func:`weights_sha256` of the model in ``checkpoint`` (memoized per file version)."""
    st = Path(checkpoint).stat()
    key = (str(Path(checkpoint).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _WEIGHTS_DIGESTS:
        model, _ = load_model(checkpoint, "cpu")
        _WEIGHTS_DIGESTS[key] = weights_sha256(model)
    return _WEIGHTS_DIGESTS[key]


def stratified_subset(labels: torch.Tensor, n: int | None, seed: int) -> list[int]:
    """Positions of ``n`` clips (all when None), balanced over classes, seeded.

    Each class's clips are put in a seeded random order; the result takes them round
    robin (class 0's first, class 1's first, ..., class 0's second, ...). The order
    is fixed by ``seed``, so a larger ``n`` extends a smaller one (nested subsets).
    """
    gen = torch.Generator().manual_seed(int(seed))
    per_class: list[list[int]] = []
    for k in sorted(torch.unique(labels).tolist()):
        where = torch.nonzero(labels == k).flatten()
        order = where[torch.randperm(where.numel(), generator=gen)]
        per_class.append(order.tolist())
    out: list[int] = []
    depth = max((len(c) for c in per_class), default=0)
    for r in range(depth):
        out.extend(c[r] for c in per_class if r < len(c))
    return out if n is None else out[: max(0, n)]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed determined by the integers ``parts`` (order matters)."""
    import numpy as np

    words = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


def prepare_torch(device: str, threads: int, prog: str) -> None:
    """Fail fast on a missing CUDA device; set the CPU thread count."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"{prog}: --device {device} given but CUDA is not available")
    torch.set_num_threads(max(1, threads))


# --------------------------------------------------------------------------- #
# Batched model and attack helpers (float clips)
# --------------------------------------------------------------------------- #
def to_float(clips: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, T, H, W, 3]`` -> float ``[N, 3, T, H, W]`` in ``[0, 1]`` (CPU)."""
    from service.research.train import clips_to_input

    return clips_to_input(clips)


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int = 32,
    transform: Any = None,
) -> torch.Tensor:
    """Argmax labels ``[N]`` (CPU) of float clips ``x [N, 3, T, H, W]``.

    ``transform(batch, start)``, when given, maps each batch (on the model's device)
    before the model sees it; ``start`` is the batch's first clip position.
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device)
        if transform is not None:
            xb = transform(xb, start)
        out.append(model(xb).argmax(dim=1).cpu())
    return torch.cat(out)


def progress_bar(
    items: Iterable[Any] | None = None,
    *,
    desc: str,
    enabled: bool,
    total: int | None = None,
    unit: str = "it",
) -> Any:
    """``items`` wrapped in a tqdm bar (on stderr) unless ``enabled`` is False; the one
    progress-bar helper of the experiments (also a context manager with ``update``)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, disable=not enabled, leave=False)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred.cpu() == labels.cpu()).float().mean())


def craft(
    make_attack: Any,
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    progress: bool,
    desc: str,
    cache: str | Path | None = None,
    ids: Sequence[int] | None = None,
) -> tuple[torch.Tensor, float]:
    """Adversarial clips (CPU float) of ``make_attack(model)`` in batches; and seconds per clip.

    With ``cache`` (a file path) and the clips' ``ids``, clips already in the cache are
    read back and new ones added: for deterministic attacks at their default budget
    (I-FGSM), so several analyses share one crafting. Name the file after the attack,
    the checkpoint and the data (see :func:`cache_path`). Seconds per clip count only
    the clips crafted in this call (0 when all came from the cache).
    """
    import time

    from tqdm.auto import tqdm

    stored: dict[int, torch.Tensor] = {}
    if cache is not None and Path(cache).exists():
        stored = torch.load(Path(cache), weights_only=True)
    todo = [i for i in range(x.shape[0]) if ids is None or int(ids[i]) not in stored]
    device = next(model.parameters()).device
    attack = make_attack(model)
    out = x.clone()
    t0 = time.perf_counter()
    with tqdm(total=len(todo), desc=desc, unit="clip", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            sel = todo[start : start + batch_size]
            xb = x[sel].to(device)
            yb = labels[sel].to(device)
            out[sel] = attack(xb, yb).cpu()
            bar.update(len(sel))
    seconds = (time.perf_counter() - t0) / max(1, len(todo))
    if ids is not None:
        for i in range(x.shape[0]):
            if i not in todo:
                out[i] = stored[int(ids[i])]
        if cache is not None and todo:
            stored.update({int(ids[i]): out[i].clone() for i in todo})
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            torch.save(stored, Path(cache))
    return out, seconds if todo else 0.0


def craft_for(
    args: Any,
    name: str,
    make_attack: Any,
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    ids: Sequence[int],
    desc: str | None = None,
) -> tuple[torch.Tensor, float]:
    """:func:`craft` with an analysis' common options (``--attack-batch``,
    ``--no-progress``, ``--adv-cache``, ``--checkpoint``, ``--data``); ``name`` keys the cache."""
    return craft(
        make_attack,
        model,
        x,
        labels,
        batch_size=args.attack_batch,
        progress=not args.no_progress,
        desc=desc or name,
        cache=cache_path(args.adv_cache, name, args.checkpoint, args.data),
        ids=ids,
    )


def ifgsm_for(
    args: Any, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, ids: Sequence[int]
) -> tuple[torch.Tensor, float]:
    """Full-strength I-FGSM clips against the undefended model (cached, see :func:`craft_for`)."""
    from service.research.robustness.attacks import IFGSM

    return craft_for(args, "ifgsm", lambda m: IFGSM(m), model, x, labels, ids, desc="I-FGSM")


def cache_path(
    directory: str | Path | None, attack: str, checkpoint: str | Path, data: str | Path
) -> Path | None:
    """``<dir>/<attack>-<weights sha256[:12]>-<data fingerprint[:12]>.pt``; None: no cache."""
    if directory is None:
        return None
    ck = checkpoint_weights_sha256(checkpoint)[:12]
    return Path(directory) / f"{attack}-{ck}-{data_fingerprint(data)[:12]}.pt"


def data_fingerprint(directory: str | Path) -> str:
    """sha256 of what identifies a toy-data directory's clips.

    ``labels.csv`` alone is not enough: datasets rendered with other settings (e.g.
    ``toy-data --contrast``) share it. So ``meta.json`` (when there is one) and the
    bytes of the first and last clip files listed are hashed too.
    """
    import csv as _csv
    import hashlib

    root = Path(directory)
    h = hashlib.sha256()
    labels = (root / "labels.csv").read_bytes()
    h.update(labels)
    if (root / "meta.json").exists():
        h.update((root / "meta.json").read_bytes())
    rows = list(_csv.DictReader(labels.decode().splitlines()))
    for row in (rows[0], rows[-1]) if rows else ():
        h.update((root / row["file"]).read_bytes())
    return h.hexdigest()


def first_conv_temporal(model: nn.Module) -> tuple[int, int, int]:
    """``(kernel, stride, padding)`` along time of the model's first ``Conv3d`` that mixes
    frames (temporal kernel > 1), in module order; the first ``Conv3d`` when none does.

    For the model families this is the registry's ``first_temporal_conv``
    (:mod:`service.models.families`): SlowFast's fast-pathway stem (its slow stem is
    ``1 x 7 x 7``), X3D's depthwise ``5 x 1 x 1`` (after a ``1 x 3 x 3`` one).
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise ValueError("the model has no Conv3d layer")
    m = next((c for c in convs if int(c.kernel_size[0]) > 1), convs[0])
    pad = m.padding if isinstance(m.padding, tuple) else (0, 0, 0)
    return int(m.kernel_size[0]), int(m.stride[0]), int(pad[0])


def gather_time(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-clip frame reordering: ``x [B, C, T, ...]``, ``idx [B, T]`` -> ``x[b, :, idx[b]]``."""
    idx = idx.to(x.device)
    shape = [idx.shape[0], 1, idx.shape[1]] + [1] * (x.dim() - 3)
    return x.gather(2, idx.view(shape).expand(-1, x.shape[1], -1, *x.shape[3:]))


def load_inputs(args: Any) -> tuple[nn.Module, dict[str, Any], SplitData, torch.Tensor]:
    """Model, checkpoint, the seeded clip subset and its float clips, from common args."""
    model, ckpt = load_model(args.checkpoint, args.device)
    if args.split == "val":
        data = validation_split(args.data, ckpt)
    else:
        data = load_split(args.data, args.split)
    subset = data.take(stratified_subset(data.labels, args.clips, args.subset_seed))
    return model, ckpt, subset, to_float(subset.clips)


def load_attacked(
    args: Any,
) -> tuple[nn.Module, dict[str, Any], SplitData, torch.Tensor, torch.Tensor, float]:
    """:func:`load_inputs` plus the subset's full-strength I-FGSM clips (against the
    undefended model, :func:`ifgsm_for`) and the seconds they took per clip."""
    model, ckpt, subset, x = load_inputs(args)
    adv, per_clip = ifgsm_for(args, model, x, subset.labels, subset.index)
    return model, ckpt, subset, x, adv, per_clip


def validation_split(directory: str | Path, ckpt: dict[str, Any]) -> SplitData:
    """The train clips that training held out for validation (never fitted).

    Rebuilt as :func:`service.research.train.train_model` drew them:
    ``stratified_holdout(train labels, val_fraction, seed)`` of the checkpoint's
    ``train_args``.
    """
    from service.research.train import stratified_holdout

    train_args = ckpt.get("train_args") or {}
    fraction = float(train_args.get("val_fraction") or 0.0)
    if fraction <= 0:
        raise ValueError(
            "the checkpoint records no validation holdout (trained without one, or a .mar"
            " whose meta.json has no val_fraction); use --split train or test"
        )
    train = load_split(directory, "train")
    mask = stratified_holdout(train.labels, fraction, int(train_args.get("seed", 0)))
    return train.take(torch.nonzero(mask).flatten().tolist())
