"""Train the DnCNN of the denoised-smoothing rows: ``shuffleguard analyze denoiser``.

Trains :class:`service.research.robustness.denoise.DnCNN` (Zhang et al. 2017; paper defaults
17 layers x 64 features) with Salman et al.'s MSE objective on Gaussian-noised frames
(std ``--sigma``, pixel units; use the smoothing sigma of ``shuffleguard evaluate``)
of the train split of a toy-data directory, then measures PSNR on test frames
(noisy vs denoised) and saves a checkpoint that ``shuffleguard evaluate --denoiser``
loads.

Writes ``--save`` (the denoiser) and ``denoiser.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from service import options
from service.research.experiments import common, config, report
from service.research.robustness.smoothing import SIGMA

__all__ = ["DenoiserConfig", "load_denoiser", "psnr", "run", "train_and_save"]


@dataclass
class DenoiserConfig(options.ExperimentConfig):
    """Settings of ``shuffleguard analyze denoiser``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "analyze", "denoiser")

    data: str = config.data_opt("toy-data directory (train split is used)")
    save: str = options.opt(help="where to write the denoiser (.pt)", show="always")
    out: str = options.out_opt("docs/results/denoiser", "report directory")
    sigma: float = options.opt(SIGMA, "noise std (pixel units)", show="always")
    depth: int = options.opt(17, "DnCNN layers (paper: 17)", show="always")
    features: int = options.opt(64, "DnCNN width (paper: 64)", show="always")
    epochs: int = options.opt(20, "training epochs", show="always")
    lr: float = options.opt(1e-3, "Adam learning rate", show="always")
    frame_batch: int = options.opt(64, "frames per step", show="always")
    max_clips: int | None = options.opt(None, "train on this many clips", show="always")
    eval_clips: int = options.opt(32, "test clips for the PSNR", show="always")
    seed: int = options.opt(0, "seed of the subset, the noise and the training", show="always")
    device: str = options.device_opt()
    threads: int = options.threads_opt()
    no_progress: bool = options.progress_opt()

    def check(self) -> None:
        if self.epochs < 1 or self.depth < 2 or self.features < 1 or self.sigma < 0:
            raise ValueError("bad --epochs/--depth/--features/--sigma")


def load_denoiser(path: str | Path, device: str = "cpu") -> nn.Module:
    """The DnCNN saved by :func:`train_and_save`, in eval mode on ``device``."""
    from service.research.robustness.denoise import DnCNN

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


def train_and_save(args: DenoiserConfig) -> dict[str, Any]:
    from service.research.robustness.denoise import DenoisedClassifier, train_denoiser
    from service.research.train import clips_to_input

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


def run(args: DenoiserConfig) -> int:
    common.prepare_torch(args.device, args.threads, "shuffleguard analyze denoiser")
    result = train_and_save(args)
    result["command"] = args.command()
    result["environment"] = report.environment(args.device)
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
    report.write_csv(out / "denoiser.csv", keys, [[result[k] for k in keys]])
    report.write_json(out / "denoiser.json", result)
    (out / "denoiser.md").write_text(
        "\n".join(
            [
                "# DnCNN denoiser for denoised smoothing",
                "",
                *report.produced_by(result["command"]),
                report.markdown_table(
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
