"""Export a model and pack it into a TorchServe ``.mar``.

A real model family from a checkpoint file (docs/models.md)::

    shuffleguard archive --arch slowfast_r50 --checkpoint SLOWFAST_8x8_R50.pyth \\
        --name slowfast --labels kinetics400

A checkpoint of ``shuffleguard train`` (detected; the shipped default model, see
docs/default_model.md)::

    shuffleguard archive --checkpoint runs/default/model.ckpt --name toy_r3d18 \\
        --out model_store --h1 3 --h2 1 --ensemble 10
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from service.options import ExperimentConfig, opt


@dataclass(kw_only=True)  # --name is required but keeps its place among the options
class ArchiveConfig(ExperimentConfig):
    """Settings of ``shuffleguard archive``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "archive")
    USAGE_ERRORS: ClassVar[bool] = True

    arch: str | None = opt(
        None,
        "model family (docs/models.md: i3d_r50, slowfast_r50, csn_r101, x3d_xs, x3d_s,"
        " x3d_m, r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v2_s, swin3d_t, i3d_inception);"
        " omit for a `shuffleguard train` checkpoint",
    )
    checkpoint: Path | None = opt(
        None,
        "checkpoint file: PyTorchVideo model zoo (.pyth), torchvision weights, a"
        " state_dict, or a `shuffleguard train` checkpoint",
    )
    random_init: bool = opt(
        False, "no checkpoint: untrained weights, marked weights=random (smoke tests, benchmarks)"
    )
    labels: str | None = opt(
        None,
        "'kinetics400' (torchvision's 400 class names) or a file with one name per line"
        " (default: kinetics400 for a 400-class head)",
    )
    name: str = opt(help="model name (the .mar's and the API's)")
    out: Path = opt(Path("model_store"), "model store dir")
    h1: int | None = opt(None, "preset source window half-width (default: the paper's preset)")
    h2: int | None = opt(None, "preset run length (default: the paper's preset)")
    ensemble: int | None = opt(None, "preset ensemble size (default 10)")
    frame_interval: int | None = opt(None, "sampling stride in frames (default: the family's)")
    clip_len: int | None = opt(None, "a shorter clip than the family's (smoke tests)")
    crop_size: int | None = opt(None, "a smaller crop than the family's (smoke tests)")
    seed: int = opt(0, "seed of a --random-init")
    batch_size: int = opt(4, "TorchServe batchSize")
    max_batch_delay_ms: int = opt(5, "TorchServe maxBatchDelay")
    workers: int = opt(1, "TorchServe workers")
    response_timeout: int | None = opt(
        None, "TorchServe responseTimeout in s (default: 120 for a family, 60 for a toy model)"
    )
    format: str = opt(
        "torchscript",
        "weights format: TorchScript trace (model.pt) or torch.export (model.pt2)",
        choices=("torchscript", "export"),
    )


def run(args: ArchiveConfig) -> int:
    from service.models.checkpoints import CheckpointError, is_training_checkpoint
    from service.modelserver.archive import ArchiveError, FamilyArchiveConfig, archive_family

    try:
        if args.checkpoint is not None and is_training_checkpoint(args.checkpoint):
            if args.arch not in (None, "resnet3d_18"):
                raise ArchiveError(
                    f"{args.checkpoint} is a `shuffleguard train` checkpoint (resnet3d_18),"
                    f" not {args.arch}: drop --arch"
                )
            return _run_training_checkpoint(args, args.checkpoint)
        if args.arch is None:
            raise ArchiveError(
                "pass --arch FAMILY for a checkpoint that is not from `shuffleguard train`"
                " (docs/models.md lists the families)"
            )
        config = FamilyArchiveConfig(
            family=args.arch,
            name=args.name,
            out=args.out,
            checkpoint=args.checkpoint,
            random_init=args.random_init,
            labels=args.labels,
            h1=args.h1,
            h2=args.h2,
            ensemble=args.ensemble,
            clip_len=args.clip_len,
            crop_size=args.crop_size,
            frame_interval=args.frame_interval,
            seed=args.seed,
            fmt=args.format,
            batch_size=args.batch_size,
            max_batch_delay_ms=args.max_batch_delay_ms,
            workers=args.workers,
            response_timeout_s=args.response_timeout or 120,
        )
        mar = archive_family(config)
    except (ArchiveError, CheckpointError) as exc:
        print(f"shuffleguard archive: {exc}", file=sys.stderr)
        return 2
    _report(mar, args)
    return 0


def _report(mar: Path, args: ArchiveConfig) -> None:
    import json

    written = json.loads((args.out / f"{args.name}.meta.json").read_text())
    print(f"wrote {mar} ({mar.stat().st_size / 1e6:.2f} MB)")
    print(f"weights sha256 {written['sha256']} ({written.get('weights', 'trained')})")


def _run_training_checkpoint(args: ArchiveConfig, checkpoint: Path) -> int:
    from service.models.checkpoints import load_checkpoint
    from service.modelserver.archive import ArchiveError, build_mar, toy_data_recipe

    if args.h1 is None or args.h2 is None:
        raise ArchiveError("a `shuffleguard train` checkpoint needs --h1 and --h2")
    model, ckpt = load_checkpoint(checkpoint)
    meta = {
        "name": args.name,
        "arch": ckpt.get("arch", "resnet3d_18"),
        "clip_len": int(ckpt["clip_len"]),
        "frame_interval": args.frame_interval or 1,
        "crop_size": int(ckpt["crop_size"]),
        "labels": list(ckpt["labels"]),
        "preset": {"h1": args.h1, "h2": args.h2, "ensemble": args.ensemble or 10},
        "dataset": ckpt.get("dataset"),
        "test_accuracy": ckpt.get("test_accuracy"),
        "train_seed": ckpt.get("seed"),
        "val_fraction": (ckpt.get("train_args") or {}).get("val_fraction"),
        "weights": "trained",
        "data": toy_data_recipe(ckpt),
    }
    mar = build_mar(
        model,
        meta,
        args.out,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        workers=args.workers,
        response_timeout_s=args.response_timeout or 60,
        fmt=args.format,
    )
    _report(mar, args)
    return 0
