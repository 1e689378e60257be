"""The monitoring stack for real: a real Prometheus (Debian's ``prometheus``) on loopback
scrapes a real gateway and the session's real TorchServe with the project's own scrape
config (docker/prometheus.yml, targets rewritten to the loopback ports, 1 s intervals)
and its alert rules, and every PromQL query of the Grafana dashboard is evaluated
through Prometheus's HTTP API: each parses, runs and returns series.

The traffic makes every series of the dashboard exist: clean clips (200), a clip whose
first frame carries the label (suspected adversarial), a concurrent burst against a
gateway admitting one request (429), a gateway whose backend is down (503 and
``backend_errors_total{kind="unavailable"}``), and, straight at TorchServe, an unknown
model and a body its handler refuses (its ``Requests4XX``), and a gateway with API keys
(a request without a key, then one key past its quota round after round: its 429s raise
``ShuffleGuardClientThrottled``). Nothing here makes TorchServe
answer 5xx (its handler answers every bad input with 400), and TorchServe creates a
counter at its first increment: the dashboard's ``Requests4XX/5XX`` queries end in
``or vector(0)`` so that a healthy backend reads 0 rather than "no data".
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.gateway.keys import hash_key, new_key
from service.modelserver.torchserve_proc import TorchServeProcess, free_ports
from tests import media
from tests.integration.helpers import (
    TINY,
    Gateway,
    StartGateway,
    closed_port,
    color_frames,
    first_frame_attack,
    wait_until,
)
from tests.ops.test_dashboard import DASHBOARD, queries
from tests.sysdeps import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus.yml"
SCRAPE_INTERVAL_S = 1
#: Grafana's variables, as Grafana would expand them for this Prometheus: ``$model`` is
#: the variable's "All" value (its ``allValue``), ``$__rate_interval`` at least four
#: scrape intervals (a wide window here, so the short test keeps every sample in it).
GRAFANA_VARIABLES = {
    "model": ".*",
    "__rate_interval": "1m",
    "__interval": f"{SCRAPE_INTERVAL_S}s",
    "__range": "5m",
}
DASHBOARD_QUERIES = queries(json.loads(DASHBOARD.read_text()))


def expand(expr: str) -> str:
    """``expr`` with Grafana's ``$name`` / ``${name}`` variables replaced; KeyError if unknown."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: GRAFANA_VARIABLES[m.group(1) or m.group(2)], expr
    )


@dataclass
class Stack:
    url: str  # Prometheus
    gateway: Gateway
    dead_gateway: Gateway
    torchserve: TorchServeProcess
    log: Path
    keyed_gateway: Gateway
    key: str

    def api(self, client: httpx.Client, path: str, **params: str) -> Any:
        r = client.get(f"{self.url}/api/v1/{path}", params=params)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (r.status_code, body)
        return body["data"]

    def query(self, client: httpx.Client, expr: str) -> list[dict[str, Any]]:
        data = self.api(client, "query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])


def authority(url: str) -> str:
    """``host:port`` of ``http://host:port``, as a scrape target."""
    return url.split("://", 1)[1].rstrip("/")


def scrape_config(stack_targets: dict[str, list[str]], *, rule_files: list[str]) -> dict[str, Any]:
    """docker/prometheus.yml with each job's targets replaced by ``stack_targets[job]``."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(
        scrape_interval=f"{SCRAPE_INTERVAL_S}s",
        scrape_timeout=f"{SCRAPE_INTERVAL_S}s",
        evaluation_interval=f"{SCRAPE_INTERVAL_S}s",
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(stack_targets), f"jobs of {PROMETHEUS_CONFIG.name}: {sorted(jobs)}"
    for name, job in jobs.items():
        (static,) = job["static_configs"]
        static["targets"] = stack_targets[name]
    config["rule_files"] = rule_files
    return config


@pytest.fixture(scope="module")
def stack(
    start_gateway: StartGateway,
    torchserve: TorchServeProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    binary = require_tool("prometheus", "prometheus")
    gateway = start_gateway(research_mode=False, max_inflight=1, max_queue=0)
    down = f"http://127.0.0.1:{closed_port()}"
    dead = start_gateway(research_mode=False, backend_url=down, backend_management_url=down)
    key = new_key()
    key_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    # `live` has a burst of 2 and next to no refill: every request after those is a 429
    key_file.write_text(f"keys: [{{name: live, sha256: {hash_key(key)}, rate: 0.001, burst: 2}}]")
    keyed = start_gateway(research_mode=False, api_keys_file=key_file)
    (port,) = free_ports(1)
    config = scrape_config(
        {
            "shuffleguard-gateway": [authority(g.url) for g in (gateway, dead, keyed)],
            "torchserve": [authority(torchserve.metrics_url)],
            "prometheus": [f"127.0.0.1:{port}"],
        },
        rule_files=[
            str(PROMETHEUS_CONFIG.parent / name)
            for name in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
        ],
    )
    workdir = tmp_path_factory.mktemp("prometheus")
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    stack = Stack(f"http://127.0.0.1:{port}", gateway, dead, torchserve, log, keyed, key)
    try:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            try:
                wait_until(lambda: _ready(client, stack, proc), timeout_s=30)
                # every target scraped and up before the traffic, so counters created by the
                # traffic are seen moving (a rate needs two samples)
                wait_until(lambda: _all_targets_up(client, stack), timeout_s=30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; prometheus log:\n{log.read_text()[-3000:]}") from None
            _send_traffic(stack)
            # a few scrapes after the last request
            time.sleep(4 * SCRAPE_INTERVAL_S)
        yield stack
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _ready(client: httpx.Client, stack: Stack, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
    return client.get(f"{stack.url}/-/ready").status_code == 200


def _all_targets_up(client: httpx.Client, stack: Stack) -> bool:
    targets = stack.api(client, "targets")["activeTargets"]
    return len(targets) == 5 and all(t["health"] == "up" for t in targets)


def _send_traffic(stack: Stack) -> None:
    clean = {c: media.npy_bytes(color_frames(c, t=16, h=40, w=40)) for c in ("red", "blue")}
    attack = media.npy_bytes(first_frame_attack())
    url = f"{stack.gateway.url}/v1/classify"
    dead_url = f"{stack.dead_gateway.url}/v1/classify"
    ts = stack.torchserve
    with httpx.Client(timeout=60.0, trust_env=False) as client:
        for _round in range(3):  # spread over several scrapes, so rates move
            for body in (*clean.values(), attack):
                assert client.post(url, content=body).status_code == 200
            assert client.post(url, content=b"").status_code == 400
            # the backend of this one is down: 503, backend_errors_total{kind="unavailable"}
            for _ in range(10):
                assert client.post(dead_url, content=clean["red"]).status_code == 503
            # TorchServe's own error classes
            assert client.get(f"{ts.inference_url}/predictions/no_such_model").status_code == 404
            bad = client.post(f"{ts.inference_url}/predictions/{TINY}", content=b"not an npy")
            assert bad.status_code == 400, bad.status_code
            _send_keyed_traffic(client, stack, clean["red"], first=_round == 0)
            time.sleep(1.5 * SCRAPE_INTERVAL_S)
        # one admitted at a time, no queue: a concurrent burst gets some 429s
        statuses: list[int] = []
        for _ in range(5):
            with ThreadPoolExecutor(max_workers=6) as pool:
                statuses += pool.map(
                    lambda _: client.post(url, content=clean["blue"]).status_code, range(6)
                )
            if 429 in statuses:
                break
        assert 429 in statuses and set(statuses) <= {200, 429}, statuses


def _send_keyed_traffic(client: httpx.Client, stack: Stack, body: bytes, *, first: bool) -> None:
    """One request without a key (401), then 12 with `live`'s key: its burst of 2 in the
    first round, 429 `rate_limited` for every other (a refusal rate over the alert's)."""
    url = f"{stack.keyed_gateway.url}/v1/classify"
    assert client.post(url, content=body).status_code == 401
    statuses = [
        client.post(url, content=body, headers={"X-API-Key": stack.key}).status_code
        for _ in range(12)
    ]
    assert statuses == ([200, 200] if first else []) + [429] * (12 - 2 * first), statuses


@pytest.fixture(scope="module")
def prom_client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0, trust_env=False) as client:
        yield client


# ------------------------------------------------------------------------------- tests
def test_expand_replaces_every_grafana_variable() -> None:
    assert expand('rate(x{model=~"$model"}[$__rate_interval])') == 'rate(x{model=~".*"}[1m])'
    assert expand("${model}") == ".*"
    with pytest.raises(KeyError):
        expand("rate(x[$__unknown])")


def test_every_target_of_the_project_config_is_up(stack: Stack, prom_client: httpx.Client) -> None:
    up = {
        (s["metric"]["job"], s["metric"]["instance"]): s["value"][1]
        for s in stack.query(prom_client, "up")
    }
    assert set(up.values()) == {"1"}, up
    assert {job for job, _ in up} == {"shuffleguard-gateway", "torchserve", "prometheus"}


@pytest.mark.parametrize(
    ("where", "expr"), DASHBOARD_QUERIES, ids=[where for where, _ in DASHBOARD_QUERIES]
)
def test_dashboard_query_returns_series(
    stack: Stack, prom_client: httpx.Client, where: str, expr: str
) -> None:
    result = stack.query(prom_client, expand(expr))
    assert result, f"{where}: {expand(expr)!r} returned no series"
    for sample in result:
        _, value = sample["value"]
        float(value)  # a number (NaN included: a quantile of no traffic in the window)


def test_model_variable_lists_the_served_model(stack: Stack, prom_client: httpx.Client) -> None:
    values = stack.api(
        prom_client, "label/model/values", **{"match[]": "shuffleguard_requests_total"}
    )
    assert TINY in values


def test_traffic_shows_on_the_dashboard_figures(stack: Stack, prom_client: httpx.Client) -> None:
    """Not only series: the figures the traffic must have moved are non-zero."""

    def total(expr: str) -> float:
        return sum(float(s["value"][1]) for s in stack.query(prom_client, expr))

    assert total(f'shuffleguard_requests_total{{model="{TINY}",status="200"}}') >= 9
    assert total('shuffleguard_requests_total{status="429"}') >= 1
    assert total(f'shuffleguard_suspected_adversarial_total{{model="{TINY}"}}') >= 3
    assert total('shuffleguard_backend_errors_total{kind="unavailable"}') >= 30
    assert total(f'ts_inference_requests_total{{model_name="{TINY}"}}') >= 9
    assert total("Requests4XX") >= 6
    assert total("Requests2XX") >= 9
    assert total('shuffleguard_request_duration_seconds_count{stage="total"}') >= 9


def test_torchserve_5xx_panel_reads_zero_on_a_healthy_backend(
    stack: Stack, prom_client: httpx.Client
) -> None:
    assert stack.query(prom_client, "Requests5XX") == []  # never answered 5xx
    (expr,) = [e for _, e in DASHBOARD_QUERIES if "Requests5XX" in e]
    (sample,) = stack.query(prom_client, expand(expr))
    assert float(sample["value"][1]) == 0.0


def test_alert_rules_load_and_evaluate(stack: Stack, prom_client: httpx.Client) -> None:
    rules_file = yaml.safe_load((REPO / "docker/prometheus/alerts.yml").read_text())
    expected = {r["alert"] for g in rules_file["groups"] for r in g["rules"]}

    def evaluated() -> list[dict[str, Any]]:
        groups = stack.api(prom_client, "rules")["groups"]
        return [
            r for g in groups for r in g["rules"] if not r["lastEvaluation"].startswith("0001-")
        ]

    wait_until(lambda: {r["name"] for r in evaluated()} == expected, timeout_s=10)
    for rule in evaluated():
        assert rule["health"] == "ok", rule


def test_alerts_raised_by_the_traffic(stack: Stack, prom_client: httpx.Client) -> None:
    """The gateway whose backend is down raises ShuffleGuardBackendDown (for it alone) and,
    its 503s being a quarter or more of all classify answers, ShuffleGuardHigh5xxRate; the
    key refused round after round raises ShuffleGuardClientThrottled; every target is up,
    so ShuffleGuardTargetDown stays quiet. (Pending, not firing: the rules'
    ``for:`` is minutes long.)"""
    dead = authority(stack.dead_gateway.url)

    def raised(alertname: str) -> list[dict[str, str]]:
        return [
            a["labels"]
            for a in stack.api(prom_client, "alerts")["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] in ("pending", "firing")
        ]

    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: (
                raised("ShuffleGuardBackendDown")
                and raised("ShuffleGuardHigh5xxRate")
                and raised("ShuffleGuardClientThrottled")
            ),
            timeout_s=10,
        )
    assert [a["instance"] for a in raised("ShuffleGuardBackendDown")] == [dead]
    assert [a["job"] for a in raised("ShuffleGuardHigh5xxRate")] == ["shuffleguard-gateway"]
    # the key past its quota, and no one else (the 401s are `unauthenticated`, not refusals)
    assert [a["client"] for a in raised("ShuffleGuardClientThrottled")] == ["live"]
    assert raised("ShuffleGuardTargetDown") == []
