"""The environment is read by settings objects only (issue 20): ``service/config.py``
(the gateway's :class:`Settings` and the small client, Prometheus and sources
settings) and the TorchServe handler's own :class:`HandlerSettings` (the handler runs
without the ``service`` package). Names and defaults of the variables are unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from service.commands import serve
from service.config import ClientSettings, PrometheusSettings, Settings, SourcesSettings
from service.gateway.keys import KEY_ENV, auth_headers
from service.gateway.metrics import multiprocess_dir
from service.modelserver import handler
from service.research import real_clips

ROOT = Path(__file__).resolve().parents[2]
#: where reading the environment is allowed: file -> class (None: the whole file)
READERS = {"service/config.py": None, "service/modelserver/handler.py": "HandlerSettings"}


def _is_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _env_reads(tree: ast.AST) -> list[int]:
    """Lines that read a variable: ``os.environ.get``/``[...]``/``in``, ``os.getenv``.
    Writing (``os.environ[k] = v``) and handing the whole environment to a child
    process (``dict(os.environ)``, ``{**os.environ}``) are not reads of a setting."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_environ(node.value) and node.attr == "get":
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            if isinstance(node.ctx, ast.Load):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Compare)
            and any(_is_environ(c) for c in node.comparators)
            or (
                isinstance(node, ast.Attribute)
                and node.attr == "getenv"
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            )
        ):
            lines.append(node.lineno)
    return lines


def _reads_outside_settings() -> list[str]:
    found = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        allowed: set[int] = set()
        if rel in READERS:
            cls = READERS[rel]
            if cls is None:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name == cls:
                    allowed |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        found += [f"{rel}:{line}" for line in _env_reads(tree) if line not in allowed]
    return found


def test_no_environment_reads_outside_settings() -> None:
    assert _reads_outside_settings() == []


def test_the_scan_finds_a_read() -> None:
    """Sanity: each form the scan looks for is found, and writes are not."""
    source = (
        "import os\n"
        "a = os.environ.get('X')\n"
        "b = os.environ['X']\n"
        "c = 'X' in os.environ\n"
        "d = os.getenv('X')\n"
        "os.environ['X'] = '1'\n"
        "e = dict(os.environ)\n"
    )
    assert sorted(_env_reads(ast.parse(source))) == [2, 3, 4, 5]


def test_handler_settings_names_and_defaults() -> None:
    assert handler.HandlerSettings.from_environ({}) == handler.HandlerSettings(64, None)
    given = {"SHUFFLEGUARD_MAX_FORWARD_CLIPS": "8", "SHUFFLEGUARD_GATHER_THREADS": "3"}
    assert handler.HandlerSettings.from_environ(given) == handler.HandlerSettings(8, 3)
    zero = {"SHUFFLEGUARD_GATHER_THREADS": "0"}
    assert handler.HandlerSettings.from_environ(zero).gather_threads is None
    with pytest.raises(ValueError):
        handler.HandlerSettings.from_environ({"SHUFFLEGUARD_MAX_FORWARD_CLIPS": "many"})
    # read once, at import, into the constants the handler uses
    assert handler.SETTINGS.max_forward_clips == handler.MAX_FORWARD_CLIPS
    assert handler.SETTINGS.gather_threads == handler.GATHER_THREADS


def test_client_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KEY_ENV == "SHUFFLEGUARD_API_KEY"
    monkeypatch.setenv(KEY_ENV, "sg_env")
    assert ClientSettings().api_key == "sg_env"
    assert auth_headers() == {"Authorization": "Bearer sg_env"}
    monkeypatch.setenv(KEY_ENV, "")
    assert auth_headers() == {}


def test_prometheus_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert multiprocess_dir() is None
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    assert multiprocess_dir() is None and PrometheusSettings().multiproc_dir is None
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert multiprocess_dir() == str(tmp_path)


def test_sources_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    default = real_clips.REPO / "data" / "sources"
    monkeypatch.delenv("SHUFFLEGUARD_SOURCES", raising=False)
    assert real_clips.sources_dir() == default
    monkeypatch.setenv("SHUFFLEGUARD_SOURCES", "")
    assert real_clips.sources_dir() == default
    monkeypatch.setenv("SHUFFLEGUARD_SOURCES", str(tmp_path))
    assert real_clips.sources_dir() == tmp_path == SourcesSettings().sources


def test_small_settings_do_not_leak_into_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUFFLEGUARD_SOURCES", "/somewhere")
    monkeypatch.setenv("SHUFFLEGUARD_API_KEY", "sg_x")
    assert not {"sources", "api_key"} & set(Settings.model_fields)
    assert Settings.environment_fields().isdisjoint({"sources", "api_key"})


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SHUFFLEGUARD_BACKEND_URL", "SHUFFLEGUARD_BACKEND_MANAGEMENT_URL"):
        monkeypatch.delenv(name, raising=False)


def test_serve_external_from_option_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    assert serve.settings_from_config(serve.ServeConfig())[1] is False
    monkeypatch.setenv("SHUFFLEGUARD_BACKEND_URL", "http://ts:7000")
    settings, external = serve.settings_from_config(serve.ServeConfig())
    assert external and settings.backend_url == "http://ts:7000"
    assert "backend_url" in Settings.environment_fields()


def test_serve_management_url_from_environment_or_port_plus_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear(monkeypatch)
    config = serve.ServeConfig(backend_url=["http://ts:7000"])
    assert serve.settings_from_config(config)[0].backends[0].management_url == "http://ts:7001"
    monkeypatch.setenv("SHUFFLEGUARD_BACKEND_MANAGEMENT_URL", "")  # empty: unset
    assert serve.settings_from_config(config)[0].backends[0].management_url == "http://ts:7001"
    monkeypatch.setenv("SHUFFLEGUARD_BACKEND_MANAGEMENT_URL", "http://mgmt:9")
    assert serve.settings_from_config(config)[0].backends[0].management_url == "http://mgmt:9"
