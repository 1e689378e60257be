"""Train a 3D ResNet-18 (R3D-18) on a toy-data directory and save a checkpoint.

Reads the ``.npy`` clips and ``labels.csv`` written by ``shuffleguard toy-data``,
trains on the ``train`` split with Adam (seeded; bit-reproducible on the CPU for a
given seed and thread count), reports test accuracy after every epoch and saves a
checkpoint dict (``state_dict``, ``arch``, ``model_kwargs``, ``labels``, ``clip_len``,
``crop_size``, ``dataset``, ``seed``, ``test_accuracy``, ``train_args``, ``history``).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="directory written by `toy-data`")
    parser.add_argument("--out", required=True, help="checkpoint path to write (.pt)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    parser.add_argument(
        "--weight-decay", type=float, default=1e-4, help="Adam weight decay (default 1e-4)"
    )
    parser.add_argument(
        "--base-width", type=int, default=16, help="channels of the first stage (default 16)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="hold out this share of the train split for validation and keep the best"
        " epoch by validation accuracy (default 0: keep the last epoch)",
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="no translation/brightness jitter"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")


def run(args: argparse.Namespace) -> int:
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
        )
    except ValueError as exc:
        raise SystemExit(f"shuffleguard train: {exc}") from None
    ckpt = train_from_directory(args.data, args.out, config)
    acc = ckpt["test_accuracy"]
    acc_text = "n/a (no test split)" if acc is None else f"{acc:.4f}"
    last = ckpt["history"][-1]
    print(
        f"saved {args.out}: {ckpt['arch']} base_width={args.base_width}, "
        f"{len(ckpt['labels'])} classes, clip {ckpt['clip_len']}x{ckpt['crop_size']}, "
        f"epoch {ckpt['best_epoch']}/{args.epochs}, final train loss {last['loss']:.4f}, "
        f"test accuracy {acc_text}"
    )
    return 0
