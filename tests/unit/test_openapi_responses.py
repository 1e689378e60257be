"""The OpenAPI document lists every status each operation answers, with the real
error body (schemathesis checks the live answers against it: tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from service.config import Settings
from service.gateway import create_app


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(Settings()).openapi()


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/v1/classify", "post", {200, 400, 403, 404, 408, 413, 415, 422, 429, 502, 503, 504}),
        ("/v1/models", "get", {200, 502, 503, 504}),
        ("/readyz", "get", {200, 503}),
        ("/healthz", "get", {200}),
        ("/metrics", "get", {200}),
    ],
)
def test_every_status_is_documented_with_the_error_body(
    spec: dict[str, Any], path: str, method: str, statuses: set[int]
) -> None:
    responses = spec["paths"][path][method]["responses"]
    assert {int(s) for s in responses} == statuses
    for status, doc in responses.items():
        if int(status) < 400:
            continue
        schema = doc["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
        assert doc["description"]
        has_retry_after = "Retry-After" in doc.get("headers", {})
        assert has_retry_after == (int(status) in (429, 503)), (path, status)


def test_422_is_the_gateways_error_body_not_fastapis(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    doc = spec["paths"]["/v1/classify"]["post"]["responses"]["422"]
    assert "invalid_parameter" in doc["description"]


def test_classify_200_covers_both_modes_and_metrics_is_text(spec: dict[str, Any]) -> None:
    ok = spec["paths"]["/v1/classify"]["post"]["responses"]["200"]
    refs = {
        s["$ref"].rsplit("/", 1)[1] for s in ok["content"]["application/json"]["schema"]["anyOf"]
    }
    assert refs == {"ClassifyResponse", "ResearchClassifyResponse"}
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]
    assert set(metrics["content"]) == {"text/plain"}
