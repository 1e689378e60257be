"""The query-attack watch (service.gateway.querywatch): fingerprints, index, bounds, policy."""

from __future__ import annotations

import numpy as np
import pytest

from service.config import Settings
from service.gateway.querywatch import (
    ClientHistory,
    FingerprintSpec,
    QueryWatch,
    fingerprint,
    thumbnail,
)

SPEC = FingerprintSpec(key=7)


def moving_clip(seed: int, t: int = 16, size: int = 32) -> np.ndarray:
    """A textured background and a bright square moving along a seeded path."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    clip = np.repeat(bg[None], t, axis=0)
    r, c = rng.integers(0, size - 8, 2)
    dr, dc = rng.choice([-1, 1], 2)
    for i in range(t):
        y, x = int(np.clip(r + dr * i, 0, size - 6)), int(np.clip(c + dc * i, 0, size - 6))
        clip[i, y : y + 6, x : x + 6] = 255
    return clip


def perturbed(clip: np.ndarray, seed: int, eps: int = 4, frames: slice = slice(None)) -> np.ndarray:
    """A Square-attack-like query: one eps square (the same in the chosen frames)."""
    rng = np.random.default_rng(seed)
    out = clip.astype(np.int16)
    y, x = rng.integers(0, 26, 2)
    out[frames, y : y + 6, x : x + 6] += rng.choice([-eps, eps], 3).astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def test_fingerprint_shape_key_and_determinism() -> None:
    clip = moving_clip(0)
    a = fingerprint(clip, SPEC)
    assert a.shape == (16, SPEC.keep) and a.dtype == np.uint64 and (a > 0).all()
    assert np.array_equal(a, fingerprint(clip.copy(), SPEC))
    other_key = fingerprint(clip, FingerprintSpec(key=8))
    assert not np.intersect1d(a, other_key).size  # a secret key changes every kept hash


def test_still_clip_is_topped_up_with_raw_hashes() -> None:
    still = np.repeat(moving_clip(1)[:1], 16, axis=0)  # no motion: no residual
    prints = fingerprint(still, SPEC)
    assert (prints > 0).all()
    assert np.array_equal(prints[0], prints[5])


def test_thumbnail_block_means_large_frames_only() -> None:
    clip = np.zeros((2, 64, 96, 3), np.uint8)
    clip[:, :2, :2] = 200  # one 2x2 block after shrinking 64 -> 32
    small = thumbnail(clip, 32)
    assert small.shape == (2, 32, 32, 3)  # 96 / ceil(96 / 32) = 32
    assert small[0, 0, 0, 0] == 200 * 4 // 6  # the 2x3 block holds 4 bright of 6 pixels
    already = clip[:, :32, :32]
    assert thumbnail(already, 32) is already  # small enough: untouched


def watch(**kw: object) -> QueryWatch:
    args: dict[str, object] = {"spec": SPEC, "match": 14, "frames": 0.75, "hits": 3, "recent": 5}
    return QueryWatch(**{**args, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("frames", [slice(None), slice(3, 7)], ids=["all_frames", "some_frames"])
def test_attack_queries_are_near_duplicates_and_get_detected(frames: slice) -> None:
    w, clip = watch(), moving_clip(2)
    seen = [w.observe("eve", perturbed(clip, s, frames=frames)) for s in range(10)]
    assert not seen[0].near_duplicate  # nothing to match yet
    assert all(o.near_duplicate for o in seen[1:4])
    assert [o.detected for o in seen[:4]] == [False, False, False, True]  # 3 hits in the last 5


def test_distinct_clips_do_not_match() -> None:
    w = watch()
    seen = [w.observe("alice", moving_clip(s)) for s in range(40)]
    assert not any(o.near_duplicate or o.detected for o in seen)
    assert max(int(o.frame_scores.max()) for o in seen) < 14


def test_exact_resend_is_neither_near_duplicate_nor_stored_twice() -> None:
    w, clip = watch(), moving_clip(3)
    first = w.observe("bob", clip)
    again = [w.observe("bob", clip.copy()) for _ in range(5)]
    assert not first.exact_repeat and all(o.exact_repeat for o in again)
    assert not any(o.near_duplicate or o.detected for o in again)
    assert len(w.client("bob").queries) == 1


def test_clients_are_separate_and_lru_bounded() -> None:
    w, clip = watch(clients=3), moving_clip(4)
    for s in range(3):
        w.observe(f"c{s}", perturbed(clip, s))
    assert not w.observe("other", perturbed(clip, 9)).near_duplicate  # c0..c2 don't count
    assert w.tracked() == (3, 3)  # "other" evicted c0
    assert not w.observe("c0", perturbed(clip, 10)).near_duplicate  # c0 starts afresh


def test_history_ring_buffer_evicts_hashes() -> None:
    hist = ClientHistory(capacity=4, recent=4)
    prints = [fingerprint(moving_clip(s), SPEC) for s in range(10)]
    for i, p in enumerate(prints):
        hist.add(bytes([i]), p, False)
        assert len(hist.queries) <= 4
    held = {int(v) for p in prints[-4:] for v in p.ravel() if v}
    assert set(hist.counts) == held  # the six evicted queries left no hash behind
    assert sum(hist.counts.values()) == sum(int((p > 0).sum()) for p in prints[-4:])
    assert hist.lookup(prints[0]).max() < SPEC.keep // 2  # an evicted clip no longer matches
    assert hist.lookup(prints[-1]).min() == SPEC.keep


def test_lookup_cost_does_not_grow_with_history() -> None:
    probe = fingerprint(moving_clip(99), SPEC)
    costs = []
    for n in (1, 50, 200):
        hist = ClientHistory(capacity=1000, recent=10)
        for i in range(n):
            hist.add(i.to_bytes(4, "big"), fingerprint(moving_clip(i), SPEC), False)
        before = hist.probes
        hist.lookup(probe)
        costs.append(hist.probes - before)
    assert costs == [16 * SPEC.keep] * 3


def test_refuse_policy_penalty_then_recovery() -> None:
    now = [0.0]
    w = watch(policy="refuse", penalty_s=60.0, clock=lambda: now[0])
    clip = moving_clip(5)
    seen = [w.observe("eve", perturbed(clip, s)) for s in range(4)]
    assert seen[-1].detected
    gate = w.gate("eve")
    assert gate is not None and gate.action == "refuse" and gate.retry_after_s == 60.0
    assert w.gate("alice") is None
    now[0] = 61.0
    assert w.gate("eve") is None
    assert not w.observe("eve", perturbed(clip, 50)).near_duplicate  # history cleared


def test_penalty_survives_history_eviction() -> None:
    now = [0.0]
    w = watch(policy="refuse", clients=2, penalty_s=60.0, clock=lambda: now[0])
    for s in range(4):
        w.observe("eve", perturbed(moving_clip(7), s))
    for name in ("a", "b", "c"):  # eve's history is evicted from the LRU
        w.observe(name, moving_clip(len(name) + 20))
    assert w.tracked()[0] == 2
    gate = w.gate("eve")
    assert gate is not None and gate.action == "refuse"


def test_throttle_policy_lets_one_through_per_interval() -> None:
    now = [0.0]
    w = watch(policy="throttle", penalty_s=100.0, throttle_s=10.0, clock=lambda: now[0])
    clip = moving_clip(6)
    for s in range(4):
        w.observe("eve", perturbed(clip, s))
    assert w.gate("eve") is not None  # just detected: the next slot is in 10 s
    now[0] = 10.0
    assert w.gate("eve") is None  # one let through
    gate = w.gate("eve")
    assert gate is not None and gate.action == "throttle" and gate.retry_after_s == 10.0


def test_settings_validate_detection_once() -> None:
    w = QueryWatch.from_settings(Settings(detect_policy="refuse", detect_match=12))
    assert (w.policy, w.match, w.spec.keep) == ("refuse", 12, 20)
    with pytest.raises(ValueError, match="detect_match"):
        Settings(detect_match=21, detect_keep=20)
    with pytest.raises(ValueError, match="detect_hits <= detect_recent"):
        Settings(detect_hits=30, detect_recent=20)
    with pytest.raises(ValueError):
        Settings(detect_policy="ban")  # type: ignore[arg-type]
