"""The provisioned Grafana dashboard: valid JSON, wired to the provisioned datasource,
and every query asks only for metrics that exist (the SPEC's gateway metrics, the
series Prometheus derives from them, TorchServe's own, and ``up``)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker/grafana/dashboards/shuffleguard.json"
DATASOURCES = REPO / "docker/grafana/provisioning/datasources/prometheus.yml"

#: SPEC section 4, "Metrics", and the API keys' metrics: name -> (type, labels)
SPEC_METRICS: dict[str, tuple[str, set[str]]] = {
    "shuffleguard_requests_total": ("counter", {"model", "status"}),
    "shuffleguard_request_duration_seconds": ("histogram", {"stage"}),
    "shuffleguard_vote_agreement": ("histogram", set()),
    "shuffleguard_suspected_adversarial_total": ("counter", {"model"}),
    "shuffleguard_backend_errors_total": ("counter", {"kind"}),
    "shuffleguard_inflight_requests": ("gauge", set()),
    # API keys and quotas (issue 19; docs/serving.md)
    "shuffleguard_client_requests_total": ("counter", {"client", "status"}),
    "shuffleguard_quota_rejections_total": ("counter", {"client", "reason"}),
}
STAGES = {"decode", "shuffle", "backend", "vote", "total"}
#: TorchServe series the dashboard must show (its prometheus-mode names)
TS_REQUIRED = {
    "ts_inference_requests_total",
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset",
}  # fmt: skip


def torchserve_metrics() -> tuple[set[str], set[str]]:
    """Metric names and label names from the installed TorchServe's metrics.yaml."""
    text = (resources.files("ts") / "configs" / "metrics.yaml").read_text()
    config = yaml.safe_load(text)
    names: set[str] = set()
    labels: set[str] = set()
    for section in ("ts_metrics", "model_metrics"):
        for metrics in (config.get(section) or {}).values():
            for metric in metrics:
                names.add(metric["name"])
                labels.update(str(d) for d in metric.get("dimensions", []))
    return names, labels


def allowed_series() -> tuple[set[str], set[str]]:
    names = {"up"}
    labels = {"le", "job", "instance", "service"}
    for name, (kind, metric_labels) in SPEC_METRICS.items():
        labels |= metric_labels
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    ts_names, ts_labels = torchserve_metrics()
    return names | ts_names, labels | ts_labels


def parse_promql(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression refers to: a small lexer, not a parser."""
    labels: set[str] = set()
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    grouping = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for group in re.findall(grouping, expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    expr = re.sub(grouping, " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        token, call = match.group(1), match.group(2)
        if not call and token not in PROMQL_KEYWORDS:
            names.add(token)
    return names, labels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def datasource_uid() -> str:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    (prometheus,) = [s for s in sources if s["type"] == "prometheus"]
    return str(prometheus["uid"])


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows hold theirs
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            out.append((f"variable {var['name']}", inner.group(1) if inner else query))
    return out


# ---------------------------------------------------------------------- the lexer itself
def test_parse_promql_finds_metrics_and_labels() -> None:
    names, labels = parse_promql(
        'histogram_quantile(0.95, sum by (le, stage) (rate(foo_bucket{stage="total",'
        'model=~"$model"}[$__rate_interval]))) / ignoring(x) bar_total offset 5m'
    )
    assert names == {"foo_bucket", "bar_total"}
    assert labels == {"le", "stage", "model", "x"}


# ------------------------------------------------------------------------- the dashboard
def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_every_query_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    uid = datasource_uid()
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == uid


def test_queries_reference_only_existing_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    allowed_names, allowed_labels = allowed_series()
    for where, expr in queries(dashboard):
        assert expr.count("(") == expr.count(")"), f"{where}: unbalanced parentheses"
        assert expr.count("{") == expr.count("}"), f"{where}: unbalanced braces"
        names, labels = parse_promql(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= allowed_names, f"{where}: unknown metrics {names - allowed_names}"
        assert labels <= allowed_labels, f"{where}: unknown labels {labels - allowed_labels}"


def test_stage_matchers_name_real_stages(dashboard: dict[str, Any]) -> None:
    for where, expr in queries(dashboard):
        for stage in re.findall(r'stage\s*=\s*"([^"]*)"', expr):
            assert stage in STAGES, f"{where}: no stage {stage!r}"


def test_every_spec_and_torchserve_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for _, expr in queries(dashboard):
        used |= parse_promql(expr)[0]
    for name, (kind, _) in SPEC_METRICS.items():
        series = f"{name}_bucket" if kind == "histogram" else name
        assert series in used, f"{series} is on no panel"
    assert used >= TS_REQUIRED


@pytest.mark.parametrize("quantile", ["0.5", "0.95", "0.99"])
def test_latency_quantiles_per_stage(dashboard: dict[str, Any], quantile: str) -> None:
    pattern = re.compile(
        rf"histogram_quantile\(\s*{re.escape(quantile)}\s*,\s*sum by \(le, stage\) \("
        r"rate\(shuffleguard_request_duration_seconds_bucket\[\$__rate_interval\]\)\)\)"
    )
    matching = [where for where, expr in queries(dashboard) if pattern.fullmatch(expr)]
    assert matching, f"no p{quantile} latency-per-stage panel"


def test_datasource_points_at_the_compose_prometheus() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert "prometheus" in compose["services"]
    prometheus = yaml.safe_load((REPO / "docker/prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
