"""Settings: SPEC defaults, the SHUFFLEGUARD_ environment, fail-fast validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings, normalize_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SHUFFLEGUARD_"):
            monkeypatch.delenv(key)


def test_defaults_follow_the_spec() -> None:
    s = Settings()
    assert s.research_mode is False
    assert s.default_model == "toy_mixed_r3d18"
    assert s.max_upload_bytes == 50 * 1024 * 1024
    assert s.max_pixels == 3840 * 2160
    assert s.max_frames == 3000
    assert s.max_decode_seconds == 30
    assert s.upload_timeout_s == 30
    assert s.backend_timeout_s == 30
    assert s.suspicion_threshold == 0.5
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert (
        s.torchserve_inference_port,
        s.torchserve_management_port,
        s.torchserve_metrics_port,
    ) == (8080, 8081, 8082)
    assert s.backend_url == "http://127.0.0.1:8080"
    assert s.backend_management_url == "http://127.0.0.1:8081"
    assert s.model_store == Path("model_store")
    assert s.max_admitted == s.max_inflight + s.max_queue


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUFFLEGUARD_RESEARCH_MODE", "1")
    monkeypatch.setenv("SHUFFLEGUARD_MAX_INFLIGHT", "8")
    monkeypatch.setenv("SHUFFLEGUARD_BACKEND_URL", "http://torchserve:8080/")
    monkeypatch.setenv("SHUFFLEGUARD_BACKEND_MANAGEMENT_URL", "http://torchserve:8081")
    monkeypatch.setenv("SHUFFLEGUARD_ENSEMBLE", "20")
    s = Settings()
    assert s.research_mode is True
    assert s.max_inflight == 8
    assert s.backend_url == "http://torchserve:8080"  # trailing slash dropped
    assert s.backend_management_url == "http://torchserve:8081"
    assert s.ensemble == 20


def test_keyword_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUFFLEGUARD_MAX_INFLIGHT", "8")
    assert Settings(max_inflight=2).max_inflight == 2


@pytest.mark.parametrize(
    "field, value",
    [
        ("backend_url", "not a url"),
        ("backend_url", "ftp://host:8080"),
        ("backend_url", "http://"),
        ("backend_url", "torchserve:8080"),
        ("backend_management_url", "http://host:8081/?x=1"),
        ("ensemble", 0),
        ("ensemble", 65),
        ("suspicion_threshold", 1.5),
        ("suspicion_threshold", -0.1),
        ("max_inflight", 0),
        ("max_queue", -1),
        ("max_upload_bytes", 0),
        ("upload_timeout_s", 0),
        ("backend_timeout_s", -1),
        ("default_model", "../etc/passwd"),
        ("shuffle_mode", "gpu"),
        ("early_stop_max_rounds", 0),
        ("log_level", "LOUD"),
        ("port", 70000),
    ],
)
def test_nonsense_fails_fast(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})
    assert field in str(info.value)


def test_nonsense_from_environment_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUFFLEGUARD_MAX_INFLIGHT", "many")
    with pytest.raises(ValidationError):
        Settings()


def test_torchserve_ports_must_differ() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        Settings(torchserve_inference_port=9000, torchserve_management_port=9000)


def test_settings_are_immutable() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.max_inflight = 3  # type: ignore[misc]


def test_normalize_url() -> None:
    assert normalize_url(" https://a.example:8443/x/ ", name="u") == "https://a.example:8443/x"
    with pytest.raises(ValueError, match="u:"):
        normalize_url("http://[::1", name="u")
