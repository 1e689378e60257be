"""Attacks and baseline defenses for measuring the temporal-shuffling defense.

Imports torch, scipy and tqdm only -- no server code -- so it runs from a notebook.

* :mod:`service.robustness.attacks` -- I-FGSM, its static / framewise variants
  (paper Sec. 4.2), the one frame attack, adversarial flickering and the adaptive
  EOT attack, all behind one :class:`Attack` base class.
"""

from service.robustness.attacks import (
    EOT,
    IFGSM,
    Attack,
    Flickering,
    FramewiseIFGSM,
    OneFrameAttack,
    StaticIFGSM,
    attack_mode,
    flicker_metrics,
)

__all__ = [
    "EOT",
    "IFGSM",
    "Attack",
    "Flickering",
    "FramewiseIFGSM",
    "OneFrameAttack",
    "StaticIFGSM",
    "attack_mode",
    "flicker_metrics",
]
