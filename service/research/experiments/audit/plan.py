"""What an audit works on: the archived model, the clips and their roles, the attackers
the verdict assumes, and the record keys of the run."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.core.presets import ShufflePreset
from service.research.experiments import common
from service.research.experiments.audit.config import (
    ADAPTIVE,
    ATTACK_CELLS,
    CLIP_CELLS,
    RUN_CLIP,
    TRANSFER,
    AuditConfig,
)
from service.research.experiments.audit.labels import (
    AuditDataError,
    LabelRow,
    data_fingerprint,
    decode_clips,
    read_labels,
)
from service.research.experiments.evaluate import EOT_SEED_TAG
from service.research.experiments.records import Key
from service.research.robustness.attacks import EOT, IFGSM
from service.research.robustness.registry import (
    ATTACKS,
    DEFENSE_ROWS,
    Budget,
    RowContext,
    eot_for_row,
)

__all__ = ["Plan", "adaptive_attack", "attacker", "fingerprint", "keys", "make_plan"]

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """The run's model, clips and their roles (positions in ``rows``)."""

    config: AuditConfig
    model: nn.Module
    meta: Any  # service.gateway.backend.ModelMeta
    preset: ShufflePreset
    rows: list[LabelRow]  # by position in the labels file's (filtered) rows
    tune: list[int]  # positions in ``rows``
    evaluated: list[int]
    attacked: list[int]
    ctx: RowContext
    clips: dict[int, torch.Tensor]  # position in ``rows`` -> uint8 [T, crop, crop, 3]

    @property
    def budget(self) -> Budget:
        """The library's full-strength budget at the run's radius."""
        return Budget(eps=self.config.eps / 255)


def make_plan(config: AuditConfig) -> Plan:
    """Load the archive, read and order the clips, decode every clip used (a bad one
    stops the run before any work)."""
    from service.modelserver.archive import load_archived_network
    from service.modelserver.meta import ModelMeta

    path = Path(config.model)
    if not path.is_file():
        raise AuditDataError(f"--model {path}: no such archive")
    try:
        model, raw_meta = load_archived_network(path, config.device)
        meta = ModelMeta.from_dict(raw_meta)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise AuditDataError(f"--model {path}: not a ShuffleGuard archive ({exc})") from None
    rows = read_labels(config.data, config.labels, list(meta.labels), config.split)
    labels = torch.tensor([r.label for r in rows], dtype=torch.int64)
    order = common.stratified_subset(labels, None, config.subset_seed)
    if len(order) <= config.tune_clips:
        raise AuditDataError(
            f"{config.data}: {len(order)} clips, --tune-clips {config.tune_clips} would leave"
            " none to evaluate; add clips or lower --tune-clips"
        )
    tune, evaluated = order[: config.tune_clips], order[config.tune_clips :]
    evaluated = evaluated[: config.clips] if config.clips else evaluated
    if config.attack_clips > len(evaluated):
        logger.warning("--attack-clips %d > %d evaluated clips: attacking all of them",
                       config.attack_clips, len(evaluated))  # fmt: skip
    ctx = RowContext(model, len(meta.labels), meta.preset, batch_size=config.batch_size)
    # every clip is decoded before any work, so a bad one stops the run at once
    used = tune + evaluated
    clips = dict(zip(used, decode_clips(config.data, [rows[i] for i in used], meta), strict=True))
    return Plan(config, model, meta, meta.preset, rows, tune, evaluated,
                 evaluated[: config.attack_clips], ctx, clips)  # fmt: skip


def fingerprint(p: Plan) -> dict[str, Any]:
    """What makes records comparable (``run.json``): a rerun with another is refused."""
    c = p.config
    return {
        "weights_sha256": p.meta.sha256,
        "data_sha256": data_fingerprint(c.data, c.labels, p.rows),
        "split": c.split, "subset_seed": c.subset_seed, "seed": c.seed,
        "tune_clips": c.tune_clips, "preset": p.preset.to_dict(),
        "tune_grid": {"h1s": c.h1s, "h2s": c.h2s, "ensembles": c.ensembles,
                      "grid_ensemble": c.grid_ensemble, "clean_ratio": c.clean_ratio},
        "latency": {"clips": c.latency_clips, "repeats": c.latency_repeats, "device": c.device},
        "attacker": attacker(p),
        **asdict(p.budget),
    }  # fmt: skip


def keys(p: Plan) -> list[Key]:
    """Every record of the run: the clip cells, the attack cells, the tune, the latency."""
    s = p.config.seed
    out = [(s, p.rows[i].row, m, r) for i in p.evaluated for m, r in CLIP_CELLS]
    out += [(s, p.rows[i].row, m, r) for i in p.attacked for m, r in ATTACK_CELLS]
    return out + [(s, RUN_CLIP, "tune", "grid"), (s, RUN_CLIP, "latency", "cost")]


def adaptive_attack(p: Plan, name: str, clips: list[int] | None = None) -> EOT:
    """The white-box adaptive attack ``name`` (an entry of :data:`ADAPTIVE`) on the
    archive's preset at the run's radius, the registry's options at full strength; with
    ``clips`` (record clip ids), each clip's draws come from its own generator, so a
    clip's attack does not depend on the batch it was run in."""
    attack = eot_for_row("shuffle", p.model, p.ctx, p.budget, batch_size=p.config.eot_batch,
                         attack=name)  # fmt: skip
    if clips is not None:
        row_id = DEFENSE_ROWS["shuffle"].seed_id
        # the paper's EOT keeps the tags of the audits before the saturated variants
        tags = () if name == "eot" else (ATTACKS[name].seed_id,)
        attack.set_clip_generators(
            [common.generator(p.config.seed, cid, row_id, EOT_SEED_TAG, *tags) for cid in clips]
        )
    return attack


def attacker(p: Plan) -> dict[str, Any]:
    """The attackers the verdict assumes, with the settings they run with (read from the
    attacks themselves): each white-box adaptive EOT (it knows the model, the defense and
    its preset, not the defender's draws) and the transfer attack (crafted on the
    undefended model, sent through the defense)."""
    adaptive = []
    for name in ADAPTIVE:
        a = adaptive_attack(p, name)
        adaptive.append({
            "attack": name, "title": ATTACKS[name].title, "eps": a.eps, "steps": a.steps,
            "draws": a.draws, "alpha": a.alpha, "loss": a.loss, "kappa": a.kappa,
            "schedule": a.schedule, "momentum": a.momentum, "restarts": a.restarts,
            "patience": a.patience,
        })  # fmt: skip
    spec = ATTACKS[TRANSFER]
    assert spec.build is not None
    t = spec.build(p.model, p.budget)
    assert isinstance(t, IFGSM)
    transfer = {"attack": TRANSFER, "title": spec.title, "eps": t.eps, "steps": t.steps,
                "alpha": t.alpha}  # fmt: skip
    return {"white_box_adaptive": adaptive, "transfer": transfer}
