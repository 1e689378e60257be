"""Attacks and baseline defenses for measuring the temporal-shuffling defense.

Imports torch, scipy and tqdm only -- no server code -- so it runs from a notebook.

* :mod:`service.research.robustness.attacks` -- I-FGSM, its static / framewise variants
  (paper Sec. 4.2), the one frame attack, adversarial flickering and the adaptive
  EOT attack, all behind one :class:`Attack` base class.
* :mod:`service.research.robustness.smoothing` -- randomized smoothing with an explicit
  ``ABSTAIN``, the :class:`Defense` protocol and the comparison rows' classes.
* :mod:`service.research.robustness.registry` -- the defense rows and attacks of the
  evaluation, each declared once.
* :mod:`service.research.robustness.denoise` -- DnCNN per-frame denoiser for denoised smoothing.
"""

from service.research.robustness.attacks import (
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
from service.research.robustness.denoise import DenoisedClassifier, DnCNN, train_denoiser
from service.research.robustness.registry import ATTACKS, DEFENSE_ROWS
from service.research.robustness.smoothing import (
    ABSTAIN,
    CopyTransform,
    Defense,
    NoDefense,
    ShuffleCopies,
    ShuffleVote,
    Smooth,
    SmoothedDefense,
)

__all__ = [
    "ABSTAIN",
    "ATTACKS",
    "DEFENSE_ROWS",
    "EOT",
    "IFGSM",
    "Attack",
    "CopyTransform",
    "Defense",
    "DenoisedClassifier",
    "DnCNN",
    "Flickering",
    "FramewiseIFGSM",
    "NoDefense",
    "OneFrameAttack",
    "ShuffleCopies",
    "ShuffleVote",
    "Smooth",
    "SmoothedDefense",
    "StaticIFGSM",
    "attack_mode",
    "flicker_metrics",
    "train_denoiser",
]
