"""The OpenAPI document lists every status each operation answers, with the real
error body (schemathesis checks the live answers against it: tests/integration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.decoder import errors as decoder_errors
from service.gateway import create_app
from service.gateway.errors import ERROR_CODES, GatewayError
from service.gateway.keys import hash_key


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(Settings()).openapi()


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/v1/classify", "post", {200, 400, 401, 403, 404, 408, 413, 415, 422, 429, 502, 503, 504}),
        ("/v1/models", "get", {200, 401, 502, 503, 504}),
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
        has_challenge = "WWW-Authenticate" in doc.get("headers", {})
        assert has_challenge == (int(status) == 401), (path, status)


def _domain_codes() -> set[str]:
    """The code of every typed error: the decoder's, and each gateway error class that
    names its own (not the base, nor ``VideoRejected``, which passes the decoder's on)."""
    codes = set(decoder_errors.CODES)
    pending = [GatewayError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "code" in vars(cls) and cls is not GatewayError:
            codes.add(cls.code)
    return codes


def test_every_domain_error_code_has_a_status_and_is_documented(spec: dict[str, Any]) -> None:
    """One table: each error's code has its status there, and the OpenAPI document
    names the code under that status (the one exception is 499, which no client reads)."""
    codes = _domain_codes()
    assert len(codes) > 20 and {"bad_video", "too_many_frames", "bad_multipart"} <= codes
    assert codes <= set(ERROR_CODES), codes - set(ERROR_CODES)
    documented: dict[int, str] = {}
    for ops in spec["paths"].values():
        for op in ops.values():
            for status, doc in op["responses"].items():
                documented[int(status)] = documented.get(int(status), "") + doc["description"]
    for code in codes:
        entry = ERROR_CODES[code]
        assert (f"`{code}`" in documented.get(entry.status, "")) == entry.answered, code
    assert {c for c in codes if not ERROR_CODES[c].answered} == {"client_disconnected"}


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


def test_security_is_declared_only_when_keys_are_configured(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    """An open gateway declares no scheme (its document would lie: schemathesis's
    ignored_auth check holds it to it); a keyed one requires a key on classify and
    models, and on nothing else (probes and /metrics stay open)."""
    assert "securitySchemes" not in spec.get("components", {})
    assert all("security" not in op for ops in spec["paths"].values() for op in ops.values())
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys: [{{name: a, role: client, sha256: {hash_key('k')}}}]\n")
    keyed = create_app(Settings(api_keys_file=keys)).openapi()
    schemes = keyed["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["bearer"]["scheme"] == "bearer"
    secured = {
        (path, method)
        for path, ops in keyed["paths"].items()
        for method, op in ops.items()
        if op.get("security")
    }
    assert secured == {("/v1/classify", "post"), ("/v1/models", "get")}
