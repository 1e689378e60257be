"""``shuffleguard audit``: should this model be served behind the shuffle defense?

A user brings a served archive (``--model X.mar``: TorchScript ``model.pt`` or
``torch.export`` ``model.pt2`` + ``meta.json``, any architecture) and a directory of
their own labelled clips (``--data DIR``, see :func:`read_labels` and docs/audit.md).
Clips are decoded exactly as the gateway decodes an upload
(:func:`service.decoder.decode.decode_clip` with the archive's ``clip_len``, ``frame_interval``,
``crop_size``, ``resize`` and ``transform``), so the audit sees what the served model
would see. Gradients flow through the archived network itself.

Measured (accuracy, with Wilson intervals from :mod:`service.core.stats`):

* on the evaluated clips: clean accuracy undefended and defended (the shuffle
  ensemble with the archive's preset), uniformized accuracy (paper Table 1: every
  frame replaced by frame ``i``, averaged over ``i``; a bootstrap interval over clips)
  and fully permuted accuracy (paper Fig. 2 at chunk size ``N = T``);
* on the first ``--attack-clips`` of them: I-FGSM (eps 4/255, 30 steps, the paper's)
  against the undefended model, the same clips through the defense, and adaptive EOT
  against the defense (30 steps x 10 draws). Full strength, from the registry
  (:mod:`service.research.robustness.registry`); there is no option to weaken them;
* a recommended preset: the h1 x h2 grid and ensemble sizes of
  :func:`service.research.experiments.tune.tune_on` on ``--tune-clips`` clips held apart from
  the evaluated ones (same rule as ``shuffleguard tune``);
* the compute cost: model evaluations per clip (1 undefended, ``ensemble`` defended,
  as one batched forward) and the median latency per clip of each, measured here.

The verdict is one sentence, chosen by :func:`verdict` (the rule is written in its
docstring, in the report and in docs/audit.md).

Resumable: every result is a record of ``records.jsonl``
(:class:`~service.research.experiments.records.Records`, key ``(seed, clip, measure, row)``;
the tune and the latency are records of clip -1), so a rerun computes only what is
missing and a finished run's rerun writes the same report. ``run.json`` holds the
settings that make records comparable; a rerun with other settings is refused. Every
random draw (shuffles, permutations, EOT draws, the clip order) comes from
:func:`service.research.experiments.common.derive_seed` of ``--seed``, the clip and the measure.

Writes ``audit.{csv,json,md,png}`` and ``records.jsonl`` in ``--out``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from service.core.presets import ShufflePreset
from service.research.experiments import common, report
from service.research.experiments.config import (
    ExperimentConfig,
    device_opt,
    opt,
    out_opt,
    progress_opt,
    threads_opt,
)
from service.research.experiments.evaluate import EOT_SEED_TAG, check_compatible
from service.research.experiments.records import Key, Records
from service.research.robustness.registry import (
    ATTACKS,
    DEFENSE_ROWS,
    Budget,
    RowContext,
    eot_for_row,
)

__all__ = [
    "AuditConfig",
    "AuditDataError",
    "LabelRow",
    "read_labels",
    "run",
    "run_audit",
    "verdict",
]

logger = logging.getLogger(__name__)

#: The smallest attack radius an audit takes (pixel levels of 255): the paper's 4/255.
#: Steps and EOT draws are the library's full ones and not options at all.
MIN_EPS_LEVELS = 4
#: ``(measure, row)`` of the evaluated clips, then of the attacked clips.
CLIP_CELLS: tuple[tuple[str, str], ...] = (
    ("clean", "none"), ("clean", "shuffle"), ("uniformized", "none"), ("permuted", "none"),
)  # fmt: skip
ATTACK_CELLS: tuple[tuple[str, str], ...] = (
    ("ifgsm", "none"), ("ifgsm", "shuffle"), ("eot", "shuffle"),
)  # fmt: skip
#: Seed tags of the measures (the attacks use their registry ``seed_id``).
MEASURE_TAGS = {"clean": 0, "permuted": 7, "latency": 8}
#: Records that are not per clip: the tune and the latency.
RUN_CLIP = -1
TITLES = {
    ("clean", "none"): "clean, undefended",
    ("clean", "shuffle"): "clean, defended",
    ("uniformized", "none"): "uniformized (Table 1)",
    ("permuted", "none"): "fully permuted (Fig. 2, N = T)",
    ("ifgsm", "none"): "I-FGSM, undefended",
    ("ifgsm", "shuffle"): "I-FGSM, defended",
    ("eot", "shuffle"): "adaptive EOT, defended",
}
VERDICTS = ("protects", "order_insensitive", "needs_motion", "no_measurable_gain")
#: splits :func:`verdict`'s docstring into its definitions and numbered rules
_RULE_PARTS = re.compile(r"\n\s*\n|\n\s*(?=\d\. )")


class AuditDataError(ValueError):
    """The clips or the labels cannot be used; the message names the file and the fix."""


@dataclass
class AuditConfig(ExperimentConfig):
    """Settings of ``shuffleguard audit`` (see the module docstring)."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "audit")

    model: str = opt(
        help="the served archive to audit (.mar: TorchScript or torch.export + meta.json)",
        show="always",
    )
    data: str = opt(
        help="directory of your labelled clips (any video the gateway decodes, or .npy uint8"
        " [T, H, W, 3]) with a labels file (see docs/audit.md)",
        show="always",
    )
    labels: str = opt("labels.csv", "labels file in --data: CSV file,label_index,label[,split]")
    split: str | None = opt(None, "only the rows of this split (the labels file's split column)")
    out: str = out_opt("runs/audit")
    clips: int | None = opt(None, "evaluated clips, class-stratified (default: all but the tune's)")
    attack_clips: int = opt(8, "clips attacked (I-FGSM, EOT): the first evaluated ones")
    tune_clips: int = opt(4, "clips of the preset tune, held apart from the evaluated ones")
    subset_seed: int = opt(0, "seed of the class-stratified clip order")
    seed: int = opt(0, "seed of the shuffles, permutations and EOT draws")
    h1s: list[int] = opt([2, 4], "tune grid h1 values")
    h2s: list[int] = opt([1, 2], "tune grid h2 values")
    ensembles: list[int] = opt([5, 10], "tune ensemble sizes")
    grid_ensemble: int = opt(10, "tune ensemble size on the grid")
    clean_ratio: float = opt(
        0.95, "clean floor: share of the undefended clean accuracy the defense must keep"
        " (verdict and tune)",
    )  # fmt: skip
    level: float = opt(0.95, "confidence level of the intervals (and of the verdict's rule)")
    eps: int = opt(
        MIN_EPS_LEVELS, "L-inf radius of I-FGSM and EOT in pixel levels of 255: the paper's 4"
        " or more; raise it when the attack does not fool your undefended model (the tune"
        " stays at 4)",
    )  # fmt: skip
    latency_clips: int = opt(4, "clips timed for the compute cost")
    latency_repeats: int = opt(5, "timed calls per clip (the median is reported)")
    device: str = device_opt()
    threads: int = threads_opt()
    batch_size: int = opt(32, "clips per forward pass", show="never")
    attack_batch: int = opt(4, "clips per attack batch", show="never")
    eot_batch: int | None = opt(40, "most clip copies per EOT forward pass", show="never")
    no_progress: bool = progress_opt()

    def check(self) -> None:
        if not MIN_EPS_LEVELS <= self.eps <= 255:
            raise ValueError(
                f"--eps must be {MIN_EPS_LEVELS}..255 pixel levels, got {self.eps}: the"
                f" paper's {MIN_EPS_LEVELS}/255 is the floor (an audit never weakens its attacks)"
            )
        if self.clips is not None and self.clips < 1:
            raise ValueError(f"--clips must be >= 1, got {self.clips}")
        if self.attack_clips < 1 or self.tune_clips < 1:
            raise ValueError(
                "need --attack-clips >= 1 (the verdict needs attacks) and --tune-clips >= 1"
            )
        if min(self.h1s, default=-1) < 0 or min(self.h2s, default=0) < 1:
            raise ValueError("need --h1s >= 0 and --h2s >= 1 (at least one of each)")
        if min(self.ensembles, default=0) < 1 or self.grid_ensemble < 1:
            raise ValueError("ensemble sizes must be >= 1")
        if not 0 < self.clean_ratio <= 1 or not 0 < self.level < 1:
            raise ValueError("need 0 < --clean-ratio <= 1 and 0 < --level < 1")
        if min(self.latency_clips, self.latency_repeats, self.threads, self.batch_size,
               self.attack_batch) < 1:  # fmt: skip
            raise ValueError("latency, thread and batch settings must be >= 1")
        self.h1s, self.h2s = sorted(set(self.h1s)), sorted(set(self.h2s))
        self.ensembles = sorted(set(self.ensembles))


# --------------------------------------------------------------------------- #
# The user's clips
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class LabelRow:
    """One clip of the labels file: its row (0-based, header excluded), file, class index."""

    row: int
    file: str
    label: int


def read_labels(
    directory: str | Path, labels_file: str, model_labels: list[str], split: str | None = None
) -> list[LabelRow]:
    """The rows of ``directory/labels_file``, checked against the model's labels.

    The file is a CSV with a header: ``file`` (a path relative to ``directory``) and
    ``label_index`` and/or ``label`` (the model's class index / name; when both are
    given they must agree), and an optional ``split`` column that ``split`` filters on.
    This is the layout ``shuffleguard toy-data`` writes.

    Raises:
        AuditDataError: no such file, a missing column, an unknown label, a label index
            out of range, a clip file that does not exist, no rows left.
    """
    root = Path(directory)
    path = root / labels_file
    if not root.is_dir():
        raise AuditDataError(f"--data {root} is not a directory")
    if not path.is_file():
        raise AuditDataError(
            f"no labels file {path}: write a CSV with a header and the columns file,label_index,"
            "label (or give its name with --labels); see docs/audit.md"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        rows = list(reader)
    if "file" not in columns or not columns & {"label", "label_index"}:
        raise AuditDataError(
            f"{path}: needs a header with 'file' and 'label_index' and/or 'label'; got"
            f" {sorted(columns)}"
        )
    if split is not None and "split" not in columns:
        raise AuditDataError(f"--split {split} given but {path} has no 'split' column")
    names = {name: k for k, name in enumerate(model_labels)}
    out = []
    for r, row in enumerate(rows):
        if split is not None and row.get("split") != split:
            continue
        where = f"{path} row {r + 2}"  # 1-based, after the header
        index = _label_index(row, names, model_labels, where)
        file = (row.get("file") or "").strip()
        if not file or not (root / file).is_file():
            raise AuditDataError(f"{where}: clip file {file!r} not found in {root}")
        out.append(LabelRow(r, file, index))
    if not out:
        raise AuditDataError(f"{path}: no clips" + (f" in split {split!r}" if split else ""))
    return out


def _label_index(
    row: dict[str, Any], names: dict[str, int], model_labels: list[str], where: str
) -> int:
    raw_index, label = (row.get("label_index") or "").strip(), (row.get("label") or "").strip()
    known = f"the model's labels are {model_labels[:10]}" + (
        f" ... ({len(model_labels)} in all)" if len(model_labels) > 10 else ""
    )
    index: int | None = None
    if raw_index:
        try:
            index = int(raw_index)
        except ValueError:
            raise AuditDataError(f"{where}: label_index {raw_index!r} is not an integer") from None
        if not 0 <= index < len(model_labels):
            raise AuditDataError(
                f"{where}: label_index {index} is outside 0..{len(model_labels) - 1}; {known}"
            )
    if label:
        if label not in names:
            raise AuditDataError(f"{where}: unknown label {label!r}; {known}")
        if index is not None and names[label] != index:
            raise AuditDataError(
                f"{where}: label_index {index} is {model_labels[index]!r} in the model, the file"
                f" says {label!r}"
            )
        index = names[label]
    if index is None:
        raise AuditDataError(f"{where}: no label_index and no label")
    return index


def decode_clips(directory: str | Path, rows: list[LabelRow], meta: Any) -> torch.Tensor:
    """uint8 ``[N, clip_len, crop, crop, 3]`` RGB 0..255 of ``rows``, decoded as the gateway
    decodes an upload for the model of ``meta`` (a :class:`service.modelserver.meta.ModelMeta`).

    Raises:
        AuditDataError: a clip the gateway would refuse (its message, with the file name).
    """
    import numpy as np

    from service.decoder.decode import decode_clip
    from service.decoder.errors import VideoError

    root = Path(directory)
    frames = []
    for r in rows:
        try:
            clip = decode_clip(
                (root / r.file).read_bytes(), clip_len=meta.clip_len,
                frame_interval=meta.frame_interval, crop_size=meta.crop_size,
                resize=meta.resize, transform=meta.transform,
            )  # fmt: skip
        except VideoError as exc:
            raise AuditDataError(f"{root / r.file}: {exc.message}") from None
        frames.append(clip.frames)
    return torch.from_numpy(np.stack(frames))


def data_fingerprint(directory: str | Path, labels_file: str, rows: list[LabelRow]) -> str:
    """sha256 of the labels file and of every listed clip's bytes."""
    root = Path(directory)
    h = hashlib.sha256((root / labels_file).read_bytes())
    for r in rows:
        h.update(r.file.encode() + b"\0")
        with open(root / r.file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- #
# The plan
# --------------------------------------------------------------------------- #
@dataclass
class _Plan:
    config: AuditConfig
    model: nn.Module
    meta: Any  # service.modelserver.meta.ModelMeta
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


def _plan(config: AuditConfig) -> _Plan:
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
    return _Plan(config, model, meta, meta.preset, rows, tune, evaluated,
                 evaluated[: config.attack_clips], ctx, clips)  # fmt: skip


def _fingerprint(p: _Plan) -> dict[str, Any]:
    c = p.config
    return {
        "weights_sha256": p.meta.sha256,
        "data_sha256": data_fingerprint(c.data, c.labels, p.rows),
        "split": c.split, "subset_seed": c.subset_seed, "seed": c.seed,
        "tune_clips": c.tune_clips, "preset": p.preset.to_dict(),
        "tune_grid": {"h1s": c.h1s, "h2s": c.h2s, "ensembles": c.ensembles,
                      "grid_ensemble": c.grid_ensemble, "clean_ratio": c.clean_ratio},
        "latency": {"clips": c.latency_clips, "repeats": c.latency_repeats, "device": c.device},
        **asdict(p.budget),
    }  # fmt: skip


def _keys(p: _Plan) -> list[Key]:
    s = p.config.seed
    keys = [(s, p.rows[i].row, m, r) for i in p.evaluated for m, r in CLIP_CELLS]
    keys += [(s, p.rows[i].row, m, r) for i in p.attacked for m, r in ATTACK_CELLS]
    return keys + [(s, RUN_CLIP, "tune", "grid"), (s, RUN_CLIP, "latency", "cost")]


# --------------------------------------------------------------------------- #
# The work
# --------------------------------------------------------------------------- #
def _gen(seed: int, clip: int, measure: str, row: str) -> torch.Generator:
    tag = ATTACKS[measure].seed_id if measure in ATTACKS else MEASURE_TAGS[measure]
    return common.generator(seed, clip, tag, DEFENSE_ROWS[row].seed_id)


def _record(key: Key, label: int, pred: int, **extra: Any) -> dict[str, Any]:
    seed, clip, measure, row = key
    return {"seed": seed, "clip": clip, "attack": measure, "defense": row, "label": label,
            "pred": pred, "correct": pred == label, **extra}  # fmt: skip


def _score(
    p: _Plan, key: Key, x: torch.Tensor, label: int, clean: torch.Tensor | None = None
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


def _clip_cells(p: _Plan, records: Records, chunk: list[int], x: torch.Tensor, bar: Any) -> None:
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


def _attack_cells(p: _Plan, records: Records, chunk: list[int], x: torch.Tensor, bar: Any) -> None:
    """I-FGSM (undefended, defended) and EOT (defended) records of the clips ``chunk``."""
    s = p.config.seed
    y = torch.tensor([p.rows[i].label for i in chunk], dtype=torch.int64, device=x.device)
    ids = [p.rows[i].row for i in chunk]
    need = [j for j, cid in enumerate(ids)
            if any((s, cid, "ifgsm", r) not in records for r in ("none", "shuffle"))]  # fmt: skip
    if need:
        spec = ATTACKS["ifgsm"]
        assert spec.build is not None
        adv = spec.build(p.model, p.budget)(x[need], y[need])
        for n, j in enumerate(need):
            for row in ("none", "shuffle"):
                key = (s, ids[j], "ifgsm", row)
                if key not in records:
                    records.add(_score(p, key, adv[n : n + 1], int(y[j]), x[j : j + 1]))
                    bar.update(1)
    need = [j for j, cid in enumerate(ids) if (s, cid, "eot", "shuffle") not in records]
    if need:
        attack = eot_for_row("shuffle", p.model, p.ctx, p.budget, batch_size=p.config.eot_batch)
        row_id = DEFENSE_ROWS["shuffle"].seed_id
        attack.set_clip_generators(
            [common.generator(s, ids[j], row_id, EOT_SEED_TAG) for j in need]
        )
        adv = attack(x[need], y[need])
        for n, j in enumerate(need):
            key = (s, ids[j], "eot", "shuffle")
            records.add(_score(p, key, adv[n : n + 1], int(y[j]), x[j : j + 1]))
            bar.update(1)


def _tune(p: _Plan, x: torch.Tensor) -> dict[str, Any]:
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


def _latency(p: _Plan, x: torch.Tensor) -> dict[str, Any]:
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


def _floats(p: _Plan, positions: list[int]) -> torch.Tensor:
    """float ``[n, 3, T, crop, crop]`` in ``[0, 1]`` of the clips at ``positions``."""
    clips = torch.stack([p.clips[i] for i in positions])
    return common.to_float(clips).to(p.config.device)


def run_audit(config: AuditConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the audit; returns the results (see :func:`summarize`)."""
    p = _plan(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(p)
    run_path = out / "run.json"
    if run_path.exists():
        check_compatible(json.loads(run_path.read_text()).get("fingerprint"), fp, out)
    report.write_json(run_path, {"fingerprint": fp, "config": asdict(config)})
    computed = 0
    with Records.of(out) as records:
        keys = _keys(p)
        missing = [k for k in keys if k not in records]
        logger.info(
            "audit: %d evaluated clips, %d attacked, %d tune: %d of %d results to compute",
            len(p.evaluated), len(p.attacked), len(p.tune), len(missing), len(keys),
        )  # fmt: skip
        with common.progress_bar(
            [], desc="audit", enabled=progress, total=len(missing), unit="result"
        ) as bar:
            _work(p, records, set(missing), bar)
        computed = len(missing)
        done = records.in_order(keys)
    res = summarize(p, done)
    res["computed_this_run"] = computed
    return res


def _as_read_back(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` as a rerun reads it from ``records.jsonl`` (sorted keys), so a first run
    and its rerun write the same report."""
    return dict(json.loads(json.dumps(result, sort_keys=True)))


def _work(p: _Plan, records: Records, missing: set[Key], bar: Any) -> None:
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


# --------------------------------------------------------------------------- #
# Figures and the verdict
# --------------------------------------------------------------------------- #
def _figure(recs: list[dict[str, Any]], level: float) -> dict[str, Any]:
    from service.core.stats import wilson

    k, n = sum(bool(r["correct"]) for r in recs), len(recs)
    low, high = wilson(k, n, level)
    return {"correct": k, "n": n, "accuracy": k / n if n else float("nan"),
            "low": low, "high": high, "interval": "wilson"}  # fmt: skip


def _uniformized(recs: list[dict[str, Any]], level: float, seed: int) -> dict[str, Any]:
    from service.core.stats import bootstrap_ci

    per_clip = [r["correct_frames"] / r["frames"] for r in recs]
    if not per_clip:
        return {"n": 0, "accuracy": float("nan"), "low": float("nan"), "high": float("nan")}
    mean = sum(per_clip) / len(per_clip)
    if len(set(per_clip)) == 1:
        low = high = mean
    else:
        import numpy as np

        low, high = bootstrap_ci(per_clip, np.mean, level=level, seed=seed)
    return {"correct": sum(r["correct_frames"] for r in recs), "n": len(recs),
            "frames": recs[0]["frames"], "accuracy": mean, "low": low, "high": high,
            "interval": "bootstrap over clips"}  # fmt: skip


def verdict(fig: dict[str, dict[str, Any]], clean_ratio: float, name: str) -> dict[str, Any]:
    """The verdict: the first of these rules that holds (intervals at the run's level).

    ``floor = clean_ratio * clean undefended``; ``worst`` = the lower of I-FGSM defended
    and EOT defended (their interval is that figure's).

    1. ``needs_motion`` -- the defended clean accuracy's upper bound is under ``floor``:
       the shuffles cost clean accuracy beyond doubt, so the model needs the frame order.
    2. ``protects`` -- ``worst``'s lower bound is above the upper bound of the undefended
       I-FGSM accuracy: under the stronger of the two attacks the defense keeps clearly
       more clips than the undefended model does.
    3. ``order_insensitive`` -- not 2, and the fully permuted accuracy's upper bound
       reaches ``floor``: permuting every frame costs no measurable accuracy, so shuffled
       copies look alike to the model and an attack on one fools them all.
    4. ``no_measurable_gain`` -- none of these: the model reads frame order but the
       defense's gain is not measurable on this sample (attack more clips).

    Caveat, whatever the rule: when the undefended I-FGSM accuracy's lower bound is
    above half the undefended clean accuracy, the attack barely bites at this radius, so
    the attacked figures say little about the defense; the sentence says so and names
    ``--eps`` (``attack_bites`` is false).
    """
    clean, clean_d = fig["clean/none"], fig["clean/shuffle"]
    ifgsm, perm, uni = fig["ifgsm/none"], fig["permuted/none"], fig["uniformized/none"]
    worst = min(fig["ifgsm/shuffle"], fig["eot/shuffle"], key=lambda f: f["accuracy"])
    floor = clean_ratio * clean["accuracy"]

    def p(f: dict[str, Any]) -> str:
        return f"{report.pct(f['accuracy'], 0)}% ({report.pct(f['low'], 0)}-" \
               f"{report.pct(f['high'], 0)})"  # fmt: skip

    if clean_d["high"] < floor:
        code = "needs_motion"
        sentence = (
            f"The shuffle defense costs too much clean accuracy for {name} because the model"
            f" needs motion: defended clean accuracy is {p(clean_d)} against {p(clean)}"
            f" undefended, under the floor of {report.pct(floor, 0)}% (uniformized clips"
            f" {p(uni)}, fully permuted {p(perm)})."
        )
    elif worst["low"] > ifgsm["high"]:
        code = "protects"
        sentence = (
            f"The shuffle defense protects {name}: under attack it keeps {p(worst)} of the"
            f" clips (the worse of I-FGSM and adaptive EOT) where the undefended model keeps"
            f" {p(ifgsm)}, at a clean cost of"
            f" {100 * (clean['accuracy'] - clean_d['accuracy']):.0f} points."
        )
    elif perm["high"] >= floor:
        code = "order_insensitive"
        sentence = (
            f"The shuffle defense buys little for {name} because the model is order-insensitive:"
            f" fully permuted clips keep {p(perm)} against {p(clean)} clean, so the shuffled"
            f" copies look alike to it and attacked accuracy stays at {p(worst)} (undefended"
            f" I-FGSM {p(ifgsm)})."
        )
    else:
        code = "no_measurable_gain"
        sentence = (
            f"The shuffle defense shows no measurable gain for {name} on this sample: the model"
            f" reads frame order (fully permuted {p(perm)} against {p(clean)} clean) but under"
            f" attack the defense keeps {p(worst)} against {p(ifgsm)} undefended; attack more"
            " clips (--attack-clips) or try the recommended preset."
        )
    bites = ifgsm["low"] <= clean["accuracy"] / 2
    if not bites:
        sentence += (
            f" Caveat: the attack leaves the undefended model at {p(ifgsm)}, so it barely bites"
            " at this radius and the attacked figures say little; rerun with a larger --eps."
        )
    parts = _RULE_PARTS.split(verdict.__doc__ or "")[1:]
    rule = [" ".join(part.split()) for part in parts if part.strip()]
    return {"code": code, "sentence": sentence, "floor": floor, "worst": worst, "rule": rule,
            "attack_bites": bites}  # fmt: skip


def summarize(p: _Plan, done: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures, tune, cost and verdict from the records of the run."""
    c = p.config
    fig: dict[str, dict[str, Any]] = {}
    for measure, row in CLIP_CELLS + ATTACK_CELLS:
        recs = [r for r in done if r["attack"] == measure and r["defense"] == row]
        if measure == "uniformized":
            fig[f"{measure}/{row}"] = _uniformized(recs, c.level, c.seed)
        else:
            fig[f"{measure}/{row}"] = _figure(recs, c.level)
    by = {(r["attack"], r["defense"]): r for r in done if r["clip"] == RUN_CLIP}
    name = p.meta.name
    return {
        "analysis": "audit", "command": c.command(), "model": name, "arch": p.meta.arch,
        "weights_sha256": p.meta.sha256, "clip_len": p.meta.clip_len,
        "crop_size": p.meta.crop_size, "classes": len(p.meta.labels),
        "chance": 1 / len(p.meta.labels), "preset": p.preset.to_dict(),
        "clips": {"evaluated": len(p.evaluated), "attacked": len(p.attacked),
                  "tune": len(p.tune), "available": len(p.rows)},
        "budget": asdict(p.budget), "level": c.level, "clean_ratio": c.clean_ratio,
        "figures": fig, "tune": by[("tune", "grid")]["result"],
        "cost": by[("latency", "cost")]["result"],
        "verdict": verdict(fig, c.clean_ratio, name),
        "environment": report.environment(c.device),
    }  # fmt: skip


# --------------------------------------------------------------------------- #
# The report
# --------------------------------------------------------------------------- #
def _pct_ci(f: dict[str, Any]) -> tuple[str, str]:
    return report.pct(f["accuracy"]), f"{report.pct(f['low'])}-{report.pct(f['high'])}"


def markdown(res: dict[str, Any]) -> str:
    fig, v, t, cost = res["figures"], res["verdict"], res["tune"], res["cost"]
    pr, rec = res["preset"], t["preset"]
    level = f"{100 * res['level']:.0f}%"
    rows = []
    for (measure, row), title in TITLES.items():
        f = fig[f"{measure}/{row}"]
        acc, ci = _pct_ci(f)
        rows.append([title, f["n"], acc, ci])
    speedup = cost["defended_seconds"] / cost["undefended_seconds"]
    lines = [
        f"# Audit of `{res['model']}`",
        "",
        f"**Verdict: {v['code']}.** {v['sentence']}",
        "",
        *report.produced_by(res["command"]),
        f"Model `{res['model']}` ({res['arch']}, weights sha256 `{res['weights_sha256'][:12]}`),"
        f" {res['clip_len']} frames of {res['crop_size']} px, {res['classes']} classes (chance"
        f" {report.pct(res['chance'])}%). Archive preset: h1 = {pr['h1']}, h2 = {pr['h2']},"
        f" ensemble = {pr['ensemble']}. Clips: {res['clips']['evaluated']} evaluated,"
        f" {res['clips']['attacked']} of them attacked, {res['clips']['tune']} held apart for"
        f" the tune ({res['clips']['available']} in the labels file).",
        "",
        f"Attacks at full strength: I-FGSM eps {res['budget']['eps'] * 255:.0f}/255,"
        f" {res['budget']['steps']} steps (crafted on the undefended model, then also sent"
        f" through the defense); adaptive EOT against the defense, {res['budget']['steps']}"
        f" steps x {res['budget']['eot_draws']} draws of its shuffles.",
        "",
        report.markdown_table(["measure", "clips", "accuracy (%)", f"{level} interval"], rows),
        "",
        "Intervals: Wilson (`service.core.stats.wilson`); the uniformized row is the mean over"
        " clips of each clip's accuracy over the T frames it can be uniformized to, with a"
        " percentile bootstrap interval over clips (`service.core.stats.bootstrap_ci`).",
        "",
        "## Recommended preset",
        "",
        f"h1 = {rec['h1']}, h2 = {rec['h2']}, ensemble = {rec['ensemble']}, from the h1 x h2"
        f" grid on the {t['clips']} tune clips (rule of `shuffleguard tune`: {t['criterion']}).",
        "",
        report.markdown_table(
            ["h1", "h2", "clean (%)", "I-FGSM (%)", "EOT (%)", "worst (%)"],
            [
                [
                    cl["h1"],
                    cl["h2"],
                    report.pct(cl["clean"]),
                    report.pct(cl.get("ifgsm")),
                    report.pct(cl.get("eot")),
                    report.pct(cl["worst"]),
                ]
                for cl in t["cells"]
            ],
        ),  # fmt: skip
        "",
        f"To serve it: `shuffleguard archive ... --h1 {rec['h1']} --h2 {rec['h2']} --ensemble"
        f" {rec['ensemble']}`, or pass h1/h2/ensemble per request in research mode. The verdict"
        " above is for the archive's preset.",
        "",
        "## Compute cost",
        "",
        report.markdown_table(
            ["", "model evaluations per clip", "median latency per clip (ms)"],
            [
                [
                    "undefended",
                    cost["undefended_model_evaluations"],
                    f"{1000 * cost['undefended_seconds']:.1f}",
                ],
                [
                    "defended",
                    cost["defended_model_evaluations"],
                    f"{1000 * cost['defended_seconds']:.1f}",
                ],
            ],
        ),  # fmt: skip
        "",
        f"The defense costs {speedup:.1f}x the undefended latency here ({cost['clips']} clips x"
        f" {cost['repeats']} calls, {cost['device']}, {cost['threads']} threads; the"
        f" {cost['defended_model_evaluations']} shuffled copies go through the model as one"
        " batch).",
        "",
        "## The verdict's rule",
        "",
        f"Clean floor = {res['clean_ratio']} x clean undefended accuracy ="
        f" {report.pct(v['floor'])}%; intervals at {level}. The first rule that holds:",
        "",
        v["rule"][0],
        "",
        *[f"{r}" for r in v["rule"][1:]],
        "",
        "![audit](audit.png)",
        "",
    ]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    fig_, ax = report.setup_figure(6.4, 4.2)
    names = list(TITLES)
    figs = [res["figures"][f"{m}/{r}"] for m, r in names]
    ys = list(range(len(names)))[::-1]
    acc = [100 * f["accuracy"] for f in figs]
    err = [[100 * (f["accuracy"] - f["low"]) for f in figs],
           [100 * (f["high"] - f["accuracy"]) for f in figs]]  # fmt: skip
    colors = ["tab:blue" if r == "none" else "tab:orange" for _, r in names]
    ax.barh(ys, acc, xerr=err, color=colors, capsize=3)
    ax.set_yticks(ys, [TITLES[n] for n in names], fontsize=8)
    ax.axvline(100 * res["chance"], color="grey", ls=":", label="chance")
    ax.axvline(100 * res["verdict"]["floor"], color="tab:red", ls="--", label="clean floor")
    ax.set_xlim(0, 105)
    ax.set_xlabel(f"accuracy (%), {100 * res['level']:.0f}% intervals")
    ax.set_title(f"audit of {res['model']}: {res['verdict']['code']}", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    report.save_figure(fig_, path)


def write_outputs(res: dict[str, Any], out: str | Path) -> list[Path]:
    header = ["measure", "row", "clips", "correct", "accuracy", "low", "high"]
    rows = [[m, r, f["n"], f.get("correct", ""), f"{f['accuracy']:.4f}", f"{f['low']:.4f}",
             f"{f['high']:.4f}"] for (m, r), f in
            ((k, res["figures"][f"{k[0]}/{k[1]}"]) for k in TITLES)]  # fmt: skip
    stable = {k: v for k, v in res.items() if k != "computed_this_run"}
    return report.write_report(
        out, "audit", results=stable, header=header, rows=rows, markdown=markdown(res),
        plot=lambda path: plot(res, path),
    )  # fmt: skip


def run(config: AuditConfig) -> int:
    """``shuffleguard audit``: run (or resume), write the report, print the verdict."""
    common.prepare_torch(config.device, config.threads, "shuffleguard audit")
    res = run_audit(config, progress=not config.no_progress)
    paths = write_outputs(res, config.out)
    for (m, r), title in TITLES.items():
        f = res["figures"][f"{m}/{r}"]
        print(f"{title:>32}: {report.pct(f['accuracy']):>5}% (n={f['n']})")
    print(f"verdict: {res['verdict']['code']}: {res['verdict']['sentence']}")
    print(f"computed {res['computed_this_run']} results; wrote {', '.join(map(str, paths))}")
    return 0
