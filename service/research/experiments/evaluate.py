"""Attacks x defenses evaluation (paper Table 5), resumable, per clip.

Rows and columns come from the registry (:mod:`service.research.robustness.registry`): rows
``none``, ``rs`` (randomized smoothing), ``denoise`` (denoised smoothing, needs a
trained DnCNN), ``shuffle`` (the paper's ensemble), ``shuffle+rs``,
``shuffle+denoise``; columns ``clean`` and the attacks ``ifgsm``, ``flickering``,
``ofa`` (one frame attack), ``eot``.

* The non-adaptive columns (I-FGSM, flickering, OFA) are crafted once per clip against
  the **undefended** model and then classified by every row (the paper's setting).
  They use no randomness, so one adversarial clip serves every seed.
* The ``eot`` column is **adaptive to each row's randomness**
  (:func:`service.research.robustness.registry.eot_for_row`: shuffles, Gaussian noise, noise
  through the denoiser, or both; gradients flow through the gather and the denoiser).
  For the ``none`` row it is EOT with identity shuffles, the credibility check: it
  must fool the undefended model at least as well as plain I-FGSM. That check is
  always run (the ``none`` row and the ``ifgsm`` column are added when ``eot`` is
  asked for) and reported.

Attack budgets are the library defaults (:class:`~service.research.robustness.registry.Budget`);
a run with any smaller budget is stamped *REDUCED STRENGTH* in every output and must
not be reported as a result (it exists for plumbing tests).

The run is three steps: :func:`plan` (inputs, rows, columns, the work units still
missing), :func:`craft_nonadaptive` (adversarial clips of a chunk of clips) and
:func:`score` (one clip through one row, one record). Every (seed, clip, attack, row)
result is one line of ``records.jsonl`` (:class:`~service.research.experiments.records.Records`);
a rerun with the same settings skips what is done. Seeds fix the defenses' and the EOT
draws per work unit (:func:`service.research.experiments.common.derive_seed` of the seed, the
clip, the row's and the column's ``seed_id``), so results do not depend on the order
or batching of the work.

Outputs in ``--out``: ``records.jsonl``, ``run.json`` and the report of
:mod:`service.research.experiments.table5`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from service.core.presets import ShufflePreset
from service.modelserver.archive import sha256_file
from service.options import ExperimentConfig, device_opt, opt, out_opt, progress_opt, threads_opt
from service.research.experiments import common, report
from service.research.experiments.config import attack_batch_opt, checkpoint_opt, data_opt
from service.research.experiments.records import Key, Records
from service.research.robustness.registry import (
    ATTACKS,
    DEFENSE_ROWS,
    PAPER_ATTACKS,
    Budget,
    RowContext,
    adaptive_attacks,
)
from service.research.robustness.smoothing import ABSTAIN, RS_ALPHA, RS_N, SIGMA, Defense

__all__ = [
    "EvalConfig",
    "Plan",
    "craft_nonadaptive",
    "plan",
    "preset_for_checkpoint",
    "run",
    "run_evaluation",
    "score",
]

logger = logging.getLogger(__name__)

#: Preset used when neither the command line nor the checkpoint's sidecar gives one.
FALLBACK_PRESET = ShufflePreset(h1=3, h2=1, ensemble=10)
#: ``seed_id`` of the clean column (the attacks' ids start at 1).
CLEAN_SEED_ID = 0
#: Last part of the seed of a row's EOT draws.
EOT_SEED_TAG = 99
_FULL = Budget()


@dataclass
class EvalConfig(ExperimentConfig):
    """Settings of one evaluation (saved to ``run.json`` and ``table5.json``)."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "evaluate")

    checkpoint: str = checkpoint_opt()
    data: str = data_opt()
    out: str = out_opt("docs/results/table5")
    split: str = opt("test", "clips to use", choices=("test", "val", "train", "all"))
    clips: int | None = opt(None, "seeded class-stratified subset size (default all)")
    subset_seed: int = opt(0, "seed of the clip subset")
    seeds: list[int] = opt([0], "seeds (CIs over them)", show="always")
    attacks: list[str] = opt(list(PAPER_ATTACKS), "attack columns", choices=ATTACKS)
    defenses: list[str] = opt(list(DEFENSE_ROWS), "defense rows", choices=DEFENSE_ROWS)
    h1: int | None = opt(None, "preset (default: tune's sidecar)")
    h2: int | None = opt(None, "preset (default: tune's sidecar)")
    ensemble: int | None = opt(None, "preset (default: tune's sidecar)")
    sigma: float = opt(SIGMA, "smoothing noise std (pixels)")
    rs_n: int = opt(RS_N, "noisy copies per smoothed prediction")
    rs_alpha: float = opt(RS_ALPHA, "abstain test level")
    denoiser: str | None = opt(None, "DnCNN from `analyze denoiser`")
    device: str = device_opt()
    report_only: bool = opt(
        False, "compute nothing: write the tables from the records already in --out"
    )
    eps: float = opt(_FULL.eps, "attack L-inf budget (lower = plumbing test)")
    steps: int = opt(_FULL.steps, "I-FGSM/OFA/EOT steps (lower = plumbing test)")
    eot_draws: int = opt(_FULL.eot_draws, "EOT draws per step (lower = plumbing test)")
    flicker_steps: int = opt(_FULL.flicker_steps, "flickering steps (lower = plumbing test)")
    flicker_eps: float = opt(_FULL.flicker_eps, "flickering offset bound (lower = plumbing test)")
    attack_batch: int = attack_batch_opt(4)
    eot_batch: int | None = opt(
        40, "most clip copies per EOT forward pass (memory bound; the draws are unchanged)",
        show="never",
    )  # fmt: skip
    batch_size: int = opt(32, "clips per forward pass", show="never")
    threads: int = threads_opt()
    no_progress: bool = progress_opt()

    def check(self) -> None:
        self.seeds = list(dict.fromkeys(self.seeds))
        self.attacks = [a for a in ATTACKS if a in self.attacks]
        self.defenses = [r for r in DEFENSE_ROWS if r in self.defenses]
        if not self.seeds:
            raise ValueError("need at least one seed")
        if self.clips is not None and self.clips < 1:
            raise ValueError(f"--clips must be >= 1, got {self.clips}")
        if min(self.steps, self.eot_draws, self.flicker_steps, self.attack_batch) < 1:
            raise ValueError("steps, draws and batch sizes must be >= 1")
        if self.rs_n < 1 or not 0 < self.rs_alpha < 1 or self.sigma < 0:
            raise ValueError("need --rs-n >= 1, 0 < --rs-alpha < 1, --sigma >= 0")

    def budget(self) -> Budget:
        return Budget(self.eps, self.steps, self.eot_draws, self.flicker_steps, self.flicker_eps)

    @property
    def reduced(self) -> list[str]:
        """The budgets below full strength (empty for a reportable run)."""
        return self.budget().reduced()


def preset_for_checkpoint(
    checkpoint: str | Path,
    h1: int | None = None,
    h2: int | None = None,
    ensemble: int | None = None,
) -> tuple[ShufflePreset, str]:
    """The shuffle preset and where it came from: values given here >
    ``<checkpoint>.preset.json`` (written by ``shuffleguard tune``) > a ``.mar``'s
    ``meta.json`` preset > :data:`FALLBACK_PRESET`."""
    sidecar = Path(str(checkpoint) + ".preset.json")
    base, source = FALLBACK_PRESET, "fallback (h1=3, h2=1, ensemble=10)"
    if common.is_archive(checkpoint) and Path(checkpoint).exists():
        from service.modelserver.archive import read_archive

        base = ShufflePreset(**_preset_ints(read_archive(checkpoint)[0]["preset"]))
        source = f"{checkpoint} meta.json"
    if sidecar.exists():
        base = ShufflePreset(**_preset_ints(json.loads(sidecar.read_text())["preset"]))
        source = f"{sidecar} (shuffleguard tune)"
    if h1 is not None or h2 is not None or ensemble is not None:
        source = "command line"
    preset = ShufflePreset(
        h1=h1 if h1 is not None else base.h1,
        h2=h2 if h2 is not None else base.h2,
        ensemble=ensemble if ensemble is not None else base.ensemble,
    )
    return preset, source


def _preset_ints(p: dict[str, Any]) -> dict[str, int]:
    return {"h1": int(p["h1"]), "h2": int(p["h2"]), "ensemble": int(p["ensemble"])}


# --------------------------------------------------------------------------- #
# Step 1: the plan
# --------------------------------------------------------------------------- #
def rows_for(config: EvalConfig, have_denoiser: bool) -> list[str]:
    """The rows asked for (``none`` always), without the denoiser rows when there is none."""
    rows = [r for r in DEFENSE_ROWS if r in config.defenses or r == "none"]
    if not have_denoiser:
        dropped = [r for r in rows if DEFENSE_ROWS[r].needs_denoiser]
        if dropped:
            logger.warning("no --denoiser given: skipping rows %s", dropped)
        rows = [r for r in rows if not DEFENSE_ROWS[r].needs_denoiser]
    return rows


def columns_for(config: EvalConfig) -> list[str]:
    """``clean`` and the attacks asked for; an adaptive one brings I-FGSM (the transfer
    attack it is compared with)."""
    cols = {"clean", *config.attacks}
    if cols & set(adaptive_attacks()):
        cols.add("ifgsm")
    return [c for c in ("clean", *ATTACKS) if c in cols]


def cell_rows(column: str, rows: Sequence[str], config: EvalConfig) -> list[str]:
    """Rows evaluated in ``column``: an I-FGSM column added only for the check has just ``none``."""
    if column == "ifgsm" and "ifgsm" not in config.attacks:
        return ["none"]
    return list(rows)


def fingerprint(config: EvalConfig, preset: ShufflePreset) -> dict[str, Any]:
    """What makes two runs' records comparable: model, data, defenses, budgets."""
    return {
        "weights_sha256": common.checkpoint_weights_sha256(config.checkpoint),
        "data_sha256": common.data_fingerprint(config.data),
        "split": config.split,
        "subset_seed": config.subset_seed,
        "preset": preset.to_dict(),
        "sigma": config.sigma,
        "rs_n": config.rs_n,
        "rs_alpha": config.rs_alpha,
        "denoiser_sha256": sha256_file(Path(config.denoiser)) if config.denoiser else None,
        **asdict(config.budget()),
    }


def check_compatible(old: dict[str, Any] | None, new: dict[str, Any], out: Path) -> None:
    """Refuse to mix records of runs whose settings differ (see :func:`fingerprint`).

    One difference is allowed: a run without a denoiser may be extended by one with
    a denoiser. The records of the first run hold no denoise rows (they are skipped
    without a denoiser) and nothing else depends on the denoiser, so the later run
    adds the denoise rows beside them.
    """
    old = old or {}
    diff = sorted(k for k in new if old.get(k) != new[k])
    if diff == ["denoiser_sha256"] and old.get("denoiser_sha256") is None:
        logger.info("%s: adding denoise rows to a run that had no denoiser", out)
        return
    if diff:
        raise ValueError(
            f"{out} holds records of a run with other settings ({', '.join(diff)}); "
            "use another --out or delete it"
        )


@dataclass
class Plan:
    """What an evaluation works on: inputs, rows, columns and the work units."""

    config: EvalConfig
    preset: ShufflePreset
    preset_source: str
    model: nn.Module
    ckpt: dict[str, Any]
    subset: common.SplitData
    ctx: RowContext
    rows: list[str]
    columns: list[str]
    defenses: dict[str, Defense]
    keys: list[Key]
    missing: set[Key] = field(default_factory=set)


def plan(config: EvalConfig, records: Records) -> Plan:
    """Load the inputs, check ``--out`` holds comparable records, list the missing units."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    preset, source = preset_for_checkpoint(config.checkpoint, config.h1, config.h2, config.ensemble)
    fp = fingerprint(config, preset)
    run_path = out / "run.json"
    if run_path.exists():
        check_compatible(json.loads(run_path.read_text()).get("fingerprint"), fp, out)
    report.write_json(run_path, {"fingerprint": fp, "config": asdict(config)})
    model, ckpt = common.load_model(config.checkpoint, config.device)
    data = common.load_split(config.data, config.split)
    subset = data.take(common.stratified_subset(data.labels, config.clips, config.subset_seed))
    denoiser = _load_denoiser(config)
    ctx = RowContext(
        model, len(data.label_names), preset, config.sigma, config.rs_n, config.rs_alpha,
        config.batch_size, denoiser,
    )  # fmt: skip
    rows, columns = rows_for(config, denoiser is not None), columns_for(config)
    keys = [
        (s, cid, col, row)
        for cid in subset.index
        for col in columns
        for s in config.seeds
        for row in cell_rows(col, rows, config)
    ]
    missing = set() if config.report_only else {k for k in keys if k not in records}
    defenses = {name: DEFENSE_ROWS[name].build(ctx) for name in rows}
    return Plan(config, preset, source, model, ckpt, subset, ctx, rows, columns, defenses, keys,
                missing)  # fmt: skip


def _load_denoiser(config: EvalConfig) -> nn.Module | None:
    if not config.denoiser:
        return None
    from service.research.experiments.denoiser import load_denoiser

    return load_denoiser(config.denoiser, config.device)


# --------------------------------------------------------------------------- #
# Step 2: crafting
# --------------------------------------------------------------------------- #
@dataclass
class Crafted:
    """Inputs of one column for a chunk of clips: ``x [n, 3, T, H, W]``, per-clip extras
    and seconds of attack per clip."""

    x: torch.Tensor
    extras: list[dict[str, Any]]
    seconds: float


def craft_nonadaptive(
    p: Plan, x: torch.Tensor, y: torch.Tensor, ids: list[int], todo: set[Key]
) -> dict[str, Crafted]:
    """The clean inputs and, per non-adaptive column, the adversarial clips of the clips
    that still need them (crafted in one batch against the undefended model)."""
    out = {"clean": Crafted(x, [{} for _ in ids], 0.0)}
    for col in p.columns:
        if col == "clean" or ATTACKS[col].adaptive:
            continue
        need = [i for i, cid in enumerate(ids) if any(k[1] == cid and k[2] == col for k in todo)]
        if not need:
            continue
        spec = ATTACKS[col]
        assert spec.build is not None
        t0 = time.perf_counter()
        attack = spec.build(p.model, p.config.budget())
        adv = attack(x[need], y[need])
        extras = spec.extras(attack, adv, x[need])
        full = x.clone()
        full_extras: list[dict[str, Any]] = [{} for _ in ids]
        full[need] = adv
        for j, i in enumerate(need):
            full_extras[i] = extras[j]
        out[col] = Crafted(full, full_extras, (time.perf_counter() - t0) / len(need))
    return out


def craft_eot(
    p: Plan, x: torch.Tensor, y: torch.Tensor, ids: list[int], seed: int, row: str,
    col: str = "eot",
) -> Crafted:  # fmt: skip
    """Clips of the adaptive column ``col`` adapted to ``row`` for the clips ``x``; each
    clip draws its shuffles and noise from its own generator ``(seed, clip, row)`` (and
    the column's ``seed_id`` for the columns after ``eot``)."""
    from service.research.robustness.registry import eot_for_row

    t0 = time.perf_counter()
    attack = eot_for_row(
        row, p.model, p.ctx, p.config.budget(), batch_size=p.config.eot_batch, attack=col
    )
    row_id = DEFENSE_ROWS[row].seed_id
    tag = () if col == "eot" else (ATTACKS[col].seed_id,)
    attack.set_clip_generators(
        [torch.Generator().manual_seed(common.derive_seed(seed, c, row_id, EOT_SEED_TAG, *tag))
         for c in ids]
    )  # fmt: skip
    adv = attack(x, y)
    return Crafted(adv, [{} for _ in ids], (time.perf_counter() - t0) / len(ids))


# --------------------------------------------------------------------------- #
# Step 3: scoring
# --------------------------------------------------------------------------- #
def score(
    p: Plan, key: Key, label: int, xin: torch.Tensor, clean: torch.Tensor, crafted: Crafted,
    i: int,
) -> dict[str, Any]:  # fmt: skip
    """The record of one clip ``xin [1, 3, T, H, W]`` (clean ``clean``) through one row."""
    seed, cid, col, row = key
    col_id = CLEAN_SEED_ID if col == "clean" else ATTACKS[col].seed_id
    gen = common.generator(seed, cid, DEFENSE_ROWS[row].seed_id, col_id)
    t0 = time.perf_counter()
    with torch.no_grad():
        undefended = int(p.model(xin).argmax(dim=1)[0])
    labels, counts = p.defenses[row].vote(xin, gen)
    pred = int(labels[0])
    votes: dict[str, Any] = {}
    if counts is not None:
        votes["votes"] = [int(c) for c in counts[0].tolist()]
        votes["vote_share"] = float(counts[0, pred]) / float(counts[0].sum())
    defense_s = time.perf_counter() - t0
    delta = (xin - clean).float()
    return {
        "seed": seed, "clip": cid, "label": label, "attack": col, "defense": row,
        "correct": pred == label, "linf": float(delta.abs().max()),
        "l2": float(delta.flatten().norm()), "attack_seconds": crafted.seconds,
        "defense_seconds": defense_s, "device": p.config.device,
        "extra": dict(crafted.extras[i]), "undefended_pred": undefended, **votes,
        "pred": pred, "abstain": pred == ABSTAIN,
    }  # fmt: skip


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #
def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _run_chunk(p: Plan, records: Records, chunk: list[int], bar: Any) -> None:
    """Every missing result of the clips at subset positions ``chunk``."""
    from service.research.train import clips_to_input

    ids = [p.subset.index[i] for i in chunk]
    todo = {k for k in p.missing if k[1] in ids}
    if not todo:
        return
    x = clips_to_input(p.subset.clips[chunk], torch.device(p.config.device))
    y = p.subset.labels[chunk].to(x.device)
    inputs = craft_nonadaptive(p, x, y, ids, todo)
    for i, cid in enumerate(ids):
        for col, crafted in inputs.items():
            for key in [(s, cid, col, r) for s in p.config.seeds for r in p.rows]:
                if key in todo:
                    xin = crafted.x[i : i + 1]
                    records.add(score(p, key, int(y[i]), xin, x[i : i + 1], crafted, i))
                    bar.update(1)
    for col, s, row in [
        (c, s, r) for c in p.columns if c in adaptive_attacks() for s in p.config.seeds
        for r in p.rows
    ]:  # fmt: skip
        need = [i for i, cid in enumerate(ids) if (s, cid, col, row) in todo]
        if need:
            crafted = craft_eot(p, x[need], y[need], [ids[i] for i in need], s, row, col)
            for j, i in enumerate(need):
                key = (s, ids[i], col, row)
                records.add(
                    score(p, key, int(y[i]), crafted.x[j : j + 1], x[i : i + 1], crafted, j)
                )
                bar.update(1)


def run_evaluation(config: EvalConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the evaluation; returns the summary (see
    :func:`service.research.experiments.table5.summarize`)."""
    from service.research.experiments import table5

    with Records.of(config.out) as records:
        p = plan(config, records)
        logger.info(
            "evaluate: %d clips x %d seeds, rows %s, columns %s: %d of %d results to compute",
            len(p.subset), len(config.seeds), p.rows, p.columns, len(p.missing), len(p.keys),
        )  # fmt: skip
        t0 = time.perf_counter()
        with common.progress_bar(
            [], desc="evaluate", enabled=progress, total=len(p.missing), unit="result"
        ) as bar:
            for chunk in _chunks(range(len(p.subset)), config.attack_batch):
                _run_chunk(p, records, chunk, bar)
        seconds = time.perf_counter() - t0
        done = records.in_order(p.keys)
    return table5.summary_of_run(p, done, seconds)


def run(config: EvalConfig) -> int:
    """``shuffleguard evaluate``: run (or resume), write the report, print the table."""
    from service.research.experiments.table5 import write_outputs

    common.prepare_torch(config.device, config.threads, "shuffleguard evaluate")
    summary = run_evaluation(config, progress=not config.no_progress)
    paths = write_outputs(summary, config.out)
    if summary["reduced_strength"]:
        reduced = ", ".join(summary["reduced_strength"])
        print(f"REDUCED STRENGTH (plumbing test, not a result): {reduced}")
    for cell in summary["cells"]:
        print(
            f"{cell['defense']:>16} {cell['attack']:>10}: {100 * cell['accuracy']:5.1f}%"
            f" (n={cell['n']}{'' if cell['complete'] else ', incomplete'})"
        )
    check = summary["credibility_check"]
    if check.get("measured"):
        print(
            "EOT credibility check {}: EOT(identity) {:.1f}% vs I-FGSM {:.1f}% (undefended)".format(
                "passed" if check["passed"] else "FAILED",
                100 * check["eot_identity_accuracy"],
                100 * check["ifgsm_accuracy"],
            )
        )
    print(f"computed {summary['computed_this_run']} results; wrote {', '.join(map(str, paths))}")
    return 0
