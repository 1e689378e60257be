"""The paper's I3D rows on real clips, clip by clip (``shuffleguard analyze i3d``).

Built for a slow model on a CPU: every (phase, clip) is one record appended to
``<out>/records.jsonl`` as soon as it is done, a rerun skips what is there, and the
phases run in ``--phases`` order over all clips before the next phase starts, so a run
stopped at any point leaves complete columns for the phases it finished and a labelled
partial one for the phase it was in. Input: ``shuffleguard real-set`` (a toy-data
directory whose label is the undefended model's own top-1, and the model at its size).

Phases (the defense is the shuffle vote of the checkpoint's preset, each vote drawn
fresh from a generator of (seed, clip, phase), as the gateway would draw it):

* ``clean``: the defended vote's agreement with the label (the paper's clean column
  with the shuffle defense), the undefended model on uniformized clips (Table 1, at
  ``--uniform-positions``) and on fully permuted clips (Fig. 2's chunk size ``N = T``,
  ``--permute-draws`` draws);
* ``ifgsm``: I-FGSM at ``--eps`` (the paper's: 30 steps of eps/30) on the undefended
  model, scored undefended and, as a transfer attack, on the defense;
* ``eot_*``: a saturated adaptive variant of the attack registry
  (:data:`service.research.robustness.registry.ATTACKS`, its options: 100 steps, 10 draws,
  step 2.5 eps / steps, patience 3) against the shuffle row, with the iterates after
  ``--record-at`` steps scored on the defense (the trajectory: more steps must not
  leave the defense better off);
* ``ofa``: the one frame attack at ``--ofa-eps`` on frame ``--ofa-frame`` (one
  position, not the best of all ``T``: the CPU budget), scored on both.

The worst case over the EOT variants is taken per clip over the clips every variant
finished. Writes ``i3d.{csv,json,md,png}`` with Wilson intervals.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.options import opt
from service.research.experiments import common, report
from service.research.experiments.adaptive import worst_case
from service.research.experiments.config import AnalysisConfig
from service.research.robustness.registry import ATTACKS, adaptive_attacks

__all__ = ["I3DEvalConfig", "run", "summarize"]

PHASES = ("clean", "ifgsm", "ofa", *adaptive_attacks())
#: seed tag of the defense's scoring draws (apart from every attack's draws)
VOTE_TAG = 9101


@dataclass
class I3DEvalConfig(AnalysisConfig, analysis="i3d"):
    """Settings of ``shuffleguard analyze i3d`` (see the module docstring)."""

    split: str = opt("all", "clips to use", choices=("test", "val", "train", "all"))
    phases: list[str] = opt(
        ["clean", "ifgsm", "eot_vote", "ofa", "eot_cw"], "phases, in order", choices=PHASES,
        show="always",
    )  # fmt: skip
    eps: float = opt(4.0, "L-inf radius of I-FGSM and EOT, in 1/255", show="always")
    ofa_eps: float = opt(64.0, "L-inf radius of the one frame attack, in 1/255", show="always")
    ofa_frame: int = opt(16, "the frame the one frame attack perturbs", show="always")
    uniform_positions: list[int] = opt([0, 8, 16, 24], "frames of the uniformized clips")
    permute_draws: int = opt(1, "full-permutation draws per clip")
    record_at: list[int] = opt([5, 10, 20, 30, 50, 100], "EOT trajectory steps")
    eot_steps: int | None = opt(None, "EOT steps (default: the variant's, 100)", show="always")
    eot_draws: int | None = opt(
        None, "EOT draws per step (default: the variant's, 10; fewer: a cheaper attacker, its"
        " records named <variant>-s<steps>-d<draws>)", show="always",
    )  # fmt: skip
    h1: int | None = opt(None, "preset (default: the model's)")
    h2: int | None = opt(None, "preset (default: the model's)")
    ensemble: int | None = opt(None, "preset (default: the model's)")
    first: int | None = opt(
        None, "only the first N clips of the run order (every source's first window, then"
        " every source's second, ...; default all)", show="always",
    )  # fmt: skip
    start: int = opt(0, "skip the first N clips of the run order (a second process's share)")
    seed: int = opt(0, "seed of the attacks' and the defense's draws", show="always")
    report_only: bool = opt(False, "compute nothing: the report from the records in --out")
    eot_batch: int = opt(10, "most clip copies per forward pass (memory bound)")

    def check(self) -> None:
        super().check()
        if self.eps <= 0 or self.ofa_eps <= 0 or self.permute_draws < 1:
            raise ValueError("--eps, --ofa-eps must be > 0 and --permute-draws >= 1")
        if self.first is not None and self.first < 1 or self.start < 0:
            raise ValueError("--first must be >= 1 and --start >= 0")


class _Clips:
    """The model, the clips, the preset and the records file."""

    def __init__(self, cfg: I3DEvalConfig) -> None:
        from service.research.experiments.evaluate import preset_for_checkpoint
        from service.research.robustness.registry import RowContext
        from service.research.robustness.smoothing import ShuffleVote

        self.cfg = cfg
        self.model, self.ckpt, self.subset, self.x = common.load_inputs(cfg)
        self.preset, self.preset_source = preset_for_checkpoint(
            cfg.checkpoint, cfg.h1, cfg.h2, cfg.ensemble
        )
        self.defense = ShuffleVote(self.model, self.preset)
        self.ctx = RowContext(self.model, len(self.ckpt["labels"]), self.preset)
        self.path = Path(cfg.out) / "records.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = {(r["phase"], r["clip"]) for r in read_records(self.path)}

    def voted(self, adv: torch.Tensor, cid: int, tag: int) -> bool:
        gen = common.generator(self.cfg.seed, cid, VOTE_TAG, tag)
        return int(self.defense.vote(adv, gen)[0][0]) == int(self.subset.labels[self.pos[cid]])

    @property
    def pos(self) -> dict[int, int]:
        return {int(c): i for i, c in enumerate(self.subset.index)}

    def plain(self, adv: torch.Tensor, i: int) -> bool:
        with torch.no_grad():
            return int(self.model(adv).argmax(1)[0]) == int(self.subset.labels[i])

    def save(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``records.jsonl`` (none when absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clean(c: _Clips, i: int, cid: int) -> dict[str, Any]:
    from service.core.transforms import chunk_shuffle_indices, uniformize

    x, T = c.x[i : i + 1], c.x.shape[2]
    uni = [c.plain(uniformize(x, p % T, 2), i) for p in c.cfg.uniform_positions]
    perm = []
    for d in range(c.cfg.permute_draws):
        gen = common.generator(c.cfg.seed, cid, VOTE_TAG, 2, d)
        idx = chunk_shuffle_indices(T, T, 1, generator=gen)
        perm.append(c.plain(common.gather_time(x, idx), i))
    return {"undefended": c.plain(x, i), "defended": c.voted(x, cid, 1),
            "uniformized": uni, "permuted": perm}  # fmt: skip


def phase_key(cfg: I3DEvalConfig, phase: str) -> str:
    """The records' name of ``phase``: an EOT variant run with other steps or draws than
    its registry entry's is ``<variant>-s<steps>-d<draws>``."""
    if not phase.startswith("eot") or (cfg.eot_steps, cfg.eot_draws) == (None, None):
        return phase
    eot = ATTACKS[phase].eot
    return f"{phase}-s{cfg.eot_steps or eot['steps']}-d{cfg.eot_draws or eot['draws']}"


def _trajectory(c: _Clips, eot: Any, cid: int) -> dict[str, bool]:
    """The defense's vote on the iterates after ``record_at`` steps; an iterate equal to
    the previous one (the clip had left the batch: patience) keeps its vote."""
    out: dict[str, bool] = {}
    last: tuple[torch.Tensor, bool] | None = None
    for s, it in sorted(eot.trajectory.items()):
        if last is None or not torch.equal(last[0], it):
            last = (it, c.voted(it, cid, 100 + s))
        out[str(s)] = last[1]
    return out


def _attack(c: _Clips, phase: str, i: int, cid: int) -> dict[str, Any]:
    from service.research.robustness.attacks import IFGSM, OneFrameAttack
    from service.research.robustness.registry import Budget, eot_for_row

    cfg, x, y = c.cfg, c.x[i : i + 1], c.subset.labels[i : i + 1]
    extra: dict[str, Any] = {}
    if phase == "ifgsm":
        adv = IFGSM(c.model, eps=cfg.eps / 255, steps=30)(x, y)
    elif phase == "ofa":
        attack = OneFrameAttack(c.model, eps=cfg.ofa_eps / 255, steps=30, frame=cfg.ofa_frame)
        adv = attack(x, y)
    else:
        seed = common.derive_seed(cfg.seed, ATTACKS[phase].seed_id, cid)
        over = {k: v for k, v in (("steps", cfg.eot_steps), ("draws", cfg.eot_draws)) if v}
        eot = eot_for_row(
            "shuffle", c.model, c.ctx, Budget(eps=cfg.eps / 255), batch_size=cfg.eot_batch,
            attack=phase, seed=seed, record_at=tuple(cfg.record_at), progress=not cfg.no_progress,
            **over,
        )  # fmt: skip
        adv = eot(x, y)
        extra["trajectory"] = _trajectory(c, eot, cid)
        extra["settings"] = eot.describe()
    delta = (adv - x).flatten()
    return {"undefended": c.plain(adv, i), "defended": c.voted(adv, cid, 3),
            "linf_255": float(delta.abs().max()) * 255, "l2": float(delta.norm()),
            **extra}  # fmt: skip


def run_i3d(cfg: I3DEvalConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    c = _Clips(cfg)
    names = c.ckpt["labels"]
    chosen = _order(cfg, c.subset.index)[: cfg.first]
    for phase in [] if cfg.report_only else cfg.phases:
        key = phase_key(cfg, phase)
        todo = [(i, cid) for i, cid in chosen[cfg.start :] if (key, cid) not in c.done]
        for i, cid in common.progress_bar(todo, desc=key, enabled=not cfg.no_progress):
            s = time.perf_counter()
            body = _clean(c, i, cid) if phase == "clean" else _attack(c, phase, i, cid)
            c.save({"phase": key, "clip": cid, "label": names[int(c.subset.labels[i])],
                    "seconds": time.perf_counter() - s, **body})  # fmt: skip
    ids = {cid for _, cid in chosen}
    records = [r for r in read_records(c.path) if r["clip"] in ids]
    return report.results(
        cfg, t0, c.ckpt, len(chosen), preset=c.preset.to_dict(),
        preset_source=c.preset_source, size=list(c.x.shape[2:]), **summarize(records, cfg),
    )  # fmt: skip


def _order(cfg: I3DEvalConfig, index: list[int]) -> list[tuple[int, int]]:
    """``(position, clip id)`` in a run order spread over the sources: the first window
    of every source, then the second, ... (``clips.csv``'s ``window``; else as given)."""
    import csv

    path = Path(cfg.data) / "clips.csv"
    pairs = [(i, int(cid)) for i, cid in enumerate(index)]
    if not path.exists():
        return pairs
    with path.open(newline="") as f:
        windows = [row["window"].rsplit("_", 1)[0] for row in csv.DictReader(f)]
    rank, seen = {}, dict[str, int]()
    for cid, source in enumerate(windows):
        rank[cid] = (seen.get(source, 0), cid)
        seen[source] = seen.get(source, 0) + 1
    return sorted(pairs, key=lambda p: rank.get(p[1], (0, p[1])))


def _rate(name: str, correct: list[bool], what: str) -> dict[str, Any]:
    from service.core.stats import wilson

    k, n = sum(correct), len(correct)
    lo, hi = wilson(k, n)
    return {"row": name, "what": what, "correct": k, "n": n,
            "accuracy": k / n if n else float("nan"), "lo": lo, "hi": hi}  # fmt: skip


def summarize(records: list[dict[str, Any]], cfg: I3DEvalConfig) -> dict[str, Any]:
    """Rows (Wilson intervals) and the EOT trajectories from the records."""
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["phase"], {})[r["clip"]] = r
    rows, clean = [], list(by.get("clean", {}).values())
    if clean:
        rows += [
            _rate("clean, defended vote", [r["defended"] for r in clean], "agrees with label"),
            _rate("uniformized (Table 1)", [u for r in clean for u in r["uniformized"]],
                  f"undefended, frames {cfg.uniform_positions} (clip x frame)"),
            _rate("permuted (Fig. 2, N = T)", [p for r in clean for p in r["permuted"]],
                  "undefended, full frame permutation"),
        ]  # fmt: skip
    eot_keys = sorted({r["phase"] for r in records if r["phase"].startswith("eot")})
    for phase in ("ifgsm", "ofa", *eot_keys):
        got = list(by.get(phase, {}).values())
        if got:
            rows += [
                _rate(f"{phase}, undefended", [r["undefended"] for r in got], "model"),
                _rate(f"{phase}, shuffle", [r["defended"] for r in got], "defended vote"),
            ]
    eots = eot_keys
    common_clips = sorted(set.intersection(*[set(by[p]) for p in eots])) if eots else []
    if common_clips:
        worst = worst_case([[by[p][k]["defended"] for k in common_clips] for p in eots])
        rows.append(_rate(f"EOT worst case ({', '.join(eots)}), shuffle", worst, "defended vote"))
    verdict = _audit_verdict(by, eots)
    if verdict is not None:
        rows.append(verdict.pop("row"))
    curves = {
        p: {s: _rate(p, [r["trajectory"][s] for r in by[p].values()], f"step {s}")
            for s in _common_steps(by[p].values())}
        for p in eots
    }  # fmt: skip
    return {"rows": rows, "trajectories": curves, "eot_clips": common_clips, "verdict": verdict}


def _common_steps(records: Any) -> list[str]:
    """The trajectory steps every record has (runs resumed with another ``--record-at``
    recorded different steps), in step order."""
    steps = set.intersection(*[set(r["trajectory"]) for r in records])
    return sorted(steps, key=int)


def _audit_verdict(
    by: dict[str, dict[int, dict[str, Any]]], eots: list[str]
) -> dict[str, Any] | None:
    """``audit``'s verdict rule on these records: the clips every attack phase covered,
    each defended only if the vote is right against the transfer I-FGSM and every EOT
    variant run (the audit's per-clip worst case); None until those phases exist."""
    from service.research.experiments.audit.config import AuditConfig
    from service.research.experiments.audit.verdict import verdict

    phases = ["clean", "ifgsm", *eots]
    if not eots or any(p not in by for p in phases):
        return None
    clips = sorted(set.intersection(*[set(by[p]) for p in phases]))
    clean = [by["clean"][k] for k in clips]
    worst = worst_case([[by[p][k]["defended"] for k in clips] for p in ["ifgsm", *eots]])
    figs = {
        "clean/none": [r["undefended"] for r in clean],
        "clean/shuffle": [r["defended"] for r in clean],
        "permuted/none": [p for r in clean for p in r["permuted"]],
        "uniformized/none": [u for r in clean for u in r["uniformized"]],
        "ifgsm/none": [by["ifgsm"][k]["undefended"] for k in clips],
        "worst/shuffle": worst,
    }
    fig = {}
    for key, correct in figs.items():
        r = _rate(key, correct, "")
        fig[key] = {"accuracy": r["accuracy"], "low": r["lo"], "high": r["hi"]}
    out = verdict(fig, AuditConfig.clean_ratio, "DeepMind's I3D on these clips")
    row = _rate(f"worst case (ifgsm transfer, {', '.join(eots)}), shuffle", worst, "defended vote")
    row["what"] = f"defended vote; audit verdict: {out['code']}"
    return {"row": row, "code": out["code"], "sentence": out["sentence"], "clips": len(clips)}


FIELDS = [("row", ""), ("what", ""), ("correct", ""), ("n", ""), ("accuracy", ".4f"),
          ("lo", ".4f"), ("hi", ".4f")]  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    from service.commands.real_set import LABEL_NOTE

    t, h, w = res["size"]
    lines = [
        f"# The paper's I3D rows on real clips ({t}x{h}x{w}, {res['clips']} clips)", "",
        f"{LABEL_NOTE[0].upper() + LABEL_NOTE[1:]}.", "",
        f"Preset {res['preset']} ({res['preset_source']}).", "",
        "| row | what | correct / n | % | Wilson 95% |", "|---|---|---:|---:|---|",
    ]  # fmt: skip
    for r in res["rows"]:
        lines.append(
            f"| {r['row']} | {r['what']} | {r['correct']}/{r['n']} | {report.pct(r['accuracy'])}"
            f" | {report.pct(r['lo'])}-{report.pct(r['hi'])} |"
        )
    for phase, curve in res["trajectories"].items():
        points = ", ".join(f"{s}: {v['correct']}/{v['n']}" for s, v in curve.items())
        lines += ["", f"Trajectory of {phase} (defended right after s steps): {points}"]
    if res.get("verdict"):
        v = res["verdict"]
        lines += ["", f"`audit`'s verdict rule on the {v['clips']} clips every attack covered:"
                  f" **{v['code']}**. {v['sentence']}"]  # fmt: skip
    return "\n".join([*lines, "", *report.produced_by(res["command"])]) + "\n"


def plot(res: dict[str, Any], path: Any) -> None:
    fig, ax = report.setup_figure()
    for phase, curve in res["trajectories"].items():
        steps = [int(s) for s in curve]
        ax.plot(steps, [100 * v["accuracy"] for v in curve.values()], marker="o", label=phase)
    ax.set_xscale("log")
    ax.set_xlabel("EOT steps")
    ax.set_ylabel("defended agreement (%)")
    if res["trajectories"]:
        ax.legend()
    report.save_figure(fig, path)


def _summary(res: dict[str, Any]) -> list[str]:
    return [f"{r['row']}: {r['correct']}/{r['n']}" for r in res["rows"]]


def run(args: I3DEvalConfig) -> int:
    return report.run_analysis(
        args, run_i3d, markdown=markdown, plot=plot, summary=_summary, fields=FIELDS
    )
