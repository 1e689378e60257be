"""Train a video classifier on a toy-data directory and save a checkpoint.

The model is the project's 3D ResNet-18 (``--arch resnet3d_18``, the default, width
``--base-width``) or a model family's real builder (``--arch i3d_r50``, ``slowfast_r50``,
``csn_r101``, ``x3d_m``, ...; PyTorchVideo's at ``--width`` times their channels),
built for the data's clip length and frame size.

Reads the ``.npy`` clips and ``labels.csv`` written by ``shuffleguard toy-data``,
trains on the ``train`` split with Adam (seeded; bit-reproducible on the CPU for a
given seed and thread count), reports test accuracy after every epoch and saves a
checkpoint dict (``state_dict``, ``arch``, ``model_kwargs``, ``labels``, ``clip_len``,
``crop_size``, ``dataset``, ``seed``, ``test_accuracy``, ``train_args``, ``history``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from service.experiments.config import ExperimentConfig, opt

#: ``service.train.ARCH``, spelled here so that the module (and ``--help``) needs no torch
#: (a unit test checks the two agree)
ARCH = "resnet3d_18"


@dataclass
class TrainCommandConfig(ExperimentConfig):
    """Settings of ``shuffleguard train``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "train")

    data: str = opt(help="directory written by `toy-data`")
    out: str = opt(help="checkpoint path to write (.pt)")
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
    no_augment: bool = opt(False, "no translation/brightness jitter")
    threads: int = opt(2, "CPU threads for torch")

    def check(self) -> None:
        if self.arch != ARCH:  # a family: the registry knows the names (imports torch)
            from service.models.families import FAMILY_NAMES

            if self.arch not in FAMILY_NAMES:
                raise ValueError(
                    f"--arch: unknown {self.arch!r}; choose from {[ARCH, *FAMILY_NAMES]}"
                )


def run(args: TrainCommandConfig) -> int:
    import torch

    from service.train import TrainConfig, train_from_directory

    torch.set_num_threads(max(1, args.threads))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("shuffleguard train: --device cuda given but CUDA is not available")
    try:
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            base_width=args.base_width,
            seed=args.seed,
            device=args.device,
            val_fraction=args.val_fraction,
            augment=not args.no_augment,
            arch=args.arch,
            width=args.width,
        )
    except ValueError as exc:
        raise SystemExit(f"shuffleguard train: {exc}") from None
    ckpt = train_from_directory(args.data, args.out, config)
    acc = ckpt["test_accuracy"]
    acc_text = "n/a (no test split)" if acc is None else f"{acc:.4f}"
    last = ckpt["history"][-1]
    width = f"base_width={args.base_width}" if args.arch == ARCH else f"width={args.width}"
    print(
        f"saved {args.out}: {ckpt['arch']} {width}, "
        f"{len(ckpt['labels'])} classes, clip {ckpt['clip_len']}x{ckpt['crop_size']}, "
        f"epoch {ckpt['best_epoch']}/{args.epochs}, final train loss {last['loss']:.4f}, "
        f"test accuracy {acc_text}"
    )
    return 0
