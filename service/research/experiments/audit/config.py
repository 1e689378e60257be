"""Settings of ``shuffleguard audit`` and the audit's fixed table: its cells and attackers.

The only module of the audit package that imports the option machinery
(:mod:`service.research.experiments.config`), so a move of that machinery touches one import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from service.options import (
    ExperimentConfig,
    device_opt,
    opt,
    out_opt,
    progress_opt,
    threads_opt,
)

__all__ = [
    "ADAPTIVE",
    "ATTACK_CELLS",
    "CLIP_CELLS",
    "MEASURE_TAGS",
    "MIN_EPS_LEVELS",
    "RUN_CLIP",
    "TITLES",
    "TRANSFER",
    "WORST",
    "AuditConfig",
]

#: The smallest attack radius an audit takes (pixel levels of 255): the paper's 4/255.
#: Steps and EOT draws are the library's full ones and not options at all.
MIN_EPS_LEVELS = 4
#: The white-box adaptive attackers of the verdict, entries of the attack registry: the
#: paper's EOT (30 steps x 10 draws) and two saturated EOTs of issue 18 (100 steps x 10
#: draws, steps of 2.5 eps / steps on a cosine schedule): the vote-aware margin
#: (``eot_vote``) and cross-entropy on the mean logits (``eot_ce_mean``), which reaches
#: clips where a margin stalls on a dead-end runner-up class (``analyze adaptive``).
#: A clip counts as defended only if the vote is right against each (the per-clip worst
#: case of ``analyze adaptive``) and against the transfer attack.
ADAPTIVE: tuple[str, ...] = ("eot", "eot_vote", "eot_ce_mean")
#: The transfer attacker: I-FGSM crafted on the undefended model.
TRANSFER = "ifgsm"
#: ``(measure, row)`` of the evaluated clips, then of the attacked clips.
CLIP_CELLS: tuple[tuple[str, str], ...] = (
    ("clean", "none"), ("clean", "shuffle"), ("uniformized", "none"), ("permuted", "none"),
)  # fmt: skip
ATTACK_CELLS: tuple[tuple[str, str], ...] = (
    (TRANSFER, "none"), (TRANSFER, "shuffle"), *((a, "shuffle") for a in ADAPTIVE),
)  # fmt: skip
#: The per-clip worst case over the attacked cells on the defense (not a record).
WORST = ("worst", "shuffle")
#: Seed tags of the measures (the attacks use their registry ``seed_id``).
MEASURE_TAGS = {"clean": 0, "permuted": 7, "latency": 8}
#: Records that are not per clip: the tune and the latency.
RUN_CLIP = -1
TITLES = {
    ("clean", "none"): "clean, undefended",
    ("clean", "shuffle"): "clean, defended",
    ("uniformized", "none"): "uniformized (Table 1)",
    ("permuted", "none"): "fully permuted (Fig. 2, N = T)",
    ("ifgsm", "none"): "I-FGSM, undefended",
    ("ifgsm", "shuffle"): "transfer I-FGSM, defended",
    ("eot", "shuffle"): "paper's EOT, defended",
    ("eot_vote", "shuffle"): "saturated EOT (eot_vote), defended",
    ("eot_ce_mean", "shuffle"): "saturated EOT (eot_ce_mean), defended",
    WORST: "worst case per clip, defended",
}


@dataclass
class AuditConfig(ExperimentConfig):
    """Settings of ``shuffleguard audit`` (see the package docstring)."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "audit")

    model: str = opt(
        help="the served archive to audit (.mar: TorchScript or torch.export + meta.json)",
        show="always",
    )
    data: str = opt(
        help="directory of your labelled clips (any video the gateway decodes, or .npy uint8"
        " [T, H, W, 3]) with a labels file (see docs/audit.md)",
        show="always",
    )
    labels: str = opt("labels.csv", "labels file in --data: CSV file,label_index,label[,split]")
    split: str | None = opt(None, "only the rows of this split (the labels file's split column)")
    out: str = out_opt("runs/audit")
    clips: int | None = opt(None, "evaluated clips, class-stratified (default: all but the tune's)")
    attack_clips: int = opt(32, "clips attacked (I-FGSM, EOT): the first evaluated ones")
    tune_clips: int = opt(4, "clips of the preset tune, held apart from the evaluated ones")
    subset_seed: int = opt(0, "seed of the class-stratified clip order")
    seed: int = opt(0, "seed of the shuffles, permutations and EOT draws")
    h1s: list[int] = opt([2, 4], "tune grid h1 values")
    h2s: list[int] = opt([1, 2], "tune grid h2 values")
    ensembles: list[int] = opt([5, 10], "tune ensemble sizes")
    grid_ensemble: int = opt(10, "tune ensemble size on the grid")
    clean_ratio: float = opt(
        0.95, "clean floor: share of the undefended clean accuracy the defense must keep"
        " (verdict and tune)",
    )  # fmt: skip
    level: float = opt(0.95, "confidence level of the intervals (and of the verdict's rule)")
    eps: int = opt(
        MIN_EPS_LEVELS, "L-inf radius of I-FGSM and EOT in pixel levels of 255: the paper's 4"
        " or more; raise it when the attack does not fool your undefended model (the tune"
        " stays at 4)",
    )  # fmt: skip
    latency_clips: int = opt(4, "clips timed for the compute cost")
    latency_repeats: int = opt(5, "timed calls per clip (the median is reported)")
    device: str = device_opt()
    threads: int = threads_opt()
    batch_size: int = opt(32, "clips per forward pass", show="never")
    attack_batch: int = opt(4, "clips per attack batch", show="never")
    eot_batch: int | None = opt(40, "most clip copies per EOT forward pass", show="never")
    no_progress: bool = progress_opt()

    def check(self) -> None:
        if not MIN_EPS_LEVELS <= self.eps <= 255:
            raise ValueError(
                f"--eps must be {MIN_EPS_LEVELS}..255 pixel levels, got {self.eps}: the"
                f" paper's {MIN_EPS_LEVELS}/255 is the floor (an audit never weakens its attacks)"
            )
        if self.clips is not None and self.clips < 1:
            raise ValueError(f"--clips must be >= 1, got {self.clips}")
        if self.attack_clips < 1 or self.tune_clips < 1:
            raise ValueError(
                "need --attack-clips >= 1 (the verdict needs attacks) and --tune-clips >= 1"
            )
        if min(self.h1s, default=-1) < 0 or min(self.h2s, default=0) < 1:
            raise ValueError("need --h1s >= 0 and --h2s >= 1 (at least one of each)")
        if min(self.ensembles, default=0) < 1 or self.grid_ensemble < 1:
            raise ValueError("ensemble sizes must be >= 1")
        if not 0 < self.clean_ratio <= 1 or not 0 < self.level < 1:
            raise ValueError("need 0 < --clean-ratio <= 1 and 0 < --level < 1")
        if min(self.latency_clips, self.latency_repeats, self.threads, self.batch_size,
               self.attack_batch) < 1:  # fmt: skip
            raise ValueError("latency, thread and batch settings must be >= 1")
        self.h1s, self.h2s = sorted(set(self.h1s)), sorted(set(self.h2s))
        self.ensembles = sorted(set(self.ensembles))
