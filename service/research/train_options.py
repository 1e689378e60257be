"""The training hyper-parameters a user sets, declared once (no torch).

:class:`TrainOptions` holds each option's default, help and validation.
:class:`service.research.train.TrainConfig` adds the loop's internal settings to it (what
:func:`service.research.train.train_model` reads and a checkpoint saves as ``train_args``),
and ``shuffleguard train`` (:mod:`service.commands.train`) takes its options from
it, so the command line (and ``--help``) needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.models import ARCH
from service.options import ExperimentConfig, opt


@dataclass
class TrainOptions(ExperimentConfig):
    """Hyper-parameters of a training run (validated on creation)."""

    epochs: int = opt(10, "epochs")
    batch_size: int = opt(32, "batch size")
    lr: float = opt(2e-3, "Adam learning rate")
    weight_decay: float = opt(1e-4, "Adam weight decay")
    arch: str = opt(ARCH, "resnet3d_18 or a model family (docs/models.md: i3d_r50, x3d_m, ...)")
    base_width: int = opt(16, "channels of the first stage (resnet3d_18)")
    width: float = opt(
        1.0, "channel multiplier of a family (PyTorchVideo families; 1 = the full model)"
    )
    seed: int = opt(0, "random seed")
    device: str = opt("cpu", "cpu (default), cuda, cuda:1, ...")
    val_fraction: float = opt(
        0.0,
        "hold out this share of the train split for validation and keep the best epoch by"
        " validation accuracy (0: keep the last epoch)",
    )

    def check(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (BatchNorm), got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {self.base_width}")
        if self.arch == ARCH:
            if self.width != 1.0:
                raise ValueError(f"{ARCH} takes base_width, not width (got width {self.width})")
            return
        # a family: the registry knows the names and widths (imports torch)
        from service.models.families import FAMILY_NAMES, width_kwargs

        if self.arch not in FAMILY_NAMES:
            raise ValueError(
                f"--arch: unknown model family {self.arch!r}; choose from {[ARCH, *FAMILY_NAMES]}"
            )
        width_kwargs(self.arch, self.width)  # ValueError: a width the family does not take
