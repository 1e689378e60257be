"""The Prometheus configuration and alert rules, checked by Prometheus's own promtool:
``check config`` (which checks every rule file it names), ``check rules``, and the rules'
unit tests (``test rules``: each alert fires on a history that should fire it and stays
quiet on a neighbouring one). Also: compose mounts every rule file where the config
looks for it, and every alert covers what docs/deployment.md promises."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.sysdeps import require_tool

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "docker" / "prometheus.yml"
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "docker" / "prometheus" / "alerts_test.yml"
COMPOSE = REPO / "docker-compose.yml"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
EXPECTED_ALERTS = {
    "ShuffleGuardTargetDown",
    "ShuffleGuardBackendDown",
    "ShuffleGuardHigh5xxRate",
    "ShuffleGuardSuspectedAdversarialRate",
    "ShuffleGuardHighP95Latency",
    "ShuffleGuardClientThrottled",
    "ShuffleGuardQueryAttackSuspected",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "prometheus")
    return subprocess.run(
        [tool, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_config_loads_the_rules() -> None:
    result = promtool("check", "config", str(PROMETHEUS.relative_to(REPO)))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SUCCESS: 1 rule files found" in out, out
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out, out


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_promised_alerts_exist_and_each_has_a_unit_test() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule.get("for"), f"{rule['alert']}: alert on a sustained condition, not a blip"
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert tested == EXPECTED_ALERTS, (
        f"alerts never seen firing in a unit test: {EXPECTED_ALERTS - tested}"
    )


def test_compose_mounts_each_rule_file_where_the_config_looks() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    prometheus = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    flags = dict(flag.split("=", 1) for flag in prometheus["command"])
    config_dir = PurePosixPath(flags["--config.file"]).parent
    mounts = {}
    for volume in prometheus["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = source
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        local = PROMETHEUS.parent / rule_file
        assert local.is_file(), rule_file
        in_container = str(config_dir / rule_file)
        assert mounts.get(in_container) == "./" + local.relative_to(REPO).as_posix(), (
            f"compose does not mount {rule_file} at {in_container}"
        )


def test_deployment_doc_names_every_alert() -> None:
    text = DEPLOYMENT_DOC.read_text()
    for name in EXPECTED_ALERTS:
        assert name in text, f"docs/deployment.md does not explain {name}"
