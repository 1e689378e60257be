"""Export a trained checkpoint to TorchScript and pack it into a TorchServe ``.mar``.

Example (the shipped default model, see docs/default_model.md)::

    shuffleguard archive --checkpoint runs/default/model.ckpt --name toy_r3d18 \\
        --out model_store --h1 3 --h2 1 --ensemble 10
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="from `shuffleguard train`")
    parser.add_argument("--name", required=True, help="model name (the .mar's and the API's)")
    parser.add_argument("--out", type=Path, default=Path("model_store"), help="model store dir")
    parser.add_argument("--h1", type=int, required=True, help="preset source window half-width")
    parser.add_argument("--h2", type=int, required=True, help="preset run length")
    parser.add_argument("--ensemble", type=int, default=10, help="preset ensemble size")
    parser.add_argument("--frame-interval", type=int, default=1, help="sampling stride (frames)")
    parser.add_argument("--batch-size", type=int, default=4, help="TorchServe batchSize")
    parser.add_argument(
        "--max-batch-delay-ms", type=int, default=5, help="TorchServe maxBatchDelay"
    )
    parser.add_argument("--workers", type=int, default=1, help="TorchServe workers")
    parser.add_argument(
        "--format",
        choices=["torchscript", "export"],
        default="torchscript",
        help="weights format: TorchScript trace (model.pt) or torch.export (model.pt2)",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from service.archive import build_mar
    from service.train import load_checkpoint

    model, ckpt = load_checkpoint(args.checkpoint)
    meta = {
        "name": args.name,
        "arch": ckpt.get("arch", "resnet3d_18"),
        "clip_len": int(ckpt["clip_len"]),
        "frame_interval": args.frame_interval,
        "crop_size": int(ckpt["crop_size"]),
        "labels": list(ckpt["labels"]),
        "preset": {"h1": args.h1, "h2": args.h2, "ensemble": args.ensemble},
        "dataset": ckpt.get("dataset"),
        "test_accuracy": ckpt.get("test_accuracy"),
        "train_seed": ckpt.get("seed"),
        "val_fraction": (ckpt.get("train_args") or {}).get("val_fraction"),
    }
    mar = build_mar(
        model,
        meta,
        args.out,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        workers=args.workers,
        fmt=args.format,
    )
    written = json.loads((args.out / f"{args.name}.meta.json").read_text())
    print(f"wrote {mar} ({mar.stat().st_size / 1e6:.2f} MB)")
    print(f"weights sha256 {written['sha256']}")
    return 0
