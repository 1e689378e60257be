"""Settings: one backend URL or several, their management URLs, the backend kind."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.cli import parse
from service.commands import serve
from service.config import BackendEndpoint, Settings


def test_one_url_stays_one_backend() -> None:
    s = Settings(backend_url="http://ts:8080/", backend_management_url="http://ts:9000")
    assert s.backend_url == "http://ts:8080"
    assert s.backends == (BackendEndpoint("http://ts:8080", "http://ts:9000"),)
    assert s.backend_kind == "torchserve"


def test_several_urls_comma_separated_or_a_list() -> None:
    a = Settings(backend_url=" http://a:8080/ ,http://b:7080")
    b = Settings(backend_url=["http://a:8080", "http://b:7080"])
    assert a.backend_url == b.backend_url == "http://a:8080,http://b:7080"
    # management URLs left unset: each inference URL's port + 1
    assert a.backends == (
        BackendEndpoint("http://a:8080", "http://a:8081"),
        BackendEndpoint("http://b:7080", "http://b:7081"),
    )


def test_several_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUFFLEGUARD_BACKEND_URL", "http://a:1,http://b:3")
    monkeypatch.setenv("SHUFFLEGUARD_BACKEND_MANAGEMENT_URL", "http://a:2,http://b:9")
    monkeypatch.setenv("SHUFFLEGUARD_BACKEND_KIND", "oip")
    s = Settings()
    assert [e.management_url for e in s.backends] == ["http://a:2", "http://b:9"]
    assert s.backend_kind == "oip"


@pytest.mark.parametrize(
    "values",
    [
        {"backend_url": "http://a:1,ftp://b:2"},
        {"backend_url": "http://a:1,http://a:1"},
        {"backend_url": ","},
        {"backend_url": "http://a:1,http://b:3", "backend_management_url": "http://a:2"},
        {"backend_kind": "triton"},
        {"backend_probe_interval_s": 0},
    ],
)
def test_bad_backend_settings_fail_at_start(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)


def _serve_args(*argv: str) -> serve.ServeConfig:
    config = parse(["serve", *argv])
    assert isinstance(config, serve.ServeConfig)
    return config


def test_serve_takes_repeated_backend_urls() -> None:
    settings, external = serve.settings_from_config(
        _serve_args("--backend-url", "http://a:8080", "--backend-url", "http://b:8090")
    )
    assert external
    assert [(e.url, e.management_url) for e in settings.backends] == [
        ("http://a:8080", "http://a:8081"),
        ("http://b:8090", "http://b:8091"),
    ]


def test_serve_oip_needs_a_backend_url() -> None:
    with pytest.raises(ValueError, match="needs --backend-url"):
        serve.settings_from_config(_serve_args("--backend-kind", "oip"))
    settings, _ = serve.settings_from_config(
        _serve_args("--backend-kind", "oip", "--backend-url", "http://kserve:8080")
    )
    assert settings.backend_kind == "oip"
