"""``audit.md``: the verdict, the attackers it assumes, the figures, the tune, the cost
and the rule, one function per section."""

from __future__ import annotations

from typing import Any

from service.research.experiments import report
from service.research.experiments.audit.config import TITLES

__all__ = ["attacker_lines", "markdown"]


def _pct_ci(f: dict[str, Any]) -> tuple[str, str]:
    return report.pct(f["accuracy"]), f"{report.pct(f['low'])}-{report.pct(f['high'])}"


def attacker_lines(res: dict[str, Any]) -> list[str]:
    """One line per attacker the verdict assumes (also printed by the command)."""
    a = res["attacker"]
    lines = [
        f"white-box adaptive {e['attack']} ({e['title']}): eps {e['eps'] * 255:.0f}/255,"
        f" {e['steps']} steps x {e['draws']} draws of the defense's shuffles, step"
        f" {e['alpha'] * 255:.3g}/255, loss {e['loss']}, schedule {e['schedule']}"
        + (f", restarts {e['restarts']}" if e["restarts"] > 1 else "")
        for e in a["white_box_adaptive"]
    ]
    t = a["transfer"]
    lines.append(f"transfer {t['attack']} ({t['title']}, crafted on the undefended model, sent"
                 f" through the defense): eps {t['eps'] * 255:.0f}/255, {t['steps']} steps of"
                 f" {t['alpha'] * 255:.3g}/255")  # fmt: skip
    return lines


def _head(res: dict[str, Any]) -> list[str]:
    v, pr, clips = res["verdict"], res["preset"], res["clips"]
    return [
        f"# Audit of `{res['model']}`", "",
        f"**Verdict: {v['code']}.** {v['sentence']}", "",
        *report.produced_by(res["command"]),
        f"Model `{res['model']}` ({res['arch']}, weights sha256 `{res['weights_sha256'][:12]}`),"
        f" {res['clip_len']} frames of {res['crop_size']} px, {res['classes']} classes (chance"
        f" {report.pct(res['chance'])}%). Archive preset: h1 = {pr['h1']}, h2 = {pr['h2']},"
        f" ensemble = {pr['ensemble']}. Clips: {clips['evaluated']} evaluated,"
        f" {clips['attacked']} of them attacked, {clips['tune']} held apart for"
        f" the tune ({clips['available']} in the labels file).", "",
        "## The attacker the verdict assumes", "",
        "A white-box attacker who knows the model, the defense and its preset (not the"
        " defender's random draws), at full strength from the attack registry"
        " (`service/research/robustness/registry.py`); a clip counts as defended only if the vote,"
        " drawn afresh, is right against every one of them (the per-clip worst case of"
        " `shuffleguard analyze adaptive`):", "",
        *[f"* {line}" for line in attacker_lines(res)], "",
        "Not covered: query-based black-box attacks on the served gateway"
        " (`shuffleguard redteam`), larger radii than the one above.", "",
    ]  # fmt: skip


def _figures(res: dict[str, Any]) -> list[str]:
    fig = res["figures"]
    level = f"{100 * res['level']:.0f}%"
    rows = []
    for (measure, row), title in TITLES.items():
        f = fig[f"{measure}/{row}"]
        rows.append([title, f["n"], *_pct_ci(f)])
    return [
        report.markdown_table(["measure", "clips", "accuracy (%)", f"{level} interval"], rows),
        "",
        "Intervals: Wilson (`service.core.stats.wilson`); the uniformized row is the mean over"
        " clips of each clip's accuracy over the T frames it can be uniformized to, with a"
        " percentile bootstrap interval over clips (`service.core.stats.bootstrap_ci`).", "",
    ]  # fmt: skip


def _tune(res: dict[str, Any]) -> list[str]:
    t = res["tune"]
    rec = t["preset"]
    cells = [[cl["h1"], cl["h2"], report.pct(cl["clean"]), report.pct(cl.get("ifgsm")),
              report.pct(cl.get("eot")), report.pct(cl["worst"])] for cl in t["cells"]]  # fmt: skip
    return [
        "## Recommended preset", "",
        f"h1 = {rec['h1']}, h2 = {rec['h2']}, ensemble = {rec['ensemble']}, from the h1 x h2"
        f" grid on the {t['clips']} tune clips (rule of `shuffleguard tune`: {t['criterion']};"
        " its attacks are I-FGSM and the paper's EOT).", "",
        report.markdown_table(
            ["h1", "h2", "clean (%)", "I-FGSM (%)", "EOT (%)", "worst (%)"], cells), "",
        f"To serve it: `shuffleguard archive ... --h1 {rec['h1']} --h2 {rec['h2']} --ensemble"
        f" {rec['ensemble']}`, or pass h1/h2/ensemble per request in research mode. The verdict"
        " above is for the archive's preset.", "",
    ]  # fmt: skip


def _cost(res: dict[str, Any]) -> list[str]:
    cost = res["cost"]
    rows = [[kind, cost[f"{kind}_model_evaluations"], f"{1000 * cost[f'{kind}_seconds']:.1f}"]
            for kind in ("undefended", "defended")]  # fmt: skip
    ratio = cost["defended_seconds"] / cost["undefended_seconds"]
    return [
        "## Compute cost", "",
        report.markdown_table(["", "model evaluations per clip", "median latency per clip (ms)"],
                              rows), "",
        f"The defense costs {ratio:.1f}x the undefended latency here ({cost['clips']} clips x"
        f" {cost['repeats']} calls, {cost['device']}, {cost['threads']} threads; the"
        f" {cost['defended_model_evaluations']} shuffled copies go through the model as one"
        " batch).", "",
    ]  # fmt: skip


def _rule(res: dict[str, Any]) -> list[str]:
    v = res["verdict"]
    return [
        "## The verdict's rule", "",
        f"Clean floor = {res['clean_ratio']} x clean undefended accuracy ="
        f" {report.pct(v['floor'])}%; half = 0.5 x clean undefended accuracy ="
        f" {report.pct(v['half'])}%; intervals at {100 * res['level']:.0f}%. The first rule"
        " that holds:", "",
        v["rule"][0], "", *v["rule"][1:], "",
    ]  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    """The whole ``audit.md``."""
    parts = [*_head(res), *_figures(res), *_tune(res), *_cost(res), *_rule(res)]
    return "\n".join([*parts, "![audit](audit.png)", ""])
