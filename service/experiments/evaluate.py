"""Attacks x defenses evaluation (paper Table 5), resumable, per clip.

Rows (defenses, :func:`service.robustness.smoothing.make_defenses`): ``none``, ``rs``
(randomized smoothing), ``denoise`` (denoised smoothing, needs a trained DnCNN),
``shuffle`` (the paper's ensemble), ``shuffle+rs``, ``shuffle+denoise``.

Columns: ``clean``, ``ifgsm``, ``flickering``, ``ofa`` (one frame attack), ``eot``.

* The non-adaptive columns (I-FGSM, flickering, OFA) are crafted once per clip against
  the **undefended** model and then classified by every row (the paper's setting).
  They use no randomness, so one adversarial clip serves every seed.
* The ``eot`` column is **adaptive to each row's randomness**
  (:func:`service.robustness.adaptive.eot_for_row`): shuffles for the shuffle rows,
  Gaussian noise for the RS rows, noise through the denoiser for the denoise rows,
  both for the combined rows; gradients flow through the gather and the denoiser.
  For the ``none`` row it is EOT with identity shuffles, which is the credibility
  check: it must fool the undefended model at least as well as plain I-FGSM. That
  check is always run (the ``none`` row and the ``ifgsm`` column are added when
  ``eot`` is asked for) and reported.

Attack budgets are the library defaults (I-FGSM/OFA/EOT ``eps = 4/255``, 30 steps,
``alpha = eps/30``, EOT 10 draws per step; flickering 2500 Adam steps, offsets within
``+-0.2``). A run with any smaller budget is stamped *REDUCED STRENGTH* in every output
and must not be reported as a result (it exists for plumbing tests).

Every (seed, clip, attack, row) result is one line of ``records.jsonl``, appended as
soon as it exists; a rerun with the same settings skips what is done, so an
interrupted run resumes. Seeds fix the defenses' random draws and the EOT draws,
derived per work unit (:func:`service.experiments.common.derive_seed`), so results do
not depend on the order or batching of the work.

Outputs in ``--out``: ``records.jsonl``, ``run.json``, ``table5.csv``, ``table5.json``,
``table5.md``, ``table5.png`` and ``per_clip.csv``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service import stats
from service.archive import sha256_file
from service.defense import ShufflePreset, majority_vote_batch
from service.experiments import common

__all__ = [
    "ATTACKS",
    "COLUMNS",
    "GOALS",
    "ROWS",
    "EvalConfig",
    "RecordStore",
    "preset_for_checkpoint",
    "resolve_preset",
    "run_evaluation",
    "summarize",
    "write_outputs",
]

logger = logging.getLogger(__name__)

#: Defense rows in report order.
ROWS: tuple[str, ...] = ("none", "rs", "denoise", "shuffle", "shuffle+rs", "shuffle+denoise")
#: Attacks that can be asked for; ``clean`` is always a column.
ATTACKS: tuple[str, ...] = ("ifgsm", "flickering", "ofa", "eot")
COLUMNS: tuple[str, ...] = ("clean", *ATTACKS)
NON_ADAPTIVE: tuple[str, ...] = ("ifgsm", "flickering", "ofa")
_ROW_ID = {r: i for i, r in enumerate(ROWS)}
_COL_ID = {c: i for i, c in enumerate(COLUMNS)}

#: The issue's goals for the shuffle row: accuracy / undefended clean accuracy.
GOALS: dict[str, float] = {
    "clean": 0.95,
    "ifgsm": 0.90,
    "eot": 0.80,
    "ofa": 0.95,
    "flickering": 0.80,
}

#: Preset used when neither the command line nor the checkpoint's sidecar gives one.
FALLBACK_PRESET = ShufflePreset(h1=3, h2=1, ensemble=10)

#: Full-strength budgets (the attack library's defaults).
FULL = {"eps": 4 / 255, "steps": 30, "eot_draws": 10, "flicker_steps": 2500, "flicker_eps": 0.2}

COLUMN_TITLES = {
    "clean": "clean",
    "ifgsm": "I-FGSM",
    "flickering": "flickering",
    "ofa": "OFA",
    "eot": "EOT (adaptive)",
}
ROW_TITLES = {
    "none": "none",
    "rs": "RS",
    "denoise": "denoise",
    "shuffle": "shuffle",
    "shuffle+rs": "shuffle+RS",
    "shuffle+denoise": "shuffle+denoise",
}


@dataclass
class EvalConfig:
    """Settings of one evaluation (saved to ``run.json`` and ``table5.json``)."""

    checkpoint: str
    data: str
    out: str = "docs/results/table5"
    split: str = "test"
    clips: int | None = None
    subset_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    defenses: list[str] = field(default_factory=lambda: list(ROWS))
    h1: int | None = None
    h2: int | None = None
    ensemble: int | None = None
    sigma: float = 0.25
    rs_n: int = 100
    rs_alpha: float = 0.001
    denoiser: str | None = None
    eps: float = FULL["eps"]
    steps: int = int(FULL["steps"])
    eot_draws: int = int(FULL["eot_draws"])
    flicker_steps: int = int(FULL["flicker_steps"])
    flicker_eps: float = FULL["flicker_eps"]
    attack_batch: int = 4
    eot_batch: int | None = 40
    batch_size: int = 32
    device: str = "cpu"
    threads: int = 2
    report_only: bool = False

    def __post_init__(self) -> None:
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise ValueError(f"unknown attacks {bad}; choose from {list(ATTACKS)}")
        bad = [r for r in self.defenses if r not in ROWS]
        if bad:
            raise ValueError(f"unknown defenses {bad}; choose from {list(ROWS)}")
        if not self.seeds:
            raise ValueError("need at least one seed")
        if self.clips is not None and self.clips < 1:
            raise ValueError(f"--clips must be >= 1, got {self.clips}")
        if min(self.steps, self.eot_draws, self.flicker_steps, self.attack_batch) < 1:
            raise ValueError("steps, draws and batch sizes must be >= 1")
        if self.rs_n < 1 or not 0 < self.rs_alpha < 1 or self.sigma < 0:
            raise ValueError("need --rs-n >= 1, 0 < --rs-alpha < 1, --sigma >= 0")

    @property
    def reduced(self) -> list[str]:
        """The budgets below full strength (empty for a reportable run)."""
        out = []
        for key, full in FULL.items():
            if getattr(self, key) < full - 1e-12:
                out.append(f"{key}={getattr(self, key):.6g} < {full:.6g}")
        return out

    def command(self) -> str:
        opts: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "data": self.data,
            "out": self.out,
            "split": self.split if self.split != "test" else None,
            "clips": self.clips,
            "subset_seed": self.subset_seed or None,
            "seeds": self.seeds,
            "attacks": self.attacks if list(self.attacks) != list(ATTACKS) else None,
            "defenses": self.defenses if list(self.defenses) != list(ROWS) else None,
            "h1": self.h1,
            "h2": self.h2,
            "ensemble": self.ensemble,
            "sigma": self.sigma if self.sigma != 0.25 else None,
            "rs_n": self.rs_n if self.rs_n != 100 else None,
            "rs_alpha": self.rs_alpha if self.rs_alpha != 0.001 else None,
            "denoiser": self.denoiser,
            "device": self.device,
            "report_only": self.report_only,
        }
        for key, full in FULL.items():
            if getattr(self, key) != full:
                opts[key] = getattr(self, key)
        return common.command_line(["shuffleguard", "evaluate"], opts)


def resolve_preset(config: EvalConfig) -> tuple[ShufflePreset, str]:
    """The shuffle preset of an evaluation (see :func:`preset_for_checkpoint`)."""
    return preset_for_checkpoint(config.checkpoint, config.h1, config.h2, config.ensemble)


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
        from service.archive import read_archive

        p = read_archive(checkpoint)[0]["preset"]
        base = ShufflePreset(int(p["h1"]), int(p["h2"]), int(p["ensemble"]))
        source = f"{checkpoint} meta.json"
    if sidecar.exists():
        p = json.loads(sidecar.read_text())["preset"]
        base = ShufflePreset(int(p["h1"]), int(p["h2"]), int(p["ensemble"]))
        source = f"{sidecar} (shuffleguard tune)"
    if h1 is not None or h2 is not None or ensemble is not None:
        source = "command line"
    preset = ShufflePreset(
        h1=h1 if h1 is not None else base.h1,
        h2=h2 if h2 is not None else base.h2,
        ensemble=ensemble if ensemble is not None else base.ensemble,
    )
    return preset, source


# --------------------------------------------------------------------------- #
# Records
# --------------------------------------------------------------------------- #
Key = tuple[int, int, str, str]  # (seed, clip id, attack, row)


class RecordStore:
    """``records.jsonl``: one JSON object per finished work unit, appended and flushed.

    A line cut short by an interruption is dropped on open (the file is truncated to
    its last complete line), so appending after a crash never corrupts it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[Key, dict[str, Any]] = {}
        if self.path.exists():
            raw = self.path.read_bytes()
            cut = raw.rfind(b"\n") + 1
            if cut != len(raw):
                logger.warning("%s: dropping an incomplete last line", self.path)
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            for line in raw[:cut].decode().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.records[self.key(rec)] = rec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")  # noqa: SIM115 - held open for the run, closed in close()

    @staticmethod
    def key(rec: dict[str, Any]) -> Key:
        return (int(rec["seed"]), int(rec["clip"]), str(rec["attack"]), str(rec["defense"]))

    def __contains__(self, key: Key) -> bool:
        return key in self.records

    def add(self, rec: dict[str, Any]) -> None:
        self.records[self.key(rec)] = rec
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# --------------------------------------------------------------------------- #
# Attacks and defenses
# --------------------------------------------------------------------------- #
def load_denoiser(path: str | Path, device: str) -> nn.Module:
    from service.experiments.denoiser import load_denoiser as _load

    return _load(path, device)


def _craft_nonadaptive(
    name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EvalConfig
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Adversarial clips against the undefended model, and per-clip extras."""
    from service.robustness.attacks import IFGSM, Flickering, OneFrameAttack, flicker_metrics

    extras: list[dict[str, Any]] = [{} for _ in range(x.shape[0])]
    if name == "ifgsm":
        adv = IFGSM(model, eps=config.eps, steps=config.steps)(x, y)
    elif name == "ofa":
        attack = OneFrameAttack(model, eps=config.eps, steps=config.steps)
        adv = attack(x, y)
        assert attack.last_frames is not None
        for e, f in zip(extras, attack.last_frames.tolist(), strict=True):
            e["frame"] = int(f)
    elif name == "flickering":
        adv = Flickering(model, eps=config.flicker_eps, steps=config.flicker_steps)(x, y)
        thick, rough = flicker_metrics(adv - x)
        for e, t, r in zip(extras, thick.tolist(), rough.tolist(), strict=True):
            e["thickness_pct"], e["roughness_pct"] = float(t), float(r)
    else:
        raise ValueError(f"not a non-adaptive attack: {name}")
    return adv, extras


def _predict(
    row: str, defense: Any, model: nn.Module, x: torch.Tensor, gen: torch.Generator
) -> dict[str, Any]:
    """One clip ``x [1, 3, T, H, W]`` through one defense row."""
    from service.robustness.smoothing import ABSTAIN, ShuffleDefense

    out: dict[str, Any] = {}
    with torch.no_grad():
        out["undefended_pred"] = int(model(x).argmax(dim=1)[0])
    if isinstance(defense, ShuffleDefense):
        labels, counts, _ = majority_vote_batch(defense.logits(x, gen))
        pred = int(labels[0])
        out["votes"] = [int(c) for c in counts[0].tolist()]
        out["vote_share"] = float(counts[0, pred]) / float(counts[0].sum())
    else:
        pred = int(defense.predict(x, gen)[0])
    out["pred"] = pred
    out["abstain"] = pred == ABSTAIN
    return out


def _norms(adv: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    delta = (adv - clean).float()
    return float(delta.abs().max()), float(delta.flatten().norm())


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #
def _rows_for(config: EvalConfig, have_denoiser: bool) -> list[str]:
    rows = [r for r in ROWS if r in config.defenses or r == "none"]
    if not have_denoiser:
        dropped = [r for r in rows if "denoise" in r]
        if dropped:
            logger.warning("no --denoiser given: skipping rows %s", dropped)
        rows = [r for r in rows if "denoise" not in r]
    return rows


def _columns_for(config: EvalConfig) -> list[str]:
    cols = ["clean", *[a for a in ATTACKS if a in config.attacks]]
    if "eot" in cols and "ifgsm" not in cols:
        cols.insert(1, "ifgsm")  # the credibility check needs I-FGSM on the none row
    return [c for c in COLUMNS if c in cols]


def _cell_rows(column: str, rows: Sequence[str], config: EvalConfig) -> list[str]:
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
        **{k: getattr(config, k) for k in FULL},
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


def _iter_chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def run_evaluation(config: EvalConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the evaluation; returns the summary (see :func:`summarize`)."""
    from tqdm.auto import tqdm

    from service.robustness.adaptive import eot_for_row
    from service.robustness.smoothing import make_defenses
    from service.train import clips_to_input

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    preset, preset_source = resolve_preset(config)
    fp = fingerprint(config, preset)
    run_path = out / "run.json"
    if run_path.exists():
        check_compatible(json.loads(run_path.read_text()).get("fingerprint"), fp, out)
    common.write_json(run_path, {"fingerprint": fp, "config": asdict(config)})

    model, ckpt = common.load_model(config.checkpoint, config.device)
    data = common.load_split(config.data, config.split)
    subset = data.take(common.stratified_subset(data.labels, config.clips, config.subset_seed))
    denoiser = load_denoiser(config.denoiser, config.device) if config.denoiser else None
    rows = _rows_for(config, denoiser is not None)
    columns = _columns_for(config)
    num_classes = len(data.label_names)
    defenses = make_defenses(
        model,
        num_classes=num_classes,
        preset=preset,
        sigma=config.sigma,
        n=config.rs_n,
        alpha=config.rs_alpha,
        batch_size=config.batch_size,
        denoiser=denoiser,
    )
    store = RecordStore(out / "records.jsonl")
    plan: list[Key] = [
        (s, cid, col, row)
        for cid in subset.index
        for col in columns
        for s in config.seeds
        for row in _cell_rows(col, rows, config)
    ]
    missing = {k for k in plan if k not in store}
    if config.report_only:
        logger.info("report only: %d of %d results missing are left out", len(missing), len(plan))
        missing = set()
    logger.info(
        "evaluate: %d clips x %d seeds, rows %s, columns %s: %d of %d results to compute",
        len(subset),
        len(config.seeds),
        rows,
        columns,
        len(missing),
        len(plan),
    )
    bar = tqdm(total=len(missing), desc="evaluate", unit="result", disable=not progress)
    device = torch.device(config.device)
    t_run = time.perf_counter()
    try:
        positions = list(range(len(subset)))
        for chunk in _iter_chunks(positions, config.attack_batch):
            ids = [subset.index[p] for p in chunk]
            todo = {k for k in missing if k[1] in ids}
            if not todo:
                continue
            x = clips_to_input(subset.clips[chunk], device)
            y = subset.labels[chunk].to(device)
            inputs: dict[str, tuple[torch.Tensor, list[dict[str, Any]], float]] = {
                "clean": (x, [{} for _ in chunk], 0.0)
            }
            for col in columns:
                if col not in NON_ADAPTIVE:
                    continue
                need = [
                    i for i, cid in enumerate(ids) if any(k[1] == cid and k[2] == col for k in todo)
                ]
                if not need:
                    continue
                t0 = time.perf_counter()
                adv, extras = _craft_nonadaptive(col, model, x[need], y[need], config)
                per_clip = (time.perf_counter() - t0) / len(need)
                full_adv = x.clone()
                full_adv[need] = adv
                full_extras: list[dict[str, Any]] = [{} for _ in chunk]
                for j, i in enumerate(need):
                    full_extras[i] = extras[j]
                inputs[col] = (full_adv, full_extras, per_clip)

            def record(
                i: int,
                s: int,
                col: str,
                row: str,
                xin: torch.Tensor,
                attack_s: float,
                extra: dict[str, Any],
                ids: list[int] = ids,
                x: torch.Tensor = x,
                y: torch.Tensor = y,
            ) -> None:
                cid, label = ids[i], int(y[i])
                t1 = time.perf_counter()
                gen = common.generator(s, cid, _ROW_ID[row], _COL_ID[col])
                result = _predict(row, defenses[row], model, xin, gen)
                defense_s = time.perf_counter() - t1
                linf, l2 = _norms(xin, x[i : i + 1])
                store.add(
                    {
                        "seed": s,
                        "clip": cid,
                        "label": label,
                        "attack": col,
                        "defense": row,
                        "correct": result["pred"] == label,
                        "linf": linf,
                        "l2": l2,
                        "attack_seconds": attack_s,
                        "defense_seconds": defense_s,
                        "device": config.device,
                        "extra": extra,
                        **result,
                    }
                )
                bar.update(1)

            for i, cid in enumerate(ids):
                for col in columns:
                    if col not in inputs:  # EOT below; or nothing left to do here
                        continue
                    batch, extras_c, attack_s = inputs[col]
                    for s in config.seeds:
                        for row in _cell_rows(col, rows, config):
                            if (s, cid, col, row) in todo:
                                record(
                                    i, s, col, row, batch[i : i + 1], attack_s, dict(extras_c[i])
                                )
            if "eot" not in columns:
                continue
            # EOT: one batched attack per (seed, row) over the chunk's clips, each clip
            # drawing its shuffles and noise from its own generator (seed, clip, row).
            for s in config.seeds:
                for row in rows:
                    need = [i for i, cid in enumerate(ids) if (s, cid, "eot", row) in todo]
                    if not need:
                        continue
                    t0 = time.perf_counter()
                    attack = eot_for_row(
                        row,
                        model,
                        preset=preset,
                        sigma=config.sigma,
                        denoiser=denoiser,
                        draws=config.eot_draws,
                        eps=config.eps,
                        steps=config.steps,
                        batch_size=config.eot_batch,
                    )
                    attack.set_clip_generators(
                        [
                            torch.Generator().manual_seed(
                                common.derive_seed(s, ids[i], _ROW_ID[row], 99)
                            )
                            for i in need
                        ]
                    )
                    adv = attack(x[need], y[need])
                    attack_s = (time.perf_counter() - t0) / len(need)
                    for j, i in enumerate(need):
                        record(i, s, "eot", row, adv[j : j + 1], attack_s, {})
    finally:
        bar.close()
        store.close()
    seconds = time.perf_counter() - t_run
    records = [store.records[k] for k in plan if k in store]
    summary = summarize(records, config, rows=rows, columns=columns, clip_ids=subset.index)
    summary.update(
        {
            "preset": preset.to_dict(),
            "preset_source": preset_source,
            "model": {
                "checkpoint": config.checkpoint,
                "arch": ckpt.get("arch"),
                "model_kwargs": ckpt.get("model_kwargs"),
                "dataset": ckpt.get("dataset"),
                "clip_len": ckpt.get("clip_len"),
                "crop_size": ckpt.get("crop_size"),
                "test_accuracy": ckpt.get("test_accuracy"),
            },
            "data": {"dir": config.data, "split": config.split, "clips": len(subset)},
            "clip_ids": subset.index,
            "skipped_rows": [r for r in config.defenses if r not in rows],
            "seconds_this_run": seconds,
            "computed_this_run": len(missing),
            "environment": common.environment(config.device),
        }
    )
    return summary


# --------------------------------------------------------------------------- #
# Summary
# --------------------------------------------------------------------------- #
def summarize(
    records: Sequence[dict[str, Any]],
    config: EvalConfig,
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    clip_ids: Sequence[int],
) -> dict[str, Any]:
    """Accuracy per (row, column): mean over seeds of the accuracy over clips, a 95%
    Student-t interval over seeds and a Wilson interval over all clip x seed trials.

    An abstention (smoothing rows) counts as wrong. A cell is ``complete`` when it has
    a record for every (seed, clip).
    """
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_cell[(r["defense"], r["attack"])].append(r)
    cells: list[dict[str, Any]] = []
    expected = len(clip_ids) * len(config.seeds)
    for row in rows:
        for col in columns:
            recs = by_cell.get((row, col), [])
            if not recs:
                continue
            per_seed = []
            for s in config.seeds:
                rs = [r for r in recs if r["seed"] == s]
                if rs:
                    per_seed.append(sum(bool(r["correct"]) for r in rs) / len(rs))
            mean, half = stats.mean_ci(per_seed)
            correct = sum(bool(r["correct"]) for r in recs)
            lo, hi = stats.wilson(correct, len(recs))
            cells.append(
                {
                    "defense": row,
                    "attack": col,
                    "accuracy": mean,
                    "ci95_seeds": half,
                    "wilson_low": lo,
                    "wilson_high": hi,
                    "per_seed": per_seed,
                    "n": len(recs),
                    "complete": len(recs) == expected,
                    "abstain_rate": sum(bool(r.get("abstain")) for r in recs) / len(recs),
                    "undefended_fooled": sum(r["undefended_pred"] != r["label"] for r in recs)
                    / len(recs),
                    "linf_mean": sum(r["linf"] for r in recs) / len(recs),
                    "l2_mean": sum(r["l2"] for r in recs) / len(recs),
                    "attack_seconds_mean": sum(r["attack_seconds"] for r in recs) / len(recs),
                    "defense_seconds_mean": sum(r["defense_seconds"] for r in recs) / len(recs),
                }
            )
    summary: dict[str, Any] = {
        "table": "table5",
        "command": config.command(),
        "config": asdict(config),
        "reduced_strength": config.reduced,
        "rows": list(rows),
        "columns": list(columns),
        "cells": cells,
        "credibility_check": credibility_check(records, config),
        "computed_on": sorted({str(r.get("device", "?")) for r in records}),
        "goals": goals(cells),
    }
    return summary


def _cell(cells: Sequence[dict[str, Any]], row: str, col: str) -> dict[str, Any] | None:
    for c in cells:
        if c["defense"] == row and c["attack"] == col:
            return c
    return None


def credibility_check(records: Sequence[dict[str, Any]], config: EvalConfig) -> dict[str, Any]:
    """EOT with identity shuffles vs I-FGSM, both on the undefended model.

    Passes when EOT leaves at most as many clips correct as I-FGSM (it fools the
    model at least as well), per seed and pooled. ``ifgsm_only_fooled`` lists the
    (seed, clip) that I-FGSM fooled and EOT did not.
    """
    ifgsm = {
        (r["seed"], r["clip"]): r
        for r in records
        if r["defense"] == "none" and r["attack"] == "ifgsm"
    }
    eot = {
        (r["seed"], r["clip"]): r
        for r in records
        if r["defense"] == "none" and r["attack"] == "eot"
    }
    both = sorted(set(ifgsm) & set(eot))
    if not both:
        return {"measured": False, "passed": None}
    # I-FGSM has no randomness: its (seed 0) clip serves every seed.
    acc_ifgsm = sum(bool(ifgsm[k]["correct"]) for k in both) / len(both)
    acc_eot = sum(bool(eot[k]["correct"]) for k in both) / len(both)
    only = [list(k) for k in both if not ifgsm[k]["correct"] and eot[k]["correct"]]
    return {
        "measured": True,
        "pairs": len(both),
        "ifgsm_accuracy": acc_ifgsm,
        "eot_identity_accuracy": acc_eot,
        "passed": acc_eot <= acc_ifgsm + 1e-12,
        "ifgsm_only_fooled": only,
    }


def goals(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shuffle-row accuracy relative to the undefended clean accuracy, per goal."""
    base = _cell(cells, "none", "clean")
    out = []
    for col, goal in GOALS.items():
        c = _cell(cells, "shuffle", col)
        if base is None or c is None or not base["accuracy"]:
            continue
        ratio = c["accuracy"] / base["accuracy"]
        out.append(
            {
                "column": col,
                "goal": goal,
                "shuffle_accuracy": c["accuracy"],
                "wilson_low": c["wilson_low"],
                "wilson_high": c["wilson_high"],
                "n": c["n"],
                "ratio": ratio,
                "met": ratio >= goal,
            }
        )
    return out


# --------------------------------------------------------------------------- #
# Outputs
# --------------------------------------------------------------------------- #
def _fmt_cell(c: dict[str, Any] | None, n_seeds: int) -> str:
    if c is None:
        return "-"
    text = common.pct(c["accuracy"])
    if n_seeds > 1:
        text += f" ± {common.pct(c['ci95_seeds'])}"
    if c["abstain_rate"] > 0:
        text += f" (abst. {common.pct(c['abstain_rate'], 0)})"
    if not c["complete"]:
        text += " *"
    return text


def write_outputs(
    summary: dict[str, Any], out_dir: str | Path, records_path: str | Path | None = None
) -> list[Path]:
    """``table5.{csv,json,md,png}`` and ``per_clip.csv``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"table5.{ext}" for ext in ("csv", "json", "md", "png")] + [out / "per_clip.csv"]
    cells = summary["cells"]
    common.write_csv(
        paths[0],
        [
            "defense",
            "attack",
            "accuracy",
            "ci95_seeds",
            "wilson_low",
            "wilson_high",
            "n",
            "complete",
            "abstain_rate",
            "undefended_fooled",
            "linf_mean",
            "l2_mean",
            "attack_seconds_mean",
            "defense_seconds_mean",
        ],
        [
            [
                c["defense"],
                c["attack"],
                f"{c['accuracy']:.4f}",
                f"{c['ci95_seeds']:.4f}",
                f"{c['wilson_low']:.4f}",
                f"{c['wilson_high']:.4f}",
                c["n"],
                c["complete"],
                f"{c['abstain_rate']:.4f}",
                f"{c['undefended_fooled']:.4f}",
                f"{c['linf_mean']:.6f}",
                f"{c['l2_mean']:.4f}",
                f"{c['attack_seconds_mean']:.3f}",
                f"{c['defense_seconds_mean']:.3f}",
            ]
            for c in cells
        ],
    )
    common.write_json(paths[1], summary)
    paths[2].write_text(markdown(summary))
    plot(summary, paths[3])
    src = Path(records_path) if records_path else out / "records.jsonl"
    write_per_clip(src, paths[4], summary)
    return paths


def write_per_clip(records_path: Path, path: Path, summary: dict[str, Any]) -> None:
    """One line per record, with the same defense's clean prediction beside it."""
    recs = [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
    wanted = set(summary.get("clip_ids", [])) or {r["clip"] for r in recs}
    seeds = set(summary["config"]["seeds"])
    recs = [r for r in recs if r["clip"] in wanted and r["seed"] in seeds]
    clean = {(r["seed"], r["clip"], r["defense"]): r for r in recs if r["attack"] == "clean"}
    order = {c: i for i, c in enumerate(COLUMNS)}
    recs.sort(key=lambda r: (r["seed"], r["clip"], order[r["attack"]], _ROW_ID[r["defense"]]))
    rows = []
    for r in recs:
        c = clean.get((r["seed"], r["clip"], r["defense"]))
        rows.append(
            [
                r["seed"],
                r["clip"],
                r["label"],
                r["attack"],
                r["defense"],
                "" if c is None else c["pred"],
                r["pred"],
                "" if c is None else int(c["correct"]),
                int(r["correct"]),
                int(bool(r.get("abstain"))),
                r["undefended_pred"],
                "" if r.get("vote_share") is None else f"{r['vote_share']:.3f}",
                f"{r['linf']:.6f}",
                f"{r['l2']:.4f}",
                f"{r['attack_seconds']:.3f}",
                f"{r['defense_seconds']:.3f}",
                json.dumps(r.get("extra") or {}, sort_keys=True),
            ]
        )
    common.write_csv(
        path,
        [
            "seed",
            "clip",
            "label",
            "attack",
            "defense",
            "pred_clean",
            "pred_adv",
            "correct_clean",
            "correct_adv",
            "abstain",
            "undefended_pred",
            "vote_share",
            "linf",
            "l2",
            "attack_seconds",
            "defense_seconds",
            "extra",
        ],
        rows,
    )


def markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    n_seeds = len(cfg["seeds"])
    cells = summary["cells"]
    cols = summary["columns"]
    lines = ["# Table 5: attacks x defenses", ""]
    if summary["reduced_strength"]:
        lines += [
            "**REDUCED STRENGTH -- a plumbing test, not a result:** "
            + ", ".join(summary["reduced_strength"])
            + ".",
            "",
        ]
    n_clips = summary.get("data", {}).get("clips", "?")
    lines += [
        f"Top-1 accuracy (%) on {n_clips} class-stratified test clips"
        + (f", mean ± 95% CI (Student t) over {n_seeds} seeds" if n_seeds > 1 else ", one seed")
        + ". The clean, I-FGSM, flickering and OFA columns are crafted once against the"
        " **undefended** model and then classified by each defense (the paper's setting);"
        " the EOT column is **adaptive to each row's randomness** (shuffles, Gaussian noise,"
        " noise through the denoiser, or both), and for the `none` row it is EOT with identity"
        " shuffles. Smoothing rows abstain by a two-sided binomial test; an abstention counts"
        " as wrong. `*` marks an incomplete cell.",
        "",
        *common.produced_by(summary["command"]),
    ]
    header = ["defense", *[COLUMN_TITLES[c] for c in cols]]
    body = [
        [ROW_TITLES[r], *[_fmt_cell(_cell(cells, r, c), n_seeds) for c in cols]]
        for r in summary["rows"]
    ]
    lines += [common.markdown_table(header, body), ""]
    if summary.get("skipped_rows"):
        lines += [
            f"Rows not run (no `--denoiser` given): {', '.join(summary['skipped_rows'])}.",
            "",
        ]
    check = summary["credibility_check"]
    if check.get("measured"):
        verdict = "PASSES" if check["passed"] else "FAILS"
        lines += [
            f"**EOT credibility check {verdict}:** on the undefended model, EOT with identity"
            f" shuffles leaves {common.pct(check['eot_identity_accuracy'])}% correct vs"
            f" {common.pct(check['ifgsm_accuracy'])}% for I-FGSM ({check['pairs']} seed x clip"
            f" pairs; {len(check['ifgsm_only_fooled'])} fooled by I-FGSM only).",
            "",
        ]
    g = summary["goals"]
    if g:
        lines += [
            "Goals for the shuffle row (accuracy relative to the undefended clean accuracy;"
            " the interval is the 95% Wilson interval of the accuracy over all clip x seed"
            " trials, so it shows how few clips a small run has):",
            "",
            common.markdown_table(
                ["column", "goal", "shuffle acc.", "95% interval (n)", "ratio", "met"],
                [
                    [
                        COLUMN_TITLES[x["column"]],
                        f">= {common.pct(x['goal'], 0)}%",
                        common.pct(x["shuffle_accuracy"]),
                        f"{common.pct(x['wilson_low'])}-{common.pct(x['wilson_high'])} ({x['n']})",
                        common.pct(x["ratio"]),
                        "yes" if x["met"] else "**no**",
                    ]
                    for x in g
                ],
            ),
            "",
        ]
    preset = summary.get("preset", {})
    lines += [
        "Settings: shuffle preset h1 = {h1}, h2 = {h2}, ensemble = {ens} ({src}); RS sigma = {sig}"
        " (pixel units), n = {n}, alpha = {a}; I-FGSM/OFA/EOT eps = {eps:.5f} ({eps255:.1f}/255),"
        " {steps} steps, EOT {draws} draws per step; flickering {fsteps} Adam steps, offsets"
        " within ±{feps}.".format(
            h1=preset.get("h1"),
            h2=preset.get("h2"),
            ens=preset.get("ensemble"),
            src=summary.get("preset_source", "?"),
            sig=cfg["sigma"],
            n=cfg["rs_n"],
            a=cfg["rs_alpha"],
            eps=cfg["eps"],
            eps255=cfg["eps"] * 255,
            steps=cfg["steps"],
            draws=cfg["eot_draws"],
            fsteps=cfg["flicker_steps"],
            feps=cfg["flicker_eps"],
        ),
        "",
        "Cost (mean seconds per clip): "
        + ", ".join(
            f"{COLUMN_TITLES[c['attack']]} on {c['defense']}: attack {c['attack_seconds_mean']:.1f}"
            f" + defense {c['defense_seconds_mean']:.2f}"
            for c in cells
            if c["attack"] != "clean" and (c["attack"] == "eot" or c["defense"] == "none")
        )
        + ".",
        "",
    ]
    if cfg.get("report_only"):
        lines += [
            "Tabulated with `--report-only` from records computed on: "
            + ", ".join(summary.get("computed_on", []))
            + " (see `records.jsonl`).",
            "",
        ]
    env = summary.get("environment", {})
    if env:
        lines += [
            f"Environment: torch {env.get('torch')}, device {env.get('device')}"
            + (f" ({env['gpu']})" if env.get("gpu") else "")
            + f", {env.get('threads')} CPU threads.",
            "",
        ]
    lines += ["![Table 5](table5.png)", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = summary["columns"]
    rows = summary["rows"]
    cells = summary["cells"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cols)), 4.2), dpi=120)
    width = 0.8 / max(1, len(rows))
    for j, row in enumerate(rows):
        xs, ys, es = [], [], []
        for i, col in enumerate(cols):
            c = _cell(cells, row, col)
            if c is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(100 * c["accuracy"])
            es.append(100 * c["ci95_seeds"])
        ax.bar(xs, ys, width=width, yerr=es, capsize=2, label=ROW_TITLES[row])
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([COLUMN_TITLES[c] for c in cols])
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    title = "Table 5: attacks x defenses"
    if summary["reduced_strength"]:
        title += " (REDUCED STRENGTH: plumbing test)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(rows), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
