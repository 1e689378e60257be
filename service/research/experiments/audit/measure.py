"""The measurements of an audit, each a record of ``records.jsonl``: the clip cells
(clean, uniformized, permuted), the attack cells (transfer I-FGSM, the white-box adaptive
EOTs), the preset tune and the latency. :func:`work` computes the missing ones."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from service.research.experiments import common
from service.research.experiments.audit.config import (
    ADAPTIVE,
    ATTACK_CELLS,
    CLIP_CELLS,
    MEASURE_TAGS,
    RUN_CLIP,
    TRANSFER,
)
from service.research.experiments.audit.labels import AuditDataError
from service.research.experiments.audit.plan import Plan, adaptive_attack
from service.research.experiments.records import Key, Records
from service.research.robustness.registry import ATTACKS, DEFENSE_ROWS

__all__ = ["work"]


def _gen(seed: int, clip: int, measure: str, row: str) -> torch.Generator:
    tag = ATTACKS[measure].seed_id if measure in ATTACKS else MEASURE_TAGS[measure]
    return common.generator(seed, clip, tag, DEFENSE_ROWS[row].seed_id)


def _record(key: Key, label: int, pred: int, **extra: Any) -> dict[str, Any]:
    seed, clip, measure, row = key
    return {"seed": seed, "clip": clip, "attack": measure, "defense": row, "label": label,
            "pred": pred, "correct": pred == label, **extra}  # fmt: skip


def _score(
    p: Plan, key: Key, x: torch.Tensor, label: int, clean: torch.Tensor | None = None
) -> dict[str, Any]:
    """One clip ``x [1, 3, T, H, W]`` through row ``key[3]`` (one record)."""
    seed, clip, measure, row = key
    labels, counts = DEFENSE_ROWS[row].build(p.ctx).vote(x, _gen(seed, clip, measure, row))
    pred = int(labels[0])
    extra: dict[str, Any] = {}
    if counts is not None:
        extra["vote_share"] = float(counts[0, pred]) / float(counts[0].sum())
    if clean is not None:
        extra["linf"] = float((x - clean).abs().max())
    return _record(key, label, pred, **extra)


def _clip_cells(p: Plan, records: Records, chunk: list[int], x: torch.Tensor, bar: Any) -> None:
    """Clean (both rows), uniformized and permuted records of the clips ``chunk``."""
    from service.core.transforms import chunk_shuffle_indices, uniformize

    s, T = p.config.seed, x.shape[2]
    y = [p.rows[i].label for i in chunk]
    ids = [p.rows[i].row for i in chunk]
    for j, cid in enumerate(ids):
        for measure, row in (("clean", "none"), ("clean", "shuffle")):
            if (s, cid, measure, row) not in records:
                records.add(_score(p, (s, cid, measure, row), x[j : j + 1], y[j]))
                bar.update(1)
    todo = [j for j, cid in enumerate(ids) if (s, cid, "uniformized", "none") not in records]
    if todo:
        with torch.no_grad():
            hits = torch.zeros(len(todo), dtype=torch.int64)
            for i in range(T):
                pred = p.model(uniformize(x[todo], i, 2)).argmax(dim=1).cpu()
                hits += (pred == torch.tensor([y[j] for j in todo])).long()
        for n, j in enumerate(todo):
            key = (s, ids[j], "uniformized", "none")
            records.add(_record(key, y[j], -1, correct_frames=int(hits[n]), frames=T))
            bar.update(1)
    for j, cid in enumerate(ids):
        key = (s, cid, "permuted", "none")
        if key in records:
            continue
        idx = chunk_shuffle_indices(T, T, 1, _gen(s, cid, "permuted", "none"))[0]
        with torch.no_grad():
            pred = int(p.model(x[j : j + 1].index_select(2, idx.to(x.device))).argmax(dim=1)[0])
        records.add(_record(key, y[j], pred, order=idx.tolist()))
        bar.update(1)


def _attack_cells(p: Plan, records: Records, chunk: list[int], x: torch.Tensor, bar: Any) -> None:
    """Transfer I-FGSM (undefended, defended) and each adaptive EOT (defended) records
    of the clips ``chunk``."""
    s = p.config.seed
    y = torch.tensor([p.rows[i].label for i in chunk], dtype=torch.int64, device=x.device)
    ids = [p.rows[i].row for i in chunk]
    transfer = [(TRANSFER, "none"), (TRANSFER, "shuffle")]
    need = [j for j, cid in enumerate(ids) if any((s, cid, *c) not in records for c in transfer)]
    if need:
        spec = ATTACKS[TRANSFER]
        assert spec.build is not None
        adv = spec.build(p.model, p.budget)(x[need], y[need])
        _score_attacked(p, records, (x, y, ids), need, adv, transfer, bar)
    for name in ADAPTIVE:
        need = [j for j, cid in enumerate(ids) if (s, cid, name, "shuffle") not in records]
        if need:
            adv = adaptive_attack(p, name, [ids[j] for j in need])(x[need], y[need])
            _score_attacked(p, records, (x, y, ids), need, adv, [(name, "shuffle")], bar)


def _score_attacked(
    p: Plan, records: Records, chunk: tuple[torch.Tensor, torch.Tensor, list[int]],
    need: list[int], adv: torch.Tensor, cells: list[tuple[str, str]], bar: Any,
) -> None:  # fmt: skip
    """The missing records of ``cells`` for the clips ``need`` of ``chunk`` (clean clips,
    labels, record ids), from their adversarial clips ``adv`` (one per clip of ``need``)."""
    x, y, ids = chunk
    for n, j in enumerate(need):
        for measure, row in cells:
            key = (p.config.seed, ids[j], measure, row)
            if key not in records:
                records.add(_score(p, key, adv[n : n + 1], int(y[j]), x[j : j + 1]))
                bar.update(1)


def _tune(p: Plan, x: torch.Tensor) -> dict[str, Any]:
    """The preset tune of ``shuffleguard tune`` on the tune clips (no files written)."""
    from service.research.experiments.tune import TUNE_ATTACKS, TuneConfig, tune_on

    c = p.config
    h2s = [h for h in c.h2s if h <= p.meta.clip_len]
    if not h2s:
        raise AuditDataError(f"--h2s {c.h2s}: every value exceeds clip_len {p.meta.clip_len}")
    tc = TuneConfig(
        checkpoint=c.model, data=c.data, split="all", out=c.out, h1s=c.h1s, h2s=h2s,
        ensembles=c.ensembles, grid_ensemble=c.grid_ensemble, attacks=list(TUNE_ATTACKS),
        seeds=[c.seed], clean_ratio=c.clean_ratio, device=c.device, threads=c.threads,
        batch_size=c.batch_size, attack_batch=c.attack_batch, no_progress=c.no_progress,
        no_preset=True,
    )  # fmt: skip
    labels = torch.tensor([p.rows[i].label for i in p.tune], dtype=torch.int64)
    res = tune_on(tc, p.model, x, labels, [p.rows[i].row for i in p.tune])
    keep = ("clips", "undefended_clean", "clean_floor", "attacks", "grid_ensemble", "cells",
            "chosen_cell", "ensembles", "chosen_ensemble", "preset", "criterion")  # fmt: skip
    return {k: res[k] for k in keep}


def _latency(p: Plan, x: torch.Tensor) -> dict[str, Any]:
    """Median seconds per clip of the undefended forward and of the defended vote."""
    from service.core.stats import percentile

    c = p.config
    undefended, defended = [], []
    shuffle = DEFENSE_ROWS["shuffle"].build(p.ctx)
    none = DEFENSE_ROWS["none"].build(p.ctx)
    gen = common.generator(c.seed, RUN_CLIP, MEASURE_TAGS["latency"])
    # warm-up: TorchScript profiles and optimizes its first calls
    none.vote(x[:1])
    shuffle.vote(x[:1], gen)
    for j in range(x.shape[0]):
        clip = x[j : j + 1]
        for _ in range(c.latency_repeats):
            t0 = time.perf_counter()
            none.vote(clip)
            t1 = time.perf_counter()
            shuffle.vote(clip, gen)
            t2 = time.perf_counter()
            undefended.append(t1 - t0)
            defended.append(t2 - t1)
    und, dfd = percentile(undefended, 50), percentile(defended, 50)
    assert und is not None and dfd is not None
    return {
        "clips": int(x.shape[0]), "repeats": c.latency_repeats, "device": c.device,
        "threads": torch.get_num_threads(), "undefended_seconds": und, "defended_seconds": dfd,
        "undefended_model_evaluations": 1, "defended_model_evaluations": p.preset.ensemble,
    }  # fmt: skip


def _floats(p: Plan, positions: list[int]) -> torch.Tensor:
    """float ``[n, 3, T, crop, crop]`` in ``[0, 1]`` of the clips at ``positions``."""
    clips = torch.stack([p.clips[i] for i in positions])
    return common.to_float(clips).to(p.config.device)


def _as_read_back(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` as a rerun reads it from ``records.jsonl`` (sorted keys), so a first run
    and its rerun write the same report."""
    return dict(json.loads(json.dumps(result, sort_keys=True)))


def work(p: Plan, records: Records, missing: set[Key], bar: Any) -> None:
    """Compute the ``missing`` records (each advances ``bar`` by one)."""
    c, s = p.config, p.config.seed
    for start in range(0, len(p.evaluated), c.batch_size):
        chunk = p.evaluated[start : start + c.batch_size]
        if any((s, p.rows[i].row, m, r) in missing for i in chunk for m, r in CLIP_CELLS):
            _clip_cells(p, records, chunk, _floats(p, chunk), bar)
    for start in range(0, len(p.attacked), c.attack_batch):
        chunk = p.attacked[start : start + c.attack_batch]
        if any((s, p.rows[i].row, m, r) in missing for i in chunk for m, r in ATTACK_CELLS):
            _attack_cells(p, records, chunk, _floats(p, chunk), bar)
    key = (s, RUN_CLIP, "tune", "grid")
    if key in missing:
        records.add({"seed": s, "clip": RUN_CLIP, "attack": "tune", "defense": "grid",
                     "result": _as_read_back(_tune(p, _floats(p, p.tune)))})  # fmt: skip
        bar.update(1)
    key = (s, RUN_CLIP, "latency", "cost")
    if key in missing:
        timed = _floats(p, p.evaluated[: c.latency_clips])
        records.add({"seed": s, "clip": RUN_CLIP, "attack": "latency", "defense": "cost",
                     "result": _as_read_back(_latency(p, timed))})  # fmt: skip
        bar.update(1)
