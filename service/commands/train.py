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

from dataclasses import dataclass, fields
from typing import ClassVar

from service.options import opt
from service.research.train_options import ARCH, TrainOptions


@dataclass
class _Paths:
    data: str = opt(help="directory written by `toy-data`")
    out: str = opt(help="checkpoint path to write (.pt)")


@dataclass
class TrainCommandConfig(TrainOptions, _Paths):
    """Settings of ``shuffleguard train``: the paths, :class:`TrainOptions` (declared and
    validated there), then the command's own options."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "train")

    no_augment: bool = opt(False, "no translation/brightness jitter")
    threads: int = opt(2, "CPU threads for torch")


def run(args: TrainCommandConfig) -> int:
    import torch

    from service.research.train import TrainConfig, train_from_directory

    torch.set_num_threads(max(1, args.threads))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("shuffleguard train: --device cuda given but CUDA is not available")
    options = {f.name: getattr(args, f.name) for f in fields(TrainOptions)}
    config = TrainConfig(**options, augment=not args.no_augment)
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
