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
  ensemble with the archive's preset), uniformized accuracy (paper Table 1; a bootstrap
  interval over clips) and fully permuted accuracy (paper Fig. 2 at ``N = T``);
* on the first ``--attack-clips`` of them: I-FGSM (eps 4/255, 30 steps, the paper's)
  against the undefended model and the same clips through the defense (the transfer
  attacker), and the white-box adaptive attackers against the defense: the paper's EOT
  (30 steps x 10 draws) and the saturated EOTs (``eot_vote``, the vote-aware margin,
  and ``eot_ce_mean``, cross-entropy on the mean logits; 100 x 10) of
  :mod:`service.research.robustness.registry`, at full strength (no option weakens them); the
  verdict takes the per-clip worst case over all of them
  (:func:`service.research.experiments.adaptive.worst_case`);
* a recommended preset: :func:`service.research.experiments.tune.tune_on` on ``--tune-clips``
  clips held apart from the evaluated ones (same rule as ``shuffleguard tune``);
* the compute cost: model evaluations per clip and the median latency of each.

The verdict is :func:`service.research.experiments.audit.verdict.decide`, a pure rule on the
figures' bounds (its docstring is the rule printed in the report and in docs/audit.md).

Resumable: every result is a record of ``records.jsonl`` (key ``(seed, clip, measure,
row)``; the tune and the latency are records of clip -1); ``run.json`` holds the
settings that make records comparable. Every random draw comes from
:func:`service.research.experiments.common.derive_seed` of ``--seed``, the clip and the measure.

Modules: :mod:`.config` (options, cells, attackers), :mod:`.labels` (the clips),
:mod:`.plan` (what a run works on), :mod:`.measure` (the records), :mod:`.figures`
(figures and results), :mod:`.verdict`, :mod:`.markdown`, :mod:`.plot`, :mod:`.run`.
"""

from service.research.experiments.audit.config import AuditConfig
from service.research.experiments.audit.labels import AuditDataError, LabelRow, read_labels
from service.research.experiments.audit.run import run, run_audit
from service.research.experiments.audit.verdict import VERDICTS, decide, verdict

__all__ = [
    "VERDICTS",
    "AuditConfig",
    "AuditDataError",
    "LabelRow",
    "decide",
    "read_labels",
    "run",
    "run_audit",
    "verdict",
]
