"""The app without a backend: parameter policy, validation, errors, ids, metrics.

The backend URL points at a loopback port nobody listens on (a real refused
connection), so everything here happens before or instead of a model call.
Classification against the real TorchServe is in tests/integration.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.gateway import create_app


def _closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _settings(**overrides: object) -> Settings:
    url = _closed_url()
    base: dict[str, object] = {
        "backend_url": url,
        "backend_management_url": url,
        "backend_connect_retries": 0,
        "retry_after_s": 2,
    }
    return Settings(**{**base, **overrides})


@pytest.fixture
def prod() -> Iterator[TestClient]:
    with TestClient(create_app(_settings())) as client:
        yield client


@pytest.fixture
def research() -> Iterator[TestClient]:
    with TestClient(create_app(_settings(research_mode=True))) as client:
        yield client


def _samples(client: TestClient, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.mark.parametrize(
    "query",
    ["defense=false", "ensemble=3", "h1=0", "h2=1", "seed=7", "ensemble=999", "model=m&seed=x"],
)
def test_production_refuses_research_parameters(prod: TestClient, query: str) -> None:
    r = prod.post(f"/v1/classify?{query}", content=b"clip")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "research_mode_required"
    assert "SHUFFLEGUARD_RESEARCH_MODE" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "query, field",
    [
        ("ensemble=0", "ensemble"),
        ("ensemble=65", "ensemble"),
        ("h1=-1", "h1"),
        ("h2=0", "h2"),
        ("seed=-5", "seed"),
        ("seed=abc", "seed"),
        ("defense=perhaps", "defense"),
        ("model=../../etc", "model"),
        ("model=" + "m" * 80, "model"),
    ],
)
def test_research_mode_validates_parameters(research: TestClient, query: str, field: str) -> None:
    r = research.post(f"/v1/classify?{query}", content=b"clip")
    assert r.status_code == 422
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == "invalid_parameter"
    assert body["error"]["message"].startswith(field)


def test_backend_down_is_503_with_retry_after(prod: TestClient) -> None:
    r = prod.post("/v1/classify", content=b"some clip bytes")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "backend_unavailable"
    r = prod.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert prod.get("/healthz").json() == {"status": "ok"}
    assert _samples(prod, "shuffleguard_backend_errors_total") == {(("kind", "unavailable"),): 1.0}
    r = prod.get("/v1/models")
    assert r.status_code == 503


def test_request_id_is_echoed_or_made(prod: TestClient) -> None:
    r = prod.get("/healthz", headers={"X-Request-ID": "client-id.42"})
    assert r.headers["x-request-id"] == "client-id.42"
    r = prod.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"
    assert len(r.headers["x-request-id"]) == 32
    r = prod.post("/v1/classify?seed=1", headers={"X-Request-ID": "abc"})
    assert r.headers["x-request-id"] == "abc"


def test_every_classify_request_is_counted(prod: TestClient) -> None:
    prod.post("/v1/classify?seed=1", content=b"x")  # 403
    prod.post("/v1/classify?model=../x", content=b"x")  # 422
    prod.post("/v1/classify?model=nosuchmodel", content=b"x")  # 503 (backend down)
    prod.post("/v1/classify", content=b"")  # 400
    prod.get("/v1/classify")  # 405
    counts = _samples(prod, "shuffleguard_requests_total")
    by_status = {dict(k)["status"]: (dict(k)["model"], v) for k, v in counts.items()}
    assert by_status["403"] == ("toy_mixed_r3d18", 1.0)
    # names the gateway has never seen served do not become label values
    assert by_status["422"] == ("unknown", 1.0)
    assert by_status["503"] == ("unknown", 1.0)
    assert by_status["400"] == ("toy_mixed_r3d18", 1.0)
    assert by_status["405"][1] == 1.0
    assert "shuffleguard_inflight_requests" in prod.get("/metrics").text


def test_apps_have_their_own_metrics() -> None:
    with TestClient(create_app(_settings())) as a, TestClient(create_app(_settings())) as b:
        a.post("/v1/classify?seed=1")
        assert sum(_samples(a, "shuffleguard_requests_total").values()) == 1
        assert sum(_samples(b, "shuffleguard_requests_total").values()) == 0


def test_unknown_route_and_docs(prod: TestClient) -> None:
    r = prod.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert prod.get("/docs").status_code == 200
    spec = prod.get("/openapi.json").json()
    params = {p["name"] for p in spec["paths"]["/v1/classify"]["post"]["parameters"]}
    assert params == {"model", "ensemble", "h1", "h2", "seed", "defense", "early_stop"}
    assert {"/v1/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
