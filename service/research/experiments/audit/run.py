"""``shuffleguard audit``: run or resume the audit, write the report, print the verdict."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.research.experiments import common, report
from service.research.experiments.audit.config import TITLES, AuditConfig
from service.research.experiments.audit.figures import summarize
from service.research.experiments.audit.markdown import attacker_lines, markdown
from service.research.experiments.audit.measure import work
from service.research.experiments.audit.plan import fingerprint, keys, make_plan
from service.research.experiments.audit.plot import plot
from service.research.experiments.evaluate import check_compatible
from service.research.experiments.records import Records

__all__ = ["run", "run_audit", "write_outputs"]

logger = logging.getLogger(__name__)


def run_audit(config: AuditConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the audit; returns the results (see :func:`summarize`)."""
    p = make_plan(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(p)
    run_path = out / "run.json"
    if run_path.exists():
        check_compatible(json.loads(run_path.read_text()).get("fingerprint"), fp, out)
    report.write_json(run_path, {"fingerprint": fp, "config": asdict(config)})
    with Records.of(out) as records:
        todo = keys(p)
        missing = [k for k in todo if k not in records]
        logger.info(
            "audit: %d evaluated clips, %d attacked, %d tune: %d of %d results to compute",
            len(p.evaluated), len(p.attacked), len(p.tune), len(missing), len(todo),
        )  # fmt: skip
        with common.progress_bar(
            [], desc="audit", enabled=progress, total=len(missing), unit="result"
        ) as bar:
            work(p, records, set(missing), bar)
        done = records.in_order(todo)
    res = summarize(p, done)
    res["computed_this_run"] = len(missing)
    return res


def write_outputs(res: dict[str, Any], out: str | Path) -> list[Path]:
    """``audit.{csv,json,md,png}`` in ``out``."""
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
        print(f"{title:>36}: {report.pct(f['accuracy']):>5}% (n={f['n']})")
    print("attacker assumed by the verdict:")
    for line in attacker_lines(res):
        print(f"  {line}")
    print(f"verdict: {res['verdict']['code']}: {res['verdict']['sentence']}")
    print(f"computed {res['computed_this_run']} results; wrote {', '.join(map(str, paths))}")
    return 0
