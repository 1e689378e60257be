"""Train the DnCNN of the denoised-smoothing rows: ``shuffleguard analyze denoiser``.

Trains :class:`service.robustness.denoise.DnCNN` (Zhang et al. 2017; paper defaults
17 layers x 64 features) with Salman et al.'s MSE objective on Gaussian-noised frames
(std ``--sigma``, pixel units; use the smoothing sigma of ``shuffleguard evaluate``)
of the train split of a toy-data directory, then measures PSNR on test frames
(noisy vs denoised) and saves a checkpoint that ``shuffleguard evaluate --denoiser``
loads.

Writes ``--save`` (the denoiser) and ``denoiser.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.experiments import common

__all__ = ["add_arguments", "load_denoiser", "psnr", "run", "train_and_save"]


def load_denoiser(path: str | Path, device: str = "cpu") -> nn.Module:
    """The DnCNN saved by :func:`train_and_save`, in eval mode on ``device``."""
    from service.robustness.denoise import DnCNN

    ckpt = torch.load(Path(path), map_location=device, weights_only=True)
    cfg = ckpt["config"]
    model = DnCNN(
        channels=int(cfg["channels"]), depth=int(cfg["depth"]), features=int(cfg["features"])
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of ``a`` vs ``b`` (both in ``[0, 1]`` scale)."""
    mse = float((a.float() - b.float()).square().mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def train_and_save(args: argparse.Namespace) -> dict[str, Any]:
    from service.robustness.denoise import DenoisedClassifier, train_denoiser
    from service.train import clips_to_input

    train = common.load_split(args.data, "train")
    pick = common.stratified_subset(train.labels, args.max_clips, args.seed)
    train = train.take(pick)
    clips = clips_to_input(train.clips)  # [N, 3, T, H, W] float on the CPU
    t0 = time.perf_counter()
    denoiser = train_denoiser(
        clips,
        args.sigma,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        batch_size=args.frame_batch,
        lr=args.lr,
        depth=args.depth,
        features=args.features,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - t0
    test = common.load_split(args.data, "test")
    test = test.take(common.stratified_subset(test.labels, args.eval_clips, args.seed))
    x = clips_to_input(test.clips, args.device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    noisy = x + args.sigma * torch.randn(x.shape, generator=gen).to(x.device)
    with torch.no_grad():
        den = DenoisedClassifier(denoiser, nn.Identity()).denoise(noisy)
    result = {
        "analysis": "denoiser",
        "sigma": args.sigma,
        "depth": args.depth,
        "features": args.features,
        "epochs": args.epochs,
        "train_clips": len(train),
        "train_frames": int(clips.shape[0] * clips.shape[2]),
        "eval_clips": len(test),
        "psnr_noisy_db": psnr(noisy.clamp(0, 1), x),
        "psnr_denoised_db": psnr(den, x),
        "train_seconds": seconds,
        "save": str(args.save),
    }
    save = Path(args.save)
    save.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in denoiser.state_dict().items()},
            "config": {"channels": 3, "depth": args.depth, "features": args.features},
            "sigma": args.sigma,
            "data": str(args.data),
            "seed": args.seed,
            "result": {k: v for k, v in result.items() if isinstance(v, int | float | str)},
        },
        save,
    )
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="toy-data directory (train split is used)")
    parser.add_argument("--save", required=True, help="where to write the denoiser (.pt)")
    parser.add_argument("--out", default="docs/results/denoiser", help="report directory")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise std (pixel units)")
    parser.add_argument("--depth", type=int, default=17, help="DnCNN layers (paper: 17)")
    parser.add_argument("--features", type=int, default=64, help="DnCNN width (paper: 64)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--frame-batch", type=int, default=64, help="frames per step")
    parser.add_argument("--max-clips", type=int, default=None, help="train on this many clips")
    parser.add_argument("--eval-clips", type=int, default=32, help="test clips for the PSNR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    parser.add_argument("--no-progress", action="store_true")


def command(args: argparse.Namespace) -> str:
    return common.command_line(
        ["shuffleguard", "analyze", "denoiser"],
        {
            "data": args.data,
            "save": args.save,
            "out": args.out,
            "sigma": args.sigma,
            "depth": args.depth,
            "features": args.features,
            "epochs": args.epochs,
            "lr": args.lr,
            "frame_batch": args.frame_batch,
            "max_clips": args.max_clips,
            "eval_clips": args.eval_clips,
            "seed": args.seed,
            "device": args.device,
        },
    )


def run(args: argparse.Namespace) -> int:
    common.prepare_torch(args.device, args.threads, "shuffleguard analyze denoiser")
    if args.epochs < 1 or args.depth < 2 or args.features < 1 or args.sigma < 0:
        raise SystemExit("shuffleguard analyze denoiser: bad --epochs/--depth/--features/--sigma")
    result = train_and_save(args)
    result["command"] = command(args)
    result["environment"] = common.environment(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [
        "sigma",
        "depth",
        "features",
        "epochs",
        "train_clips",
        "psnr_noisy_db",
        "psnr_denoised_db",
        "train_seconds",
    ]
    common.write_csv(out / "denoiser.csv", keys, [[result[k] for k in keys]])
    common.write_json(out / "denoiser.json", result)
    (out / "denoiser.md").write_text(
        "\n".join(
            [
                "# DnCNN denoiser for denoised smoothing",
                "",
                *common.produced_by(result["command"]),
                common.markdown_table(
                    [
                        "sigma",
                        "layers x width",
                        "train clips",
                        "PSNR noisy (dB)",
                        "PSNR denoised (dB)",
                        "train (s)",
                    ],
                    [
                        [
                            result["sigma"],
                            f"{result['depth']} x {result['features']}",
                            result["train_clips"],
                            f"{result['psnr_noisy_db']:.2f}",
                            f"{result['psnr_denoised_db']:.2f}",
                            f"{result['train_seconds']:.0f}",
                        ]
                    ],
                ),
                "",
                "![PSNR](denoiser.png)",
                "",
            ]
        )
    )
    _plot(result, out / "denoiser.png")
    print(
        f"saved {args.save}: PSNR {result['psnr_noisy_db']:.2f} dB noisy -> "
        f"{result['psnr_denoised_db']:.2f} dB denoised (sigma {args.sigma})"
    )
    return 0


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.0), dpi=120)
    ax.bar(
        ["noisy", "denoised"],
        [result["psnr_noisy_db"], result["psnr_denoised_db"]],
        color=["gray", "C0"],
    )
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"DnCNN, sigma = {result['sigma']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
