"""The audit's verdict: one small pure rule on the figures' bounds, then its sentence.

The rule (:func:`decide`) judges each figure against a fixed threshold with its
interval: a verdict is claimed only when the bound that supports it clears the
threshold; otherwise the answer is ``cannot_tell`` at this sample size. Two samples
can then disagree only by one of them not telling, never by claiming opposites unless
one interval misses the truth.
"""

from __future__ import annotations

import re
from typing import Any

from service.research.experiments import report

__all__ = ["HOLD_SHARE", "VERDICTS", "decide", "verdict"]

VERDICTS = ("needs_motion", "protects", "does_not_protect", "cannot_tell")
#: The attacked figures are judged against this share of the clean undefended accuracy.
HOLD_SHARE = 0.5
#: splits :func:`decide`'s docstring into its definitions and numbered rules
_RULE_PARTS = re.compile(r"\n\s*\n|\n\s*(?=\d\. )")

Figure = dict[str, Any]


def decide(
    clean: Figure, clean_defended: Figure, undefended_attacked: Figure, worst: Figure,
    clean_ratio: float,
) -> str:  # fmt: skip
    """The first rule that holds (each figure has ``accuracy``, ``low``, ``high``).

    ``floor = clean_ratio x clean undefended accuracy``; ``half = 0.5 x clean undefended
    accuracy``; ``worst`` = the defended accuracy per clip against every attacker (a clip
    counts only if the vote is right under the transfer I-FGSM and each white-box
    adaptive EOT); bounds are the figures' intervals.

    1. ``needs_motion`` -- the defended clean accuracy's upper bound is under ``floor``:
       the shuffles cost clean accuracy beyond doubt, so the model needs the frame order.
    2. ``protects`` -- ``worst``'s lower bound reaches ``half`` and the undefended I-FGSM
       accuracy's upper bound is under ``half``: the attack surely takes the undefended
       model below half its clean accuracy and the defense surely keeps at least half
       against the strongest attacker.
    3. ``does_not_protect`` -- ``worst``'s upper bound is under ``half``: the strongest
       attacker surely takes the defended model below half its clean accuracy.
    4. ``cannot_tell`` -- none of these: an interval straddles its threshold at this
       sample size (attack more clips), or the attack does not bite undefended.
    """
    floor = clean_ratio * clean["accuracy"]
    half = HOLD_SHARE * clean["accuracy"]
    if clean_defended["high"] < floor:
        return "needs_motion"
    if worst["low"] >= half and undefended_attacked["high"] < half:
        return "protects"
    if worst["high"] < half:
        return "does_not_protect"
    return "cannot_tell"


def _p(f: Figure) -> str:
    return f"{report.pct(f['accuracy'], 0)}% ({report.pct(f['low'], 0)}-{report.pct(f['high'], 0)})"


def _sentence(code: str, fig: dict[str, Figure], name: str, floor: float, half: float) -> str:
    clean, clean_d, perm = fig["clean/none"], fig["clean/shuffle"], fig["permuted/none"]
    ifgsm, worst, uni = fig["ifgsm/none"], fig["worst/shuffle"], fig["uniformized/none"]
    attacked = (f"against the strongest attacker (per clip: transfer I-FGSM and white-box"
                f" adaptive EOT) the defended model keeps {_p(worst)} where the undefended"
                f" model keeps {_p(ifgsm)} under I-FGSM")  # fmt: skip
    if code == "needs_motion":
        return (f"The shuffle defense costs too much clean accuracy for {name} because the"
                f" model needs motion: defended clean accuracy is {_p(clean_d)} against"
                f" {_p(clean)} undefended, under the floor of {report.pct(floor, 0)}%"
                f" (uniformized clips {_p(uni)}, fully permuted {_p(perm)}).")  # fmt: skip
    if code == "protects":
        cost = 100 * (clean["accuracy"] - clean_d["accuracy"])
        return (f"The shuffle defense protects {name}: {attacked}, both clear of half the"
                f" clean accuracy ({report.pct(half, 0)}%), at a clean cost of {cost:.0f}"
                " points.")  # fmt: skip
    order = (f" The model is order-insensitive (fully permuted {_p(perm)} against {_p(clean)}"
             " clean), so the shuffled copies look alike to it."
             if perm["high"] >= floor else "")  # fmt: skip
    if code == "does_not_protect":
        return (f"The shuffle defense does not protect {name}: {attacked}, surely under half"
                f" the clean accuracy ({report.pct(half, 0)}%).{order}")  # fmt: skip
    return (f"Cannot tell at this sample size whether the shuffle defense protects {name}:"
            f" {attacked}; an interval straddles half the clean accuracy"
            f" ({report.pct(half, 0)}%). Attack more clips (--attack-clips).{order}")  # fmt: skip


def verdict(fig: dict[str, Figure], clean_ratio: float, name: str) -> dict[str, Any]:
    """:func:`decide` on the figures (keys ``measure/row``, ``worst/shuffle`` included),
    its sentence, the thresholds and the rule's text.

    Caveat, whatever the rule: when the undefended I-FGSM accuracy's lower bound is
    above half the clean accuracy, the attack barely bites at this radius; the sentence
    says so and names ``--eps`` (``attack_bites`` is false).
    """
    clean, ifgsm, worst = fig["clean/none"], fig["ifgsm/none"], fig["worst/shuffle"]
    code = decide(clean, fig["clean/shuffle"], ifgsm, worst, clean_ratio)
    floor, half = clean_ratio * clean["accuracy"], HOLD_SHARE * clean["accuracy"]
    sentence = _sentence(code, fig, name, floor, half)
    bites = ifgsm["low"] <= half
    if not bites:
        sentence += (
            f" Caveat: the attack leaves the undefended model at {_p(ifgsm)}, so it barely bites"
            " at this radius and the attacked figures say little; rerun with a larger --eps."
        )
    parts = _RULE_PARTS.split(decide.__doc__ or "")[1:]
    rule = [" ".join(part.split()) for part in parts if part.strip()]
    return {"code": code, "sentence": sentence, "floor": floor, "half": half, "worst": worst,
            "order_insensitive": fig["permuted/none"]["high"] >= floor, "rule": rule,
            "attack_bites": bites}  # fmt: skip
