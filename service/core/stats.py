"""The project's statistics, all from scipy / numpy (no hand-written formulas).

* :func:`wilson` -- Wilson score interval of a binomial proportion
  (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).
* :func:`clopper_pearson_lower` -- one-sided exact (Clopper-Pearson) lower bound
  (``proportion_ci(method="exact")``), what randomized smoothing certifies with.
* :func:`mean_ci` -- mean and Student-t interval half-width (``scipy.stats.t.interval``).
* :func:`auc` -- area under the ROC curve, the Mann-Whitney U statistic over
  ``n_pos * n_neg`` (``scipy.stats.mannwhitneyu``); ties count one half.
* :func:`roc_curve` -- the ROC points of "flag when score >= threshold".
* :func:`bootstrap_ci` -- percentile bootstrap interval of a statistic
  (``scipy.stats.bootstrap``).
* :func:`percentile` -- THE percentile definition of the project: the nearest rank
  (numpy's ``method="inverted_cdf"``, type 1 of Hyndman & Fan: always an observed
  value), used by the benchmarks and the load runner alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
from scipy import stats as _st

__all__ = [
    "PERCENTILE_METHOD",
    "auc",
    "bootstrap_ci",
    "clopper_pearson_lower",
    "mean_ci",
    "percentile",
    "roc_curve",
    "wilson",
]

#: The one percentile definition: nearest rank, ``sorted[ceil(q * n) - 1]``.
PERCENTILE_METHOD: Final = "inverted_cdf"


def wilson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of ``successes / trials`` (NaNs for no trials)."""
    if trials <= 0:
        return float("nan"), float("nan")
    ci = _st.binomtest(int(successes), int(trials)).proportion_ci(level, method="wilson")
    return float(ci.low), float(ci.high)


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided exact lower bound, level ``1 - alpha``, of a binomial proportion (0 if none)."""
    if successes <= 0:
        return 0.0
    test = _st.binomtest(int(successes), int(trials), alternative="greater")
    return float(test.proportion_ci(1 - alpha, method="exact").low)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t interval (0 for one value or no spread)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    sem = float(_st.sem(arr)) if arr.size > 1 else 0.0
    if sem == 0.0 or math.isnan(sem):
        return mean, 0.0
    low, high = _st.t.interval(level, arr.size - 1, loc=mean, scale=sem)
    return mean, float(high - low) / 2


def auc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """Area under the ROC curve, ``P(pos > neg) + P(pos == neg) / 2`` (Mann-Whitney U).

    Equal to the trapezoidal area under :func:`roc_curve`; 1.0 when every positive
    scores above every negative, 0.5 when the scores carry no information.
    """
    if len(negatives) == 0 or len(positives) == 0:
        raise ValueError("need at least one negative and one positive score")
    if len(set(negatives) | set(positives)) == 1:
        return 0.5  # all scores tied (mannwhitneyu would warn on zero variance)
    u = _st.mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(u) / (len(negatives) * len(positives))


def roc_curve(
    negatives: Sequence[float], positives: Sequence[float]
) -> tuple[list[float], list[float], list[float]]:
    """ROC of the rule "flag when score >= threshold": ``(fpr, tpr, thresholds)``.

    Thresholds run from ``+inf`` (nothing flagged: (0, 0)) down through every distinct
    score (the last flags everything: (1, 1)); tied scores move together, so the
    curve has one point per distinct score.
    """
    if len(negatives) == 0 or len(positives) == 0:
        raise ValueError("need at least one negative and one positive score")
    neg, pos = np.sort(np.asarray(negatives, float)), np.sort(np.asarray(positives, float))
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    fpr = (neg.size - np.searchsorted(neg, thr, side="left")) / neg.size
    tpr = (pos.size - np.searchsorted(pos, thr, side="left")) / pos.size
    return [0.0, *fpr.tolist()], [0.0, *tpr.tolist()], [float("inf"), *thr.tolist()]


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[..., float] = np.median,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (seeded)."""
    res = _st.bootstrap(
        (np.asarray(values, dtype=np.float64),),
        statistic,
        confidence_level=level,
        n_resamples=resamples,
        method="percentile",
        vectorized=False,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (``q`` in [0, 100]) by :data:`PERCENTILE_METHOD`; None if empty."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method=PERCENTILE_METHOD))
