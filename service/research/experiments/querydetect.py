"""How fast the gateway's query-attack detector (:mod:`service.gateway.querywatch`) catches
``redteam``'s attacks, and how often it flags benign clients.

    shuffleguard analyze querydetect --data runs/map/mix80 --out runs/querydetect

Offline and in-process, so it runs in minutes on a CPU: the served archive
(``--checkpoint``) answers the attacks as the gateway would (research mode: the vote
shares of a fresh ``N``-copy shuffle per query, full vote; production: the label only;
``defense=false``: the softmax of the clip), and every clip an attack sends is captured
and fed to one client's detector history, exactly the uint8 clip the gateway would
decode from the attacker's ``.npy`` upload.

Per query the detector's per-frame scores are recorded once; every decision rule of the
threshold table (``match`` hashes per frame, ``hits`` near-duplicates in the last
``recent`` queries) is then evaluated on the same records.

Streams: attacks (``square`` on the defended vote shares and on ``defense=false``,
``square_window``: the square in a run of frames only, ``rays`` label-only on the
defended labels), each on ``--clips`` test clips with ``--queries`` queries; adaptive
``square_noise{n}`` (uniform integer noise in ``[-n, n]`` added to every query sent);
``square_interleave{m}`` (``m`` distinct benign clips sent between attack queries).
Benign: ``distinct`` (the data's clips in order, ``--benign-clients`` clients),
``windows{s}`` (overlapping 16-frame windows at stride ``s`` of long toy videos made
here), ``reencode`` (each clip encoded as H.264 at several CRFs and decoded as the
gateway does). Writes ``querydetect.{json,md}``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from service.gateway.querywatch import ClientHistory, FingerprintSpec, fingerprint
from service.options import ExperimentConfig, opt, out_opt, progress_opt
from service.research.robustness.blackbox import Answer, BlackBoxAttack, RaySAttack, SquareAttack

__all__ = ["QueryDetectConfig", "Rule", "first_detection", "run"]

#: (match, hits, recent) rules of the threshold table; frames = 3/4 of T throughout
RULES = ((10, 6, 10), (14, 6, 10), (18, 6, 10), (20, 6, 10), (14, 3, 10), (14, 8, 10),
         (10, 4, 20), (14, 4, 20), (18, 4, 20))  # fmt: skip
CRFS = (18, 23, 28, 33, 38)
STRIDES = (1, 2, 4, 8)


@dataclass
class QueryDetectConfig(ExperimentConfig):
    """Settings of ``shuffleguard analyze querydetect``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "analyze", "querydetect")
    ORDER: ClassVar[tuple[str, ...]] = ("data",)

    data: str = opt(help="toy-data directory (labels.csv + .npy)", show="always")
    checkpoint: str = opt("model_store/toy_mixed_r3d18.mar", "served archive or checkpoint",
                          show="always")  # fmt: skip
    clips: int = opt(8, "test clips attacked per attack", show="always")
    queries: int = opt(60, "queries per attacked clip (detection comes much earlier)",
                       show="always")  # fmt: skip
    eps: int = opt(4, "L-inf radius of the attacks, pixel levels")
    noise: list[int] = opt([1, 2, 4, 8, 16], "adaptive: noise levels added per query")
    interleave: list[int] = opt([1, 2, 4], "adaptive: benign clips between attack queries")
    benign_clients: int = opt(8, "benign clients the distinct clips are split into")
    only: list[str] = opt([], "run only these attack streams (e.g. square_each; default: all)")
    seed: int = opt(0, "seed of the attacks, shuffles and subsets", show="always")
    step: int = opt(32, "fingerprint quantization step (pixel levels)")
    keep: int = opt(20, "hashes kept per frame")
    history: int = opt(256, "queries held per client")
    cost_queries: int = opt(0, "adaptive noise's cost: Square budget per clip (0: skip)")
    cost_noise: list[int] = opt([0, 8], "noise levels of the cost run")
    cost_defense: bool = opt(False, "cost run against the defended vote (default: defense=false)")
    out: str = out_opt("runs/querydetect")
    no_progress: bool = progress_opt()

    def check(self) -> None:
        if self.clips < 1 or self.queries < 2 or self.benign_clients < 1:
            raise ValueError("--clips >= 1, --queries >= 2 and --benign-clients >= 1")


@dataclass(frozen=True)
class Rule:
    match: int
    hits: int
    recent: int
    frames: int = 12


class Recorder:
    """One client's history, recording the per-frame scores of every query (None for an
    exact re-send), with no decision taken (so every rule reads the same records)."""

    def __init__(self, spec: FingerprintSpec, history: int) -> None:
        self.spec, self.hist = spec, ClientHistory(history, recent=1)
        self.scores: list[np.ndarray | None] = []

    def __call__(self, clip: np.ndarray) -> None:
        digest = hashlib.blake2b(np.ascontiguousarray(clip).data, digest_size=16).digest()
        if self.hist.seen(digest):
            self.scores.append(None)
            return
        prints = fingerprint(clip, self.spec)
        self.scores.append(self.hist.lookup(prints))
        self.hist.add(digest, prints, False)


def near_flags(scores: list[np.ndarray | None], rule: Rule) -> list[bool | None]:
    return [None if s is None else int((s >= rule.match).sum()) >= min(rule.frames, s.size)
            for s in scores]  # fmt: skip


def first_detection(scores: list[np.ndarray | None], rule: Rule) -> int | None:
    """1-based query count at which ``rule`` first detects, or None."""
    recent: list[bool] = []
    for i, near in enumerate(near_flags(scores, rule)):
        if near is None:
            continue
        recent = [*recent, near][-rule.recent :]
        if near and sum(recent) >= rule.hits:
            return i + 1
    return None


def detections(scores: list[np.ndarray | None], rule: Rule) -> int:
    """Detections over a whole stream (the history restarts after each, as the gateway
    clears it; approximated here by restarting the recent window)."""
    recent: list[bool] = []
    count = 0
    for near in near_flags(scores, rule):
        if near is None:
            continue
        recent = [*recent, near][-rule.recent :]
        if near and sum(recent) >= rule.hits:
            count, recent = count + 1, []
    return count


class LocalService:
    """The gateway's answers, in-process: ``research`` gives vote shares (or with
    ``defense=False`` the softmax confidence), production the label only."""

    def __init__(self, model: Any, meta: dict[str, Any], *, research: bool, defense: bool,
                 seed: int) -> None:  # fmt: skip
        self.model, self.research, self.defense = model, research, defense
        preset = meta["preset"]
        self.h1, self.h2, self.n = int(preset["h1"]), int(preset["h2"]), int(preset["ensemble"])
        self.rng = np.random.default_rng(seed)

    def __call__(self, clip: np.ndarray) -> Answer:
        import torch

        from service.core.shuffle import ensemble_indices
        from service.core.vote import softmax, vote
        from service.research.experiments.common import to_float

        t = clip.shape[0]
        if not self.defense:
            with torch.no_grad():
                logits = self.model(to_float(torch.from_numpy(clip[None]))).numpy()[0]
            label = int(logits.argmax())
            conf = float(softmax(logits.astype(np.float64))[label])
            return Answer(label, None, conf if self.research else None)
        rows = ensemble_indices(t, self.h1, self.h2, self.n, int(self.rng.integers(2**31)))
        batch = torch.from_numpy(np.take(clip, rows[1:], axis=0))
        with torch.no_grad():
            logits = self.model(to_float(batch)).numpy()
        outcome = vote(logits)
        if not self.research:
            return Answer(outcome.label)
        shares = {k: c / outcome.cast for k, c in enumerate(outcome.counts.tolist()) if c}
        return Answer(outcome.label, shares, outcome.share)


def capture(attack: BlackBoxAttack, service: Callable[[np.ndarray], Answer], clip: np.ndarray,
            label: int, budget: int, send: Callable[[np.ndarray], np.ndarray],
            record: Recorder, benign: Iterator[np.ndarray] | None = None,
            every: int = 0) -> dict[str, Any]:  # fmt: skip
    """Run ``attack`` on ``clip``; each query is ``send(clip)`` (the adaptive attacker's
    change), recorded, answered; ``every`` > 0 sends that many benign clips before each."""

    def oracle(x: np.ndarray) -> Answer:
        for _ in range(every):
            record(next(benign))  # type: ignore[arg-type]
        sent = send(x)
        record(sent)
        return service(sent)

    res = attack(oracle, clip, label, budget)
    return {"success": res.success, "queries": res.queries, "skipped": res.skipped}


# --------------------------------------------------------------------------- #
# Benign streams
# --------------------------------------------------------------------------- #
def reencoded(clip: np.ndarray, crf: int, meta: dict[str, Any]) -> np.ndarray:
    """``clip`` as H.264 (libx264 at ``crf``, yuv420p) decoded as the gateway decodes."""
    from service.decoder.decode import decode_clip

    return decode_clip(h264(clip, crf), clip_len=meta["clip_len"], frame_interval=1,
                       crop_size=meta["crop_size"], resize=meta["crop_size"]).frames  # fmt: skip


def h264(clip: np.ndarray, crf: int) -> bytes:
    """``clip`` encoded as an mp4 (libx264 at ``crf``, yuv420p, 8 fps)."""
    import io

    from service.research.toy.data import write_mp4

    buf = io.BytesIO()
    write_mp4(clip, buf, crf=crf, codec="libx264")
    return buf.getvalue()


def long_videos(count: int, frames: int, seed: int, root: Path) -> list[np.ndarray]:
    """``count`` toy dataset-1 videos of ``frames`` frames (the default model's data recipe)."""
    from service.cli import main

    out = root / "long"
    if not (out / "labels.csv").is_file():
        main(["toy-data", "--dataset", "1", "--spatial-fraction", "0.8", "--count", str(count),
              "--seed", str(seed), "--frames", str(frames), "--size", "32", "--contrast", "0.4",
              "--out", str(out)])  # fmt: skip
    return [np.load(p) for p in sorted(out.glob("*.npy"))[:count]]


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #
def _attack_streams(
    config: QueryDetectConfig,
    model: Any,
    meta: dict[str, Any],
    clips: list[tuple[np.ndarray, int]],
    benign: list[np.ndarray],
    spec: FingerprintSpec,
    bar: Any,
) -> dict[str, list[dict[str, Any]]]:
    """name -> one record per attacked clip: the attack's outcome and its query scores."""
    from service.research.experiments.common import derive_seed

    def noisy(n: int, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: np.clip(x.astype(np.int16) + rng.integers(-n, n + 1, x.shape),
                                 0, 255).astype(np.uint8)  # fmt: skip

    plans: list[tuple[str, str, bool, bool, int, int]] = [  # name, attack, research, defense,
        ("square", "square", True, True, 0, 0),  # noise, interleave
        ("square_undefended", "square", True, False, 0, 0),
        ("square_window", "window", True, True, 0, 0),
        ("rays", "rays", False, True, 0, 0),
        *[(f"square_noise{n}", "square", True, True, n, 0) for n in config.noise],
        *[(f"square_interleave{m}", "square", True, True, 0, m) for m in config.interleave],
        ("square_each", "each", True, True, 0, 0),
    ]
    out: dict[str, list[dict[str, Any]]] = {}
    for p, (name, kind, research, defense, n, every) in enumerate(plans):
        if config.only and name not in config.only:
            continue
        out[name] = []
        for i, (clip, label) in enumerate(clips):
            seed = derive_seed(config.seed, p, i)
            service = LocalService(model, meta, research=research, defense=defense, seed=seed)
            attack: BlackBoxAttack = (
                RaySAttack(eps=config.eps, seed=seed) if kind == "rays" else
                SquareAttack(eps=config.eps, seed=seed,
                             frames=kind if kind in ("window", "each") else "all")  # type: ignore[arg-type]
            )  # fmt: skip
            rec = Recorder(spec, config.history)
            send = noisy(n, np.random.default_rng(seed)) if n else (lambda x: x)
            stream = iter(benign[(i * 97) % len(benign) :] + benign)
            res = capture(attack, service, clip, label, config.queries, send, rec,
                          stream, every)  # fmt: skip
            out[name].append({**res, "scores": rec.scores})
            bar.update(1)
    return out


def _benign_streams(config: QueryDetectConfig, meta: dict[str, Any], benign: list[np.ndarray],
                    spec: FingerprintSpec) -> dict[str, list[list[np.ndarray | None]]]:  # fmt: skip
    """name -> one score stream per benign client."""
    out: dict[str, list[list[np.ndarray | None]]] = {}
    per = -(-len(benign) // config.benign_clients)
    out["distinct"] = [_record(spec, config.history, benign[k : k + per])
                       for k in range(0, len(benign), per)]  # fmt: skip
    out["retries3"] = [_record(spec, config.history, [c for c in benign[k : k + per // 3]
                                                      for _ in range(3)])
                       for k in range(0, len(benign), per)]  # fmt: skip
    videos = long_videos(8, 128, config.seed, Path(config.out))
    t = int(meta["clip_len"])
    for s in STRIDES:
        out[f"windows{s}"] = [_record(spec, config.history,
                                      [v[a : a + t] for a in range(0, v.shape[0] - t + 1, s)])
                              for v in videos]  # fmt: skip
    out["reencode"] = [_record(spec, config.history, [c, *[reencoded(c, q, meta) for q in CRFS]])
                       for c in benign[:32]]  # fmt: skip
    return out


def _record(spec: FingerprintSpec, history: int, clips: list[np.ndarray]) -> list[Any]:
    rec = Recorder(spec, history)
    for c in clips:
        rec(c)
    return rec.scores


def _attack_row(records: list[dict[str, Any]], rule: Rule) -> dict[str, Any]:
    from service.core.stats import percentile, wilson

    firsts = [first_detection(r["scores"], rule) for r in records if not r["skipped"]]
    hit = [f for f in firsts if f is not None]
    lo, hi = wilson(len(hit), len(firsts))
    return {"attacked": len(firsts), "detected": len(hit), "ci95": [lo, hi],
            "queries_median": percentile(hit, 50) if hit else None,
            "queries_max": max(hit, default=None)}  # fmt: skip


def _benign_row(streams: list[list[Any]], rule: Rule) -> dict[str, Any]:
    from service.core.stats import wilson

    queries = sum(sum(s is not None for s in st) for st in streams)
    flagged = sum(detections(st, rule) for st in streams)
    clients = sum(detections(st, rule) > 0 for st in streams)
    lo, hi = wilson(flagged, queries)
    near = sum(sum(bool(f) for f in near_flags(st, rule)) for st in streams)
    return {"queries": queries, "detections": flagged, "per_query_ci95": [lo, hi],
            "near_duplicates": near,
            "clients": len(streams), "clients_flagged": clients}  # fmt: skip


def fingerprint_cost(clips: list[np.ndarray], spec: FingerprintSpec) -> dict[str, float]:
    """ms per clip: fingerprinting vs decoding the clip's .npy upload and its mp4 (crf 23),
    at the data's size and upscaled 7x (32 -> 224, pixel repeat: a served model's size)."""
    timings: dict[str, float] = {"history_mb": history_memory(clips, spec)}
    for tag, scale in (("", 1), ("_224", 7)):
        big = [c.repeat(scale, axis=1).repeat(scale, axis=2) for c in clips[:16]]
        for key, ms in _cost_at(big, spec).items():
            timings[key + tag] = ms
    return timings


def history_memory(clips: list[np.ndarray], spec: FingerprintSpec, n: int = 256) -> float:
    """MB (``tracemalloc``) one client's history holds after ``n`` distinct clips."""
    import tracemalloc

    from service.gateway.querywatch import QueryWatch

    watch = QueryWatch(spec=spec, history=n)
    tracemalloc.start()
    try:
        for clip in clips[:n]:
            watch.observe("client", clip)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return held / 1e6


def _cost_at(clips: list[np.ndarray], spec: FingerprintSpec) -> dict[str, float]:
    import io

    from service.decoder.decode import decode_clip

    def npy(c: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, c)
        return buf.getvalue()

    def per_clip(fn: Callable[[Any], Any], items: list[Any]) -> float:
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        return (time.perf_counter() - t0) * 1e3 / len(items)

    t, s = clips[0].shape[0], clips[0].shape[1]
    decode = lambda u: decode_clip(u, clip_len=t, frame_interval=1, crop_size=s)  # noqa: E731
    return {
        "fingerprint_ms": per_clip(lambda c: fingerprint(c, spec), clips),
        "decode_npy_ms": per_clip(decode, [npy(c) for c in clips]),
        "decode_mp4_ms": per_clip(decode, [h264(c, 23) for c in clips]),
    }


def _noisy_oracle(local: LocalService, rng: np.random.Generator, n: int, label: int,
                  best: list[float]) -> Callable[[np.ndarray], Answer]:  # fmt: skip
    """``local`` answering each query plus noise in ``[-n, n]``; ``best[0]``: lowest margin."""
    from service.research.robustness.blackbox import margin

    def oracle(x: np.ndarray) -> Answer:
        if n:
            x = np.clip(x.astype(np.int16) + rng.integers(-n, n + 1, x.shape), 0, 255)
        answer = local(x.astype(np.uint8))
        best[0] = min(best[0], margin(answer, label))
        return answer

    return oracle


def noise_cost(config: QueryDetectConfig, model: Any, meta: dict[str, Any],
               clips: list[tuple[np.ndarray, int]]) -> dict[str, Any]:  # fmt: skip
    """Square with ``n`` noise per query sent, ``cost_queries`` each: success (Wilson 95%),
    queries, and the best (lowest) margin of the true label the attacker saw."""
    from service.core.stats import wilson
    from service.research.experiments.common import derive_seed
    from service.research.robustness.blackbox import margin

    out: dict[str, Any] = {}
    for n in config.cost_noise:
        rows = []
        for i, (clip, label) in enumerate(clips):
            seed = derive_seed(config.seed, 99, i)
            local = LocalService(model, meta, research=True, defense=config.cost_defense,
                                 seed=seed)  # fmt: skip
            rng = np.random.default_rng(seed)
            best = [np.inf]
            oracle = _noisy_oracle(local, rng, n, label, best)
            res = SquareAttack(eps=config.eps, seed=seed)(oracle, clip, label, config.cost_queries)
            if not res.skipped:
                clean = LocalService(model, meta, research=True, defense=config.cost_defense,
                                     seed=seed)(clip)  # fmt: skip
                rows.append((res.success, res.queries, best[0], margin(clean, label)))
        wins = sum(r[0] for r in rows)
        out[str(n)] = {"attacked": len(rows), "successes": wins,
                       "ci95": list(wilson(wins, len(rows))),
                       "queries_mean": float(np.mean([r[1] for r in rows])),
                       "best_margin_mean": float(np.mean([r[2] for r in rows])),
                       "clean_margin_mean": float(np.mean([r[3] for r in rows]))}  # fmt: skip
    return out


def run(config: QueryDetectConfig) -> int:
    import csv

    import torch

    from service.research.experiments.common import load_model, progress_bar
    from service.research.experiments.report import write_json

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    root = Path(config.data)
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r["split"] == "test"]
    step = max(1, len(test) // config.clips)
    clips = [(np.load(root / r["file"]), int(r["label_index"])) for r in test[::step]]
    clips = clips[: config.clips]
    benign = [np.load(root / r["file"]) for r in rows if r["split"] == "train"]
    spec = FingerprintSpec(step=config.step, keep=config.keep, key=config.seed)
    model, meta = load_model(config.checkpoint)
    meta = {**meta, "preset": dict(meta["preset"])}
    n_plans = len(config.only) or 5 + len(config.noise) + len(config.interleave)
    bar = progress_bar(range(n_plans * len(clips)), desc="attacks", unit="clip",
                       enabled=not config.no_progress)  # fmt: skip
    attacks = _attack_streams(config, model, meta, clips, benign, spec, bar)
    bar.close()
    benign_streams = _benign_streams(config, meta, benign, spec)
    rules = [Rule(*r) for r in RULES]
    results: dict[str, Any] = {
        "command": config.command(), "spec": spec.__dict__, "history": config.history,
        "rules": [r.__dict__ for r in rules],
        "attacks": {name: {"outcomes": [{k: r[k] for k in ("success", "queries", "skipped")}
                                        for r in recs],
                           "by_rule": [_attack_row(recs, rule) for rule in rules]}
                    for name, recs in attacks.items()},
        "benign": {name: [_benign_row(st, rule) for rule in rules]
                   for name, st in benign_streams.items()},
        "cost": fingerprint_cost(benign[:256], spec),
    }  # fmt: skip
    if config.cost_queries:
        results["noise_cost"] = noise_cost(config, model, meta, clips)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "querydetect.json", results)
    (out / "querydetect.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out / 'querydetect.json'} and {out / 'querydetect.md'}")
    return 0


def markdown(results: dict[str, Any]) -> str:
    from service.research.experiments.report import markdown_table, pct, produced_by

    rules = [Rule(**r) for r in results["rules"]]
    head = ["stream"] + [f"m{r.match} h{r.hits}/{r.recent}" for r in rules]
    arows = []
    for name, a in results["attacks"].items():
        cells = []
        for row in a["by_rule"]:
            lo, hi = row["ci95"]
            med = "-" if row["queries_median"] is None else str(row["queries_median"])
            cells.append(f"{row['detected']}/{row['attacked']} [{pct(lo, 0)}, {pct(hi, 0)}] "
                         f"q {med}")  # fmt: skip
        arows.append([name, *cells])
    brows = []
    for name, rows in results["benign"].items():
        cells = [f"{b['detections']}/{b['queries']} [{pct(b['per_query_ci95'][0], 1)}, "
                 f"{pct(b['per_query_ci95'][1], 1)}] c {b['clients_flagged']}/{b['clients']} "
                 f"nd {b['near_duplicates']}"
                 for b in rows]  # fmt: skip
        brows.append([name, *cells])
    cost = results["cost"]
    lines = [
        f"Cost per clip{label}: fingerprint {cost['fingerprint_ms' + tag]:.2f} ms, decode .npy "
        f"{cost['decode_npy_ms' + tag]:.2f} ms (ratio "
        f"{cost['fingerprint_ms' + tag] / cost['decode_npy_ms' + tag]:.2f}), decode mp4 "
        f"{cost['decode_mp4_ms' + tag]:.2f} ms (ratio "
        f"{cost['fingerprint_ms' + tag] / cost['decode_mp4_ms' + tag]:.2f})."
        for tag, label in (("", ""), ("_224", " at 224 x 224"))
        if "fingerprint_ms" + tag in cost
    ]  # fmt: skip
    return "\n".join([
        "# Query-attack detection", "", *produced_by(results["command"]),
        "Attacks: detected clips / attacked [Wilson 95%], q = median queries to detection.",
        "", markdown_table(head, arows), "",
        "Benign: detections / queries [Wilson 95% per query], c = clients flagged, "
        "nd = near-duplicate queries.", "",
        markdown_table(head, brows), "",
        *lines, "",
        f"One client's history after 256 distinct clips: {cost['history_mb']:.2f} MB.", "",
        *_noise_lines(results.get("noise_cost", {})),
    ])  # fmt: skip


def _noise_lines(cost: dict[str, Any]) -> list[str]:
    from service.research.experiments.report import pct

    return [f"Noise {n}: Square fooled {c['successes']}/{c['attacked']} [{pct(c['ci95'][0], 0)}, "
            f"{pct(c['ci95'][1], 0)}], queries mean {c['queries_mean']:.0f}, best margin mean "
            f"{c['best_margin_mean']:.3f} (clean {c['clean_margin_mean']:.3f})."
            for n, c in cost.items()]  # fmt: skip
