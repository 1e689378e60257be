"""analyze querydetect: the decision rules replayed on recorded scores, and the recorder."""

from __future__ import annotations

import numpy as np

from service.gateway.querywatch import FingerprintSpec, QueryWatch
from service.research.experiments.querydetect import Recorder, Rule, detections, first_detection


def stream(nears: str) -> list[np.ndarray | None]:
    """'n' near-duplicate (every frame 20 of 20), '.' distinct (0), 'r' exact re-send."""
    full, none = np.full(16, 20), np.zeros(16, np.int64)
    return [None if c == "r" else full if c == "n" else none for c in nears]


def test_first_detection_counts_queries_and_skips_resends() -> None:
    rule = Rule(match=14, hits=4, recent=20)
    assert first_detection(stream(".nnnn"), rule) == 5
    assert first_detection(stream(".nrnrnn"), rule) == 7  # re-sends count as queries only
    assert first_detection(stream(".nnn" + "." * 30), rule) is None
    # diluted: one near-duplicate per 5 queries -> 4 of the last 20 at query 20
    assert first_detection(stream("....n" * 8), rule) == 20
    assert first_detection(stream("......n" * 8), rule) is None  # 1 in 7: at most 3 of 20


def test_detections_restart_after_each() -> None:
    rule = Rule(match=14, hits=2, recent=10)
    assert detections(stream("nn" + "nn" + "n" + "." * 5), rule) == 2


def test_recorder_matches_the_gateways_watch() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    clips = [base, base.copy()]  # the second is an exact re-send
    for s in range(6):
        wide = base.astype(np.int16)
        wide[:, s : s + 4, s : s + 4] += 4
        clips.append(np.clip(wide, 0, 255).astype(np.uint8))
    spec = FingerprintSpec(key=3)
    rec = Recorder(spec, history=64)
    watch = QueryWatch(spec=spec, match=14, frames=0.75, hits=4, recent=20)
    seen = []
    for c in clips:
        rec(c)
        seen.append(watch.observe("x", c))
    assert rec.scores[1] is None and seen[1].exact_repeat
    detected_at = next(i for i, o in enumerate(seen) if o.detected) + 1
    assert first_detection(rec.scores, Rule(14, 4, 20)) == detected_at == 6
    # the same scores up to the detection (the watch then clears its history, the
    # recorder does not: it only records)
    for got, obs in zip(rec.scores[:detected_at], seen, strict=False):
        if got is not None:
            assert np.array_equal(got, obs.frame_scores)
