"""Training and evaluation of the 3D ResNet-18 video classifiers.

Layouts. Datasets hold clips as uint8 ``[N, T, H, W, 3]`` (RGB 0..255, what the toy
datasets and the wire format use). :func:`clips_to_input` turns a batch into the
model's input, float32 ``[B, 3, T, H, W]`` in ``[0, 1]``; normalization is inside
the model. Logits are ``[B, K]``.

Training (:func:`train_model`): Adam with a cosine learning-rate decay, cross
entropy, light augmentation (a random translation of up to ``max_shift`` px, the
same for every frame of a clip, and a brightness scale in ``[0.9, 1.1]``; no
flips, which would change the motion direction, and no temporal shuffling). Every
random draw comes from generators seeded with ``seed``, so on the CPU a run is
reproducible bit for bit (same seed, same thread count). On ``cuda`` batches are
moved to the device as uint8 and converted there.

Architectures (``TrainConfig.arch``): the project's R3D-18 (``resnet3d_18``, width
``base_width``) or any family of :mod:`service.models.families` (its library's real
builder; PyTorchVideo's at ``width`` times their channels, same temporal kernels,
strides and depth), built for the data's clip length and frame size
(:func:`build_model`). The training loop is the same for every architecture.

Checkpoints (:func:`save_checkpoint`;
:func:`service.models.checkpoints.load_checkpoint` reads them) are plain dicts::

    {"state_dict", "arch", "model_kwargs", "labels", "clip_len", "crop_size",
     "dataset", "seed", "test_accuracy", "train_args", "history"}

loadable with ``torch.load(..., weights_only=True)``; ``arch`` is ``resnet3d_18`` or
a family name, ``model_kwargs`` the keywords that rebuild the model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.models.resnet3d import ResNet3d, resnet3d_18
from service.research.train_options import ARCH, TrainOptions

__all__ = [
    "ARCH",
    "TrainConfig",
    "TrainResult",
    "augment_batch",
    "build_model",
    "clips_to_input",
    "evaluate_accuracy",
    "predict_logits",
    "save_checkpoint",
    "stratified_holdout",
    "train_from_directory",
    "train_model",
]

logger = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig(TrainOptions):
    """Hyper-parameters of :func:`train_model` (saved as the checkpoint's ``train_args``):
    the user's :class:`~service.research.train_options.TrainOptions` plus the loop's own settings.

    ``val_fraction`` of the training clips (stratified, seeded) are held out for
    validation; when it is > 0 the returned model is the epoch with the best
    validation accuracy (the latest on a tie), otherwise the last epoch. Test
    accuracy is only reported, never used to pick a model. ``channels_last`` stores activations as
    ``channels_last_3d``, about 1.6x faster for ``Conv3d`` on a CPU (oneDNN).
    ``arch`` is ``resnet3d_18`` (channels of its first stage: ``base_width``) or a
    family of :mod:`service.models.families` (channels: ``width`` times the family's).
    """

    augment: bool = True
    max_shift: int = 3
    channels_last: bool = True
    eval_batch_size: int = 64


@dataclass
class TrainResult:
    """A trained model (in eval mode, on the training device) and its record.

    ``history`` has one dict per epoch: ``epoch``, ``loss`` (mean train loss),
    ``train_accuracy`` (on augmented batches), ``val_accuracy`` and ``test_accuracy``
    (None when there is no such split), ``lr``, ``seconds``.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    best_epoch: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- #
# Tensors
# --------------------------------------------------------------------------- #
def clips_to_input(clips: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` (0..255) -> float32 ``[B, 3, T, H, W]`` in ``[0, 1]``.

    The uint8 batch is moved to ``device`` first (4x less to copy than float).
    """
    if clips.dim() != 5 or clips.shape[-1] != 3:
        raise ValueError(f"expected clips [B, T, H, W, 3], got {tuple(clips.shape)}")
    if device is not None:
        clips = clips.to(device, non_blocking=True)
    return clips.permute(0, 4, 1, 2, 3).float().div_(255.0)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 3
) -> torch.Tensor:
    """Light, direction-preserving augmentation of float ``[B, C, T, H, W]`` in ``[0, 1]``.

    Each clip is translated by a random ``(dy, dx)`` in ``[-max_shift, max_shift]``
    (edge pixels replicated; the same shift for every frame, so the motion is
    unchanged) and scaled in brightness by a factor in ``[0.9, 1.1]``, then clamped
    to ``[0, 1]``. Draws come from ``generator`` (a CPU generator) and the result
    lives on ``x``'s device.
    """
    B, _, _, H, W = x.shape
    device = x.device
    if max_shift > 0:
        shifts = torch.randint(0, 2 * max_shift + 1, (B, 2), generator=generator)
        xp = F.pad(x, (max_shift, max_shift, max_shift, max_shift, 0, 0), mode="replicate")
        rows = (shifts[:, 0:1] + torch.arange(H)).to(device)  # [B, H]
        cols = (shifts[:, 1:2] + torch.arange(W)).to(device)  # [B, W]
        b = torch.arange(B, device=device)[:, None, None]
        x = xp[b, :, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C, T]
        x = x.permute(0, 3, 4, 1, 2)
    scale = (0.9 + 0.2 * torch.rand((B, 1, 1, 1, 1), generator=generator)).to(device)
    return (x * scale).clamp_(0.0, 1.0)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _wants_channels_last(model: nn.Module) -> bool:
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            return m.weight.is_contiguous(memory_format=torch.channels_last_3d) and not (
                m.weight.is_contiguous()
            )
    return False


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    clips: torch.Tensor,
    *,
    transform: Transform | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logits ``[N, K]`` (float32, on the CPU) of uint8 clips ``[N, T, H, W, 3]``.

    ``transform``, when given, maps each float batch ``[B, 3, T, H, W]`` in ``[0, 1]``
    (already on the device) to a batch of the same layout before the model sees it.
    The model is put in eval mode and left there.
    """
    model.eval()
    dev = torch.device(device) if device is not None else _model_device(model)
    channels_last = _wants_channels_last(model)
    out = []
    for start in range(0, clips.shape[0], batch_size):
        x = clips_to_input(clips[start : start + batch_size], dev)
        if transform is not None:
            x = transform(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        out.append(model(x).float().cpu())
    if not out:
        raise ValueError("no clips to predict")
    return torch.cat(out)


def evaluate_accuracy(
    model: nn.Module,
    clips: torch.Tensor,
    labels: torch.Tensor,
    transform: Transform | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy in ``[0, 1]`` of ``model`` on uint8 clips ``[N, T, H, W, 3]``.

    See :func:`predict_logits` for ``transform``; e.g. a chunk-wise frame shuffle
    (``temporal_dim=2`` on the ``[B, 3, T, H, W]`` batch).
    """
    logits = predict_logits(model, clips, transform=transform, batch_size=batch_size, device=device)
    return float((logits.argmax(dim=1) == labels.cpu()).float().mean())


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Bool mask ``[N]``: ``round(fraction * n_k)`` random clips of each class ``k``."""
    mask = torch.zeros(labels.shape[0], dtype=torch.bool)
    if fraction <= 0:
        return mask
    gen = torch.Generator().manual_seed(seed)
    for k in torch.unique(labels).tolist():
        where = torch.nonzero(labels == k).flatten()
        take = round(fraction * where.numel())
        mask[where[torch.randperm(where.numel(), generator=gen)[:take]]] = True
    return mask


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #
def model_kwargs_for(
    config: TrainConfig, num_classes: int, clip_len: int, crop_size: int
) -> dict[str, Any]:
    """The keywords :func:`build_model` rebuilds a checkpoint's model from (families only;
    R3D-18's are written by :func:`save_checkpoint` from the model)."""
    return {
        "name": config.arch,
        "num_classes": int(num_classes),
        "clip_len": int(clip_len),
        "crop_size": int(crop_size),
        "width": float(config.width),
    }


def build_model(config: TrainConfig, num_classes: int, clip_len: int, crop_size: int) -> nn.Module:
    """A fresh model of ``config.arch`` for clips ``[B, 3, clip_len, crop, crop]``.

    R3D-18 (:func:`service.models.resnet3d_18` at ``config.base_width``) or a family
    (:func:`service.models.families.build_family` at ``config.width``, initialized
    from ``config.seed``). Float ``[B, 3, T, H, W]`` in ``[0, 1]`` -> logits ``[B, K]``.
    """
    if config.arch == ARCH:
        return resnet3d_18(num_classes=num_classes, base_width=config.base_width)
    from service.models.families import build_family

    kwargs = model_kwargs_for(config, num_classes, clip_len, crop_size)
    return build_family(kwargs.pop("name"), seed=config.seed, **kwargs)


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def train_model(
    train_clips: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    num_classes: int,
    config: TrainConfig,
    test_clips: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train a model of ``config.arch`` (:func:`build_model`) from scratch.

    Args:
        train_clips: uint8 ``[N, T, H, W, 3]`` on the CPU.
        train_labels: int64 ``[N]`` in ``[0, num_classes)``.
        num_classes: number of classes ``K``.
        config: hyper-parameters, seed and device.
        test_clips, test_labels: evaluated after every epoch (reported only).
        progress: show a tqdm bar (on stderr).
        desc: label of the progress bar and log lines.

    Returns:
        :class:`TrainResult` with the model in eval mode on ``config.device``.
    """
    from tqdm import tqdm

    if train_clips.dtype != torch.uint8 or train_clips.dim() != 5:
        raise ValueError(
            f"train_clips must be uint8 [N, T, H, W, 3], got {train_clips.dtype} "
            f"{tuple(train_clips.shape)}"
        )
    if train_labels.shape[0] != train_clips.shape[0]:
        raise ValueError("train_clips and train_labels differ in length")
    device = torch.device(config.device)
    _seed_everything(config.seed, device)
    holdout = stratified_holdout(train_labels, config.val_fraction, config.seed)
    fit = _Fit.start(config, num_classes, train_clips[~holdout], train_labels[~holdout], device)
    evaluation = _Evaluation(
        config, (train_clips[holdout], train_labels[holdout]), test_clips, test_labels
    )
    result = TrainResult(model=fit.model)
    t_start = time.perf_counter()
    bar = tqdm(total=fit.total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            record = {"epoch": epoch, **fit.epoch(epoch, bar)}
            record.update(evaluation.after_epoch(fit.model))
            record["seconds"] = time.perf_counter() - t0
            result.history.append(record)
            _log_epoch(desc, config.epochs, record)
            evaluation.keep_if_best(fit.model, record, result)
    finally:
        bar.close()
    evaluation.finish(fit.model, result, config.epochs)
    result.seconds = time.perf_counter() - t_start
    return result


def _seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


@dataclass
class _Fit:
    """The optimization of one :func:`train_model` run: the model, Adam with a cosine
    decay, the clips it fits and its seeded order and augmentation generators."""

    config: TrainConfig
    model: nn.Module
    clips: torch.Tensor
    labels: torch.Tensor
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batch: int
    steps_per_epoch: int
    order_gen: torch.Generator
    aug_gen: torch.Generator

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @classmethod
    def start(
        cls,
        config: TrainConfig,
        num_classes: int,
        clips: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
    ) -> _Fit:
        n = clips.shape[0]
        if n < 2:
            raise ValueError(f"need at least 2 training clips, got {n}")
        model = build_model(config, num_classes, int(clips.shape[1]), int(clips.shape[2]))
        model = model.to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        batch = min(config.batch_size, n)
        steps_per_epoch = n // batch  # drop the ragged last batch: BatchNorm needs > 1 sample
        total = steps_per_epoch * config.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
        )
        order_gen = torch.Generator().manual_seed(config.seed + 1)
        aug_gen = torch.Generator().manual_seed(config.seed + 2)
        return cls(
            config, model, clips, labels, device, optimizer, scheduler,
            batch, steps_per_epoch, order_gen, aug_gen,
        )  # fmt: skip

    def epoch(self, epoch: int, bar: Any) -> dict[str, Any]:
        """One pass over the clips in a seeded order: mean loss, train accuracy, LR."""
        self.model.train()
        perm = torch.randperm(self.clips.shape[0], generator=self.order_gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(self.steps_per_epoch):
            idx = perm[step * self.batch : (step + 1) * self.batch]
            loss, right = self._step(idx)
            loss_sum += loss * idx.numel()
            correct += right
            seen += idx.numel()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}")
        return {
            "loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_accuracy": None,
            "test_accuracy": None,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _step(self, idx: torch.Tensor) -> tuple[float, int]:
        config = self.config
        x = clips_to_input(self.clips.index_select(0, idx), self.device)
        y = self.labels.index_select(0, idx).to(self.device)
        if config.augment:
            x = augment_batch(x, self.aug_gen, max_shift=config.max_shift)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach()), int((logits.argmax(1) == y).sum())


class _Evaluation:
    """Validation and test accuracy after each epoch, and the model selection: the
    epoch with the best validation accuracy (the later on a tie), else the last."""

    def __init__(
        self,
        config: TrainConfig,
        val: tuple[torch.Tensor, torch.Tensor],
        test_clips: torch.Tensor | None,
        test_labels: torch.Tensor | None,
    ) -> None:
        self.batch_size = config.eval_batch_size
        self.val = val
        self.test = (test_clips, test_labels)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_val = -1.0

    def after_epoch(self, model: nn.Module) -> dict[str, float]:
        out = {}
        if self.val[0].shape[0]:
            out["val_accuracy"] = evaluate_accuracy(model, *self.val, batch_size=self.batch_size)
        test_clips, test_labels = self.test
        if test_clips is not None and test_labels is not None and test_clips.shape[0]:
            out["test_accuracy"] = evaluate_accuracy(
                model, test_clips, test_labels, batch_size=self.batch_size
            )
        return out

    def keep_if_best(self, model: nn.Module, record: dict[str, Any], result: TrainResult) -> None:
        # >=: on a tie the later (more trained, lower-LR) epoch wins
        if record["val_accuracy"] is not None and record["val_accuracy"] >= self.best_val:
            self.best_val = record["val_accuracy"]
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.best_epoch = record["epoch"]

    def finish(self, model: nn.Module, result: TrainResult, epochs: int) -> None:
        """Load the chosen epoch's weights and report its accuracies; eval mode."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
            result.val_accuracy = self.best_val
            result.test_accuracy = result.history[result.best_epoch - 1]["test_accuracy"]
        else:
            result.best_epoch = epochs
            result.test_accuracy = result.history[-1]["test_accuracy"]
        model.eval()


def _log_epoch(desc: str, epochs: int, record: dict[str, Any]) -> None:
    logger.info(
        "%s epoch %d/%d: loss %.4f, train acc %.3f, val acc %s, test acc %s (%.1fs)",
        desc,
        record["epoch"],
        epochs,
        record["loss"],
        record["train_accuracy"],
        _fmt(record["val_accuracy"]),
        _fmt(record["test_accuracy"]),
        record["seconds"],
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------- #
def save_checkpoint(
    result: TrainResult,
    path: str | Path,
    *,
    labels: list[str],
    clip_len: int,
    crop_size: int,
    config: TrainConfig,
    dataset: int | str | None = None,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save ``result.model`` as a checkpoint dict (tensors on the CPU); returns the dict.

    ``recipe`` is the ``toy-data`` recipe of the training clips (their meta.json's
    ``recipe``), kept as ``data`` so that ``archive`` can record it."""
    model = result.model
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if config.arch == ARCH:
        assert isinstance(model, ResNet3d)
        model_kwargs: dict[str, Any] = {
            "num_classes": model.num_classes,
            "base_width": config.base_width,
            "in_channels": model.in_channels,
            "mean": [float(v) for v in model.normalize.mean.flatten()],
            "std": [float(v) for v in model.normalize.std.flatten()],
        }
    else:
        model_kwargs = model_kwargs_for(config, len(labels), clip_len, crop_size)
    ckpt: dict[str, Any] = {
        "state_dict": state,
        "arch": config.arch,
        "model_kwargs": model_kwargs,
        "labels": list(labels),
        "clip_len": int(clip_len),
        "crop_size": int(crop_size),
        "dataset": dataset,
        "data": dict(recipe or {}),
        "seed": config.seed,
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "best_epoch": result.best_epoch,
        "train_args": asdict(config),
        "history": result.history,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    logger.info("saved checkpoint %s (test accuracy %s)", path, _fmt(result.test_accuracy))
    return ckpt


def train_from_directory(
    data_dir: str | Path,
    out: str | Path,
    config: TrainConfig,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on a toy-data directory (``labels.csv`` + ``.npy`` clips) and save a checkpoint.

    Trains on the ``train`` split and reports accuracy on the ``test`` split (none
    when the directory has no test clips). Returns the checkpoint dict.
    """
    from service.research.toy.data import load_toy_dataset, read_meta

    data = load_toy_dataset(data_dir)
    train = data.select("train")
    test = data.select("test")
    meta = read_meta(data_dir)
    logger.info(
        "training on %s: %d train / %d test clips of shape %s, %d classes",
        data_dir,
        train.clips.shape[0],
        test.clips.shape[0],
        tuple(data.clips.shape[1:]),
        len(data.label_names),
    )
    result = train_model(
        train.clips,
        train.labels,
        num_classes=len(data.label_names),
        config=config,
        test_clips=test.clips if test.clips.shape[0] else None,
        test_labels=test.labels if test.clips.shape[0] else None,
        progress=progress,
        desc=Path(data_dir).name or "train",
    )
    dataset, recipe = meta.get("dataset"), meta.get("recipe")
    return save_checkpoint(
        result,
        out,
        labels=data.label_names,
        clip_len=int(data.clips.shape[1]),
        crop_size=int(data.clips.shape[2]),
        config=config,
        dataset=dataset if isinstance(dataset, int | str) else None,
        recipe=recipe if isinstance(recipe, dict) else None,
    )
