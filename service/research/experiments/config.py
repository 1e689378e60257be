"""What the research experiments share on top of :mod:`service.options`: the
model-and-clips base config (:class:`AnalysisConfig`) and the options only experiments
take (checkpoint, data, attack batch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.options import (
    ExperimentConfig,
    device_opt,
    opt,
    out_opt,
    progress_opt,
    threads_opt,
)

__all__ = ["AnalysisConfig", "attack_batch_opt", "checkpoint_opt", "data_opt"]


def attack_batch_opt(default: int = 8) -> Any:
    """``--attack-batch``: clips per attack batch (never changes a result)."""
    return opt(default, "clips per attack batch", show="never")


def checkpoint_opt() -> Any:
    """``--checkpoint``: the model, required."""
    return opt(
        help="a `shuffleguard train` checkpoint, or a served .mar (model_store/toy_r3d18.mar)",
        show="always",
    )


def data_opt(help: str = "toy-data directory of the model's dataset") -> Any:  # noqa: A002
    """``--data``: the clips, required."""
    return opt(help=help, show="always")


@dataclass
class AnalysisConfig(ExperimentConfig):
    """What every model-and-clips experiment shares: the model, the clips, the device."""

    checkpoint: str = checkpoint_opt()
    data: str = data_opt()
    split: str = opt(
        "test",
        "clips to use (val: the train clips training held out; default test)",
        choices=("test", "val", "train", "all"),
    )
    clips: int | None = opt(None, "seeded class-stratified subset size (default all)")
    subset_seed: int = opt(0, "seed of the clip subset")
    out: str = out_opt("docs/results")
    device: str = device_opt()
    threads: int = threads_opt()
    batch_size: int = opt(32, "clips per forward pass", show="never")
    no_progress: bool = progress_opt()
    adv_cache: str | None = opt(
        None, "directory caching I-FGSM clips (deterministic) across analyses (default: none)"
    )

    def __init_subclass__(cls, analysis: str | None = None, **kwargs: Any) -> None:
        """``class Fig2Config(AnalysisConfig, analysis="fig2")``: the command is
        ``shuffleguard analyze fig2``, the report ``fig2.*`` and ``--out`` defaults to
        ``docs/results/fig2`` (unless the class declares its own ``out``)."""
        super().__init_subclass__(**kwargs)
        if analysis is None:
            return
        cls.COMMAND = ("shuffleguard", "analyze", analysis)
        if "out" not in vars(cls):  # before @dataclass reads the fields
            if "__annotations__" not in vars(cls):
                cls.__annotations__ = {}
            cls.__annotations__["out"] = "str"
            cls.out = out_opt(f"docs/results/{analysis}")  # type: ignore[misc]

    def check(self) -> None:
        if self.clips is not None and self.clips < 1:
            raise ValueError(f"--clips must be >= 1, got {self.clips}")
        if self.threads < 1 or self.batch_size < 1:
            raise ValueError("--threads and --batch-size must be >= 1")
