"""Saturated adaptive evaluation of the shuffle defense, with sanity checks that can fail.

``shuffleguard analyze adaptive`` attacks the clips with every adaptive variant of the
attack registry it is given (:data:`service.research.robustness.registry.ATTACKS` entries with
``adaptive``: the same :class:`~service.research.robustness.attacks.EOT` with other options) and
scores the defense *per clip against the worst variant* (the defaults mix the margin
losses with cross-entropy, which reaches clips where a CW margin stalls on a dead-end
runner-up class; see the registry): a clip counts as defended only if the vote, drawn
fresh as the gateway would draw it (an independent generator per clip and attack), is
right for every variant and for the paper's EOT. Besides that figure it measures:

* the paper's EOT (entry ``eot``: cross-entropy, 30 steps of eps/30, 10 draws), the
  figure before this analysis existed;
* curves of the defended accuracy against the steps (draws fixed) and against the
  draws per step (steps fixed) of ``--curve-attack``, with Wilson intervals;
* the transfer attacks: I-FGSM (paper budget) and each variant crafted on the
  undefended model, scored on the defense;
* the saturated perturbations' static share ``||mean_t d||^2 / ||d||^2`` (the mean
  over time broadcast to every frame, so the share lies in [0, 1]) and the defense
  scored on their static and dynamic parts separately;
* with ``--flag-variants`` (flag-aware entries such as ``eot_flag``, ``eot_flag_agree``,
  which also join the worst case): per attack, the gateway's ``suspected_adversarial``
  signals' TPR at ``--max-fpr`` on the clean clips (:func:`flag_rows`) and the clips
  that fool the vote without being flagged.

Sanity checks (Carlini et al., 2019), each of which fails when its rule is broken;
the report is stamped ``SANITY CHECKS FAILED`` when one does:

* ``steps_monotone`` / ``draws_monotone``: no curve point with a larger budget lies
  above the Wilson upper bound of a point with a smaller one;
* ``strongest_variant_beats_paper_eot``: the strongest variant alone is at most the
  paper's EOT (the worst case includes the paper's EOT, so it cannot lose to it);
* ``adaptive_beats_transfer``: the worst case is at most every transfer attack's
  defended accuracy (point estimates: a strong adaptive attack must not lose to a
  transfer);
* ``unbounded_eps``: ``--curve-attack`` at ``--unbounded-eps`` leaves 0 clips right;
* ``eot_not_weaker_than_ifgsm_undefended``: no variant against the undefended model
  leaves more clips right than I-FGSM (paper budget) beyond each other's Wilson
  interval. One-sided: a variant with more steps may beat the paper's 30-step I-FGSM
  (``eot_ce_mean`` leaves 0/32 against its 4/32 on the default model), which says the
  I-FGSM is under-converged, not that EOT's gradients are broken; a weaker one would.
  ``eot_static`` is not held to it: one perturbation for all frames is a smaller threat
  model than I-FGSM's (its figure is listed, not compared).

Adversarial clips are cached in ``<out>/cache`` (resumable; not committed): the
saturated perturbations are those files. Writes ``adaptive.{csv,json,md,png}``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.core.shuffle import count_shuffles
from service.core.stats import wilson
from service.options import opt
from service.research.experiments import common, report
from service.research.experiments.config import AnalysisConfig
from service.research.robustness.attacks import IFGSM
from service.research.robustness.registry import ATTACKS, RowContext, adaptive_attacks, eot_for_row
from service.research.robustness.smoothing import ShuffleVote

__all__ = [
    "AdaptiveConfig",
    "run",
    "run_adaptive",
    "sanity_checks",
    "static_share",
    "worst_case",
]

_ADAPTIVE = tuple(adaptive_attacks())
#: seed tag of the defense's scoring draws (apart from every attack's draws)
SCORE_TAG = 7001


@dataclass
class AdaptiveConfig(AnalysisConfig, analysis="adaptive"):
    """Settings of ``shuffleguard analyze adaptive`` (see the module docstring)."""

    eps: float = opt(4.0, "L-inf radius, in 1/255", show="always")
    variants: list[str] = opt(
        ["eot_vote", "eot_cw", "eot_ce_mean"],
        "adaptive attacks; the figure is the per-clip worst case", choices=_ADAPTIVE,
        show="always",
    )  # fmt: skip
    steps: int = opt(100, "steps of the saturated variants", show="always")
    draws: int = opt(10, "draws per step of the saturated variants", show="always")
    restarts: int = opt(1, "restarts of the saturated variants", show="always")
    curve_attack: str = opt("eot_ce_mean", "attack of the curves", choices=_ADAPTIVE)
    curve_steps: list[int] = opt([10, 30, 100, 300], "steps of the steps curve", show="always")
    curve_draws: list[int] = opt([1, 10, 30], "draws of the draws curve", show="always")
    curve_draws_steps: int = opt(30, "steps of the draws curve", show="always")
    unbounded_eps: float = opt(128.0, "radius of the unbounded check, in 1/255")
    unbounded_steps: int = opt(30, "steps of the unbounded check")
    h1: int | None = opt(None, "preset (default: the model's)")
    h2: int | None = opt(None, "preset (default: the model's)")
    ensemble: int | None = opt(None, "preset (default: the model's)")
    flag_variants: list[str] = opt(
        [], "flag-aware adaptive attacks, also in the worst case; with them the report adds"
        " the suspected_adversarial flag's TPR at --max-fpr", choices=_ADAPTIVE,
    )  # fmt: skip
    max_fpr: float = opt(0.05, "FPR on the clean clips of the flag's operating point")
    seed: int = opt(0, "seed of the attacks' and the defense's draws", show="always")
    eot_batch: int = opt(80, "most clip copies per forward pass (memory bound)", show="never")

    def check(self) -> None:
        super().check()
        if min(self.steps, self.draws, self.restarts, self.curve_draws_steps) < 1:
            raise ValueError("steps, draws, restarts must be >= 1")
        if min([*self.curve_steps, *self.curve_draws, self.unbounded_steps]) < 1:
            raise ValueError("curve steps and draws must be >= 1")
        if not self.variants:
            raise ValueError("need at least one variant")
        if self.eps <= 0 or self.unbounded_eps <= self.eps:
            raise ValueError("need 0 < --eps < --unbounded-eps")
        if not 0.0 <= self.max_fpr <= 1.0:
            raise ValueError("--max-fpr must be in [0, 1]")


@dataclass(frozen=True)
class Cell:
    """One adversarial set: ``attack`` against ``row`` with these settings."""

    attack: str
    row: str
    eps: float
    steps: int
    draws: int
    restarts: int = 1

    @property
    def key(self) -> str:
        """File name part: the settings and a digest of the entry's options (the paper's
        EOT, whose entry has none, keeps the plain name)."""
        spec = ATTACKS.get(self.attack)
        name = (
            f"{self.row}-{self.attack}-e{self.eps:g}-s{self.steps}-d{self.draws}-r{self.restarts}"
        )
        if spec is None or not spec.eot:
            return name
        options = json.dumps(spec.eot, sort_keys=True).encode()
        return f"{name}-{hashlib.sha256(options).hexdigest()[:8]}"


class Runner:
    """The model, the clips and the defense; crafts (cached) and scores cells."""

    def __init__(self, cfg: AdaptiveConfig) -> None:
        from service.research.experiments.evaluate import preset_for_checkpoint

        self.cfg = cfg
        self.model, self.ckpt, self.subset, self.x = common.load_inputs(cfg)
        self.x = self.x.to(cfg.device)
        self.y = self.subset.labels.to(cfg.device)
        self.preset, self.preset_source = preset_for_checkpoint(
            cfg.checkpoint, cfg.h1, cfg.h2, cfg.ensemble
        )
        self.ctx = RowContext(self.model, int(self.y.max()) + 1, self.preset)
        self.defense = ShuffleVote(self.model, self.preset)
        self.cache = Path(cfg.out) / "cache"
        self._check_cache()
        self.seconds: dict[str, float] = {}

    def _check_cache(self) -> None:
        """The cache holds one model, data, clip subset and preset: refuse another."""
        meta = {
            "weights_sha256": common.checkpoint_weights_sha256(self.cfg.checkpoint),
            "data_sha256": common.data_fingerprint(self.cfg.data), "split": self.cfg.split,
            "clips": [int(c) for c in self.subset.index], "preset": self.preset.to_dict(),
        }  # fmt: skip
        self.cache.mkdir(parents=True, exist_ok=True)
        path = self.cache / "cache.json"
        if path.exists() and json.loads(path.read_text()) != meta:
            raise ValueError(f"{self.cache} holds clips of another model, data or preset")
        path.write_text(json.dumps(meta))

    def craft(self, cell: Cell) -> torch.Tensor:
        """Adversarial clips of ``cell`` (from the cache when there)."""
        path = self.cache / f"{cell.key}-seed{self.cfg.seed}.pt"
        ids = list(self.subset.index)
        if path.exists():
            saved = torch.load(path)
            if saved["clips"] == ids:
                self.seconds[cell.key] = saved["seconds"]
                return saved["adv"].to(self.cfg.device)
        t0 = time.perf_counter()
        attack = self._attack(cell)
        adv = attack(self.x, self.y)
        seconds = (time.perf_counter() - t0) / len(ids)
        torch.save({"clips": ids, "adv": adv.cpu(), "seconds": seconds, "cell": cell.key}, path)
        self.seconds[cell.key] = seconds
        return adv

    def _attack(self, cell: Cell) -> Any:
        eps = cell.eps / 255
        if cell.attack == "ifgsm":
            return IFGSM(self.model, eps=eps, steps=cell.steps)
        seed = common.derive_seed(self.cfg.seed, ATTACKS[cell.attack].seed_id, cell.steps,
                                  cell.draws)  # fmt: skip
        return eot_for_row(
            cell.row, self.model, self.ctx, _paper_budget(), batch_size=self.cfg.eot_batch,
            attack=cell.attack, eps=eps, steps=cell.steps, draws=cell.draws, seed=seed,
            restarts=cell.restarts, progress=not self.cfg.no_progress,
        )  # fmt: skip

    def score(self, adv: torch.Tensor, tag: int) -> dict[str, list[Any]]:
        """Per clip: the defense's fresh vote right? the undefended model right? and the
        gateway's flag inputs (``flag``: ``pred``, ``vote_share``, ``undefended_pred``)."""
        defended, undefended, flag = [], [], []
        with torch.no_grad():
            plain = self.model(adv).argmax(dim=1) if adv.shape[0] <= 64 else torch.cat(
                [self.model(b).argmax(dim=1) for b in adv.split(32)])  # fmt: skip
        for i, cid in enumerate(self.subset.index):
            gen = common.generator(self.cfg.seed, int(cid), SCORE_TAG, tag)
            labels, counts = self.defense.vote(adv[i : i + 1], gen)
            label = int(labels[0])
            defended.append(label == int(self.y[i]))
            undefended.append(int(plain[i]) == int(self.y[i]))
            share = float(counts[0, label]) / float(counts[0].sum())
            flag.append({"pred": label, "vote_share": share, "undefended_pred": int(plain[i])})
        return {"defended": defended, "undefended": undefended, "flag": flag}


def _paper_budget() -> Any:
    from service.research.robustness.registry import Budget

    return Budget()


def _tag(cell: Cell) -> int:
    return common.derive_seed(*[ord(c) for c in cell.key]) % (2**31)


def worst_case(defended: list[list[bool]]) -> list[bool]:
    """Per clip: defended against every attack (``defended[a][i]``: attack ``a``, clip
    ``i``; every attack scores the same clips in the same order)."""
    if not defended:
        raise ValueError("the worst case needs at least one attack")
    return [all(col) for col in zip(*defended, strict=True)]


def _rate(correct: list[bool]) -> dict[str, Any]:
    k, n = sum(correct), len(correct)
    lo, hi = wilson(k, n)
    return {"correct": k, "n": n, "accuracy": k / n if n else float("nan"), "lo": lo, "hi": hi}


def static_share(delta: torch.Tensor) -> torch.Tensor:
    """Per clip ``[B]``: ``||mean_t d||^2 / ||d||^2`` with the time mean broadcast to
    every frame of ``delta [B, C, T, ...]`` (0: purely dynamic, 1: one image for all
    frames; 0 for a zero perturbation)."""
    static = delta.mean(dim=2, keepdim=True).expand_as(delta)
    num = static.flatten(1).square().sum(1)
    den = delta.flatten(1).square().sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(den))


def _cells(cfg: AdaptiveConfig) -> dict[str, list[Cell]]:
    """Every cell of the analysis, by role (a cell may serve several roles)."""
    e, S, D, R = cfg.eps, cfg.steps, cfg.draws, cfg.restarts
    curve = cfg.curve_attack
    return {
        "paper_eot": [Cell("eot", "shuffle", e, 30, 10)],
        "variants": [Cell(v, "shuffle", e, S, D, R) for v in cfg.variants],
        "transfer": [Cell("ifgsm", "none", e, 30, 1)]
        + [Cell(v, "none", e, S, 1, R) for v in cfg.variants],
        "steps_curve": [Cell(curve, "shuffle", e, s, D) for s in sorted(set(cfg.curve_steps))],
        "draws_curve": [
            Cell(curve, "shuffle", e, cfg.curve_draws_steps, d)
            for d in sorted(set(cfg.curve_draws))
        ],
        "unbounded": [Cell(curve, "shuffle", cfg.unbounded_eps, cfg.unbounded_steps, D)],
        "mechanism": [Cell(curve, "shuffle", e, S, D, R)],
        "flag_aware": [Cell(v, "shuffle", e, S, D, R) for v in cfg.flag_variants],
    }


def _row(cell: Cell, scores: dict[str, list[Any]], role: str, seconds: float) -> dict[str, Any]:
    d, u = _rate(scores["defended"]), _rate(scores["undefended"])
    return {
        "role": role, "attack": cell.attack, "row": cell.row, "eps": cell.eps,
        "steps": cell.steps, "draws": cell.draws, "restarts": cell.restarts,
        "defended_correct": d["correct"], "n": d["n"], "defended_accuracy": d["accuracy"],
        "defended_lo": d["lo"], "defended_hi": d["hi"], "undefended_correct": u["correct"],
        "undefended_accuracy": u["accuracy"], "seconds_per_clip": seconds,
    }  # fmt: skip


def mechanism(r: Runner, adv: torch.Tensor, fooled: list[bool]) -> dict[str, Any]:
    """Static share of the saturated perturbations and the defense on their parts."""
    delta = adv - r.x
    share = static_share(delta.cpu())
    static = delta.mean(dim=2, keepdim=True).expand_as(delta)
    parts = {
        "static": r.score((r.x + static).clamp(0, 1), 8001),
        "dynamic": r.score((r.x + delta - static).clamp(0, 1), 8002),
    }
    plain = r.score(adv, 8003)["undefended"]
    both = sum(f and not p for f, p in zip(fooled, plain, strict=True))
    return {
        "static_share_mean": float(share.mean()),
        "static_share_per_clip": [float(v) for v in share],
        "parts": {
            k: {"defended": _rate(v["defended"]), "undefended": _rate(v["undefended"])}
            for k, v in parts.items()
        },  # fmt: skip
        "fooled_defense": sum(fooled),
        "fooled_defense_and_undefended": both,
    }


def run_adaptive(cfg: AdaptiveConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = Runner(cfg)
    cells = _cells(cfg)
    scores: dict[str, dict[str, list[Any]]] = {}
    clean = r.score(r.x, 1)
    rows: list[dict[str, Any]] = [_row(Cell("clean", "shuffle", 0, 0, 0), clean, "clean", 0.0)]
    unique = list({c.key: c for group in cells.values() for c in group}.values())
    with common.progress_bar(unique, desc="adaptive cells", enabled=not cfg.no_progress) as bar:
        for cell in bar:
            adv = r.craft(cell)
            scores[cell.key] = r.score(adv, _tag(cell))
            if cell in cells["mechanism"]:
                fooled = [not c for c in scores[cell.key]["defended"]]
                mech = mechanism(r, adv, fooled)
    for role, group in cells.items():
        rows += [_row(c, scores[c.key], role, r.seconds[c.key]) for c in group]
    attacks = cells["variants"] + cells["paper_eot"] + cells["flag_aware"]  # all at eps
    worst = worst_case([scores[c.key]["defended"] for c in attacks])
    rows.append(_row(Cell("worst", "shuffle", cfg.eps, cfg.steps, cfg.draws, cfg.restarts),
                     {"defended": worst, "undefended": worst}, "worst_case", 0.0))  # fmt: skip
    res = report.results(
        cfg, t0, r.ckpt, len(r.subset), preset=r.preset.to_dict(), preset_source=r.preset_source,
        distinct_shuffles=count_shuffles(r.x.shape[2], r.preset.h1, r.preset.h2),
        frames=r.x.shape[2], rows=rows, mechanism=mech,
    )  # fmt: skip
    if cfg.flag_variants:
        res["flag"] = flag_rows(clean, scores, attacks, cfg.max_fpr)
    res["sanity_checks"] = sanity_checks(rows)
    res["sanity_passed"] = all(c["passed"] for c in res["sanity_checks"])
    return res


def flag_rows(
    clean: dict[str, list[Any]],
    scores: dict[str, dict[str, list[Any]]],
    cells: list[Cell],
    max_fpr: float,
) -> list[dict[str, Any]]:
    """Per attack cell: the ``suspected_adversarial`` signals' TPR at ``max_fpr`` on the
    clean clips (:func:`service.research.experiments.detection.flag_at_fpr`) beside the attack's
    defended accuracy, and ``evaded``: the clips that fooled the vote *and* were not
    flagged by the gateway's rule (the attacker's real win)."""
    from service.research.experiments.detection import flag_at_fpr, signal_scores

    rows = []
    for c in cells:
        s = scores[c.key]
        evaded = [not d and not signal_scores(f, 0.5)["gateway"]
                  for d, f in zip(s["defended"], s["flag"], strict=True)]  # fmt: skip
        rows.append({"attack": c.attack, "evaded": _rate(evaded), "steps": c.steps,
                     "draws": c.draws,
                     "defended": _rate(s["defended"]), "undefended": _rate(s["undefended"]),
                     "max_fpr": max_fpr, "signals": flag_at_fpr(clean["flag"], s["flag"],
                                                                max_fpr=max_fpr)})  # fmt: skip
    return rows


# --------------------------------------------------------------------------- #
# Sanity checks
# --------------------------------------------------------------------------- #
def _by(rows: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["role"] == role]


def _monotone(name: str, points: list[dict[str, Any]], axis: str) -> dict[str, Any]:
    bad = [
        f"{axis} {b[axis]}: {report.pct(b['defended_accuracy'])}% > {axis} {a[axis]}'s upper "
        f"bound {report.pct(a['defended_hi'])}%"
        for i, a in enumerate(points) for b in points[i + 1 :]
        if b["defended_accuracy"] > a["defended_hi"] + 1e-12
    ]  # fmt: skip
    seq = ", ".join(f"{p[axis]}: {report.pct(p['defended_accuracy'])}" for p in points)
    return {"name": name, "passed": not bad, "detail": "; ".join(bad) or seq}


def sanity_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checks of the module docstring, each ``{name, passed, detail}``."""
    worst = _by(rows, "worst_case")[0]
    paper = _by(rows, "paper_eot")[0]
    transfer = _by(rows, "transfer")
    lose = [t for t in transfer if worst["defended_accuracy"] > t["defended_accuracy"] + 1e-12]
    unb = _by(rows, "unbounded")[0]
    ifgsm = next(t for t in transfer if t["attack"] == "ifgsm")
    hi = wilson(ifgsm["undefended_correct"], ifgsm["n"])[1]
    free = [t for t in transfer if t["attack"] != "ifgsm" and not _restricted(t["attack"])]
    weaker = [
        t["attack"] for t in free
        if (t["undefended_accuracy"] > hi + 1e-12
             or ifgsm["undefended_accuracy"] < wilson(t["undefended_correct"], t["n"])[0] - 1e-12)
    ]  # fmt: skip
    w, p = report.pct(worst["defended_accuracy"]), report.pct(paper["defended_accuracy"])
    best = min(v["defended_accuracy"] for v in _by(rows, "variants"))
    return [
        _monotone("steps_monotone", _by(rows, "steps_curve"), "steps"),
        _monotone("draws_monotone", _by(rows, "draws_curve"), "draws"),
        {"name": "strongest_variant_beats_paper_eot", "passed": best <= paper[
            "defended_accuracy"] + 1e-12, "detail": f"strongest variant {report.pct(best)}% vs"
         f" paper EOT {p}% (worst case over both: {w}%)"},
        {"name": "adaptive_beats_transfer", "passed": not lose,
         "detail": f"worst case {w}% vs transfer " + ", ".join(
             f"{t['attack']} {report.pct(t['defended_accuracy'])}%" for t in transfer)},
        {"name": "unbounded_eps", "passed": unb["defended_correct"] == 0,
         "detail": f"eps {unb['eps']:g}/255: {unb['defended_correct']}/{unb['n']} right"},
        {"name": "eot_not_weaker_than_ifgsm_undefended", "passed": not weaker,
         "detail": f"I-FGSM {report.pct(ifgsm['undefended_accuracy'])}% vs " + ", ".join(
             f"{t['attack']} {report.pct(t['undefended_accuracy'])}%" for t in free) + "".join(
             f"; {t['attack']} {report.pct(t['undefended_accuracy'])}% not compared (a static"
             " perturbation is a smaller threat model than I-FGSM's)"
             for t in transfer if _restricted(t["attack"]))},
    ]  # fmt: skip


def _restricted(attack: str) -> bool:
    """A variant whose perturbation is constrained beyond the L-inf ball (``static``: one
    image for all frames): not the same attack as I-FGSM, so not held to its figure."""
    return bool(ATTACKS[attack].eot.get("static")) if attack in ATTACKS else False


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #
#: ``adaptive.csv``: (column, format) per row.
FIELDS: list[tuple[str, str]] = [
    ("role", "s"), ("attack", "s"), ("row", "s"), ("eps", "g"), ("steps", "d"),
    ("draws", "d"), ("restarts", "d"), ("n", "d"), ("defended_correct", "d"),
    ("defended_accuracy", ".4f"), ("defended_lo", ".4f"), ("defended_hi", ".4f"),
    ("undefended_correct", "d"), ("undefended_accuracy", ".4f"), ("seconds_per_clip", ".3f"),
]  # fmt: skip


def _line(r: dict[str, Any]) -> list[str]:
    name = ATTACKS[r["attack"]].title if r["attack"] in ATTACKS else r["attack"]
    return [
        r["role"], name, f"{r['eps']:g}/255" if r["eps"] else "-", str(r["steps"]),
        str(r["draws"]), f"{r['defended_correct']}/{r['n']}",
        f"{report.pct(r['defended_accuracy'])} ({report.pct(r['defended_lo'], 0)}-"
        f"{report.pct(r['defended_hi'], 0)})", report.pct(r["undefended_accuracy"]),
    ]  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    verdict = "all passed" if res["sanity_passed"] else "**SANITY CHECKS FAILED: not a result**"
    m, p = res["mechanism"], res["preset"]
    parts = m["parts"]
    return "\n".join([
        "# Saturated adaptive evaluation of the shuffle defense", "",
        f"{res['clips']} clips; preset h1 = {p['h1']}, h2 = {p['h2']}, ensemble {p['ensemble']}"
        f" ({res['distinct_shuffles']} distinct shuffles at T = {res['frames']}). Defended ="
        " the vote with fresh draws per clip; worst case = right against every variant and"
        " the paper's EOT.", "",
        *report.produced_by(res["command"]),
        report.markdown_table(
            ["role", "attack", "eps", "steps", "draws", "defended right", "defended % (95% Wilson)",
             "undefended %"], [_line(r) for r in res["rows"]], "llrrrrrr"),
        "", f"## Sanity checks: {verdict}", "",
        report.markdown_table(["check", "passed", "detail"],
                              [[c["name"], "yes" if c["passed"] else "**NO**", c["detail"]]
                               for c in res["sanity_checks"]], "lll"),
        "", "## Mechanism (the curve attack's saturated perturbations)", "",
        f"Static share ||mean_t d||^2 / ||d||^2: {m['static_share_mean']:.3f} (mean over clips)."
        f" Clips fooling the defense: {m['fooled_defense']}; of them also fooling the"
        f" undefended model: {m['fooled_defense_and_undefended']}.", "",
        report.markdown_table(["part of d", "defended %", "undefended %"], [
            [k, f"{report.pct(v['defended']['accuracy'])} ({v['defended']['correct']}/"
             f"{v['defended']['n']})", report.pct(v["undefended"]["accuracy"])]
            for k, v in parts.items()]),
        *flag_markdown(res.get("flag")),
        *report.figure_link("adaptive curves", "adaptive"),
    ])  # fmt: skip


def _ci(d: dict[str, Any]) -> str:
    return (f"{report.pct(d['tpr'] if 'tpr' in d else d['accuracy'])} ({report.pct(d['lo'], 0)}-"
            f"{report.pct(d['hi'], 0)})")  # fmt: skip


def flag_markdown(flag: list[dict[str, Any]] | None) -> list[str]:
    """The flag section: each attack's defended accuracy and the flag's TPR."""
    if not flag:
        return []
    fpr = report.pct(flag[0]["max_fpr"], 0)
    rows = [[ATTACKS[f["attack"]].title, str(f["steps"]), _ci(f["defended"]),
             report.pct(f["undefended"]["accuracy"]),
             f"{f['evaded']['correct']}/{f['evaded']['n']} ({_ci(f['evaded'])})",
             *[f"{_ci(f['signals'][s])}, FPR {report.pct(f['signals'][s]['fpr'])}"
               for s in ("vote_share", "disagreement", "gateway")]] for f in flag]  # fmt: skip
    return [
        "", f"## The suspected_adversarial flag under these attacks (TPR at FPR <= {fpr}%)", "",
        "Negatives: the clean clips' flag scores; positives: every attacked clip. `1 - vote"
        " share`: the ROC point of most TPR at that FPR; `disagreement`: unshuffled label !="
        " vote; `gateway`: disagreement or share < 0.5 (binary signals at their own FPR if"
        " within the bound, else 0). Evaded: clips that fool the vote and pass the gateway's"
        " flag. 95% Wilson intervals.", "",
        report.markdown_table(
            ["attack", "steps", "defended % (CI)", "undefended %", "evaded % (CI)",
             "TPR 1 - vote share", "TPR disagreement", "TPR gateway flag"], rows, "lrrrrrrr"),
    ]  # fmt: skip


def plot(res: dict[str, Any], path: Any) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), sharey=True)
    for ax, role, axis in ((axes[0], "steps_curve", "steps"), (axes[1], "draws_curve", "draws")):
        pts = _by(res["rows"], role)
        xs = [p[axis] for p in pts]
        ys = [100 * p["defended_accuracy"] for p in pts]
        err = [[y - 100 * p["defended_lo"] for y, p in zip(ys, pts, strict=True)],
               [100 * p["defended_hi"] - y for y, p in zip(ys, pts, strict=True)]]  # fmt: skip
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label="defended (95% Wilson)")
        ax.set_xscale("log")
        ax.set_xlabel(axis + (" (draws fixed)" if axis == "steps" else " per step (steps fixed)"))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("defended accuracy (%)")
    axes[0].set_ylim(-2, 102)
    axes[0].legend(fontsize=8)
    fig.suptitle("Adaptive EOT against the shuffle vote")
    report.save_figure(fig, path)


def _summary(res: dict[str, Any]) -> list[str]:
    worst = _by(res["rows"], "worst_case")[0]
    paper = _by(res["rows"], "paper_eot")[0]
    lines = [
        f"paper EOT: {report.pct(paper['defended_accuracy'])}%; saturated worst case: "
        f"{report.pct(worst['defended_accuracy'])}% of {worst['n']} clips",
        f"static share: {res['mechanism']['static_share_mean']:.3f}",
    ]
    lines += [f"check {c['name']}: {'passed' if c['passed'] else 'FAILED'} ({c['detail']})"
              for c in res["sanity_checks"]]  # fmt: skip
    return lines


def run(args: AdaptiveConfig) -> int:
    return report.run_analysis(
        args, run_adaptive, fields=FIELDS, markdown=markdown, plot=plot, summary=_summary
    )
