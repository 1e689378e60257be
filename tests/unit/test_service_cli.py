"""The service commands' command lines (serve, classify, archive, bench shuffle/serve/decode).

Their options are derived from typed configs now; the spellings and defaults below are
the ones the hand-written argparse parsers had (users' scripts, the README, docs/*.md,
the Makefile, docker-compose.yml and the k8s manifests call them). A test here fails
when one is renamed, dropped, added without updating this table, or gets a new default.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from service.cli import BENCHES, COMMANDS, build_app, main, parse
from service.commands.classify import ClassifyConfig, query_params
from service.commands.serve import ServeConfig, settings_from_config

#: command -> {flag: default} of the former argparse parsers (``FILE``: positional)
OPTIONS: dict[str, dict[str, Any]] = {
    "serve": {
        "--host": None, "--port": None, "--workers": 1, "--research-mode": False,
        "--max-inflight": None, "--default-model": None, "--api-keys-file": None,
        "--log-format": "text",
        "--backend-url": None, "--backend-management-url": None, "--backend-kind": None,
        "--model-store": None, "--ts-host": None, "--ts-inference-port": None,
        "--ts-management-port": None, "--ts-metrics-port": None,
    },
    "classify": {
        "FILE": ..., "--url": "http://127.0.0.1:8000", "--model": None, "--json": False,
        "--timeout": 120.0, "--request-id": None, "--ensemble": None, "--h1": None,
        "--h2": None, "--seed": None, "--no-defense": False,
    },
    "archive": {
        "--arch": None, "--checkpoint": None, "--random-init": False, "--labels": None,
        "--name": ..., "--out": Path("model_store"), "--h1": None, "--h2": None,
        "--ensemble": None, "--frame-interval": None, "--clip-len": None, "--crop-size": None,
        "--seed": 0, "--batch-size": 4, "--max-batch-delay-ms": 5, "--workers": 1,
        "--response-timeout": None, "--format": "torchscript",
    },
    "create-key": {
        "--file": ..., "--name": ..., "--role": "client", "--rate": None, "--burst": None,
        "--concurrency": None,
    },
    "bench shuffle": {
        "--frames": 32, "--sizes": [224, 16], "--n": 10, "--h1": 3, "--h2": 4,
        "--repeats": 21, "--warmup": 3, "--device": None, "--seed": 0, "--threads": None,
        "--out": None,
    },
    "bench serve": {
        "--model-store": Path("model_store"), "--sizes": ["toy", "full"],
        "--i3d-weights": Path("runs/weights/i3d_inception_kinetics400.pt"),
        "--i3d-video": Path("data/sources/vtest.avi"), "--ensemble": 10,
        "--requests": 30, "--full-requests": 1, "--saturation": 40, "--full-saturation": 0,
        "--concurrency": 4, "--warmup": 1, "--seed": 0, "--out": Path("runs/bench_serve"),
        "--no-progress": False,
    },
    "bench runtime": {
        "--arch": "i3d_inception", "--weights": "runs/weights/i3d_inception_kinetics400.pt",
        "--random-init": False, "--clip-len": 32, "--crop-size": 224,
        "--ways": ["eager", "channels_last", "bf16", "compile", "export"],
        "--clips-dir": "data/real_clips", "--clips": 4, "--repeats": 1, "--threads": 1,
        "--seed": 0, "--out": None,
    },
    "bench decode": {
        "--sources": ["all"], "--samplings": ["16x1", "32x2"], "--crop-size": 224,
        "--repeats": 7, "--warmup": 1, "--seed": 0, "--out": None,
    },
}  # fmt: skip

#: the smallest valid command line of each command
MINIMAL = {
    "classify": ["clip.npy"],
    "archive": ["--name", "m"],
    "create-key": ["--file", "keys.yaml", "--name", "m"],
}


def _click_command(words: str) -> Any:
    """The click command ``shuffleguard WORDS`` runs (typer builds it)."""
    command, *sub = words.split()
    found: Any = typer.main.get_command(build_app(command, sub[0] if sub else None))
    for word in [command, *sub]:
        found = found.commands[word]
    return found


def _flags(cmd: Any) -> list[str]:
    names = []
    for p in cmd.params:
        if p.param_type_name == "argument":
            names.append(str(p.name).upper())
        elif "--help" not in p.opts:
            names += [o for o in p.opts if o.startswith("--")]
    return names


def test_every_service_command_is_in_the_table() -> None:
    assert set(OPTIONS) == {*COMMANDS, *(f"bench {name}" for name in BENCHES)}


@pytest.mark.parametrize("words", list(OPTIONS))
def test_option_spellings_and_order_are_unchanged(words: str) -> None:
    assert _flags(_click_command(words)) == list(OPTIONS[words])


@pytest.mark.parametrize("words", list(OPTIONS))
def test_defaults_are_unchanged(words: str) -> None:
    config = parse([*words.split(), *MINIMAL.get(words, [])])
    given = {"FILE": "file", "--name": "name", "--file": "file"}
    got = {
        flag: getattr(config, given.get(flag, flag[2:]).replace("-", "_"))
        for flag in OPTIONS[words]
    }
    expected = {
        flag: getattr(config, given[flag]) if default is ... else default
        for flag, default in OPTIONS[words].items()
    }
    assert got == expected


@pytest.mark.parametrize("words", list(OPTIONS))
def test_help_lists_every_option(words: str, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.setdefault("COLUMNS", "200")
    assert main([*words.split(), "--help"]) == 0
    out = capsys.readouterr().out
    for flag in OPTIONS[words]:
        assert flag in out, flag
    assert main([*words.split(), "-h"]) == 0  # argparse's short help option still works


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--log-format", "xml"], "--log-format"),
        (["serve", "--backend-kind", "triton"], "--backend-kind"),
        (["serve", "--workers", "0"], "--workers must be >= 1"),
        (["serve", "--port", "http"], "--port"),
        (["serve", "--no-such-option"], "--no-such-option"),
        (["classify"], "FILE"),
        (["archive", "--random-init"], "--name"),
        (["archive", "--name", "m", "--format", "onnx"], "--format"),
        (["bench", "serve", "--sizes", "huge"], "--sizes"),
        (["bench", "shuffle", "--sizes", "big"], "--sizes"),
    ],
)
def test_bad_options_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 2 with the option named, as argparse did; nothing runs."""
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------ serve
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("SHUFFLEGUARD_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _serve(*argv: str) -> ServeConfig:
    config = parse(["serve", *argv])
    assert isinstance(config, ServeConfig)
    return config


def test_serve_options_map_onto_settings(clean_env: pytest.MonkeyPatch) -> None:
    argv = (
        "--host 0.0.0.0 --port 9000 --workers 2 --research-mode --max-inflight 7"
        " --default-model m1 --log-format json --model-store /srv/store --ts-host 127.0.0.2"
        " --ts-inference-port 9080 --ts-management-port 9081 --ts-metrics-port 9082"
    )
    config = _serve(*argv.split())
    settings, external = settings_from_config(config)
    assert not external
    assert (config.workers, config.log_format) == (2, "json")  # serve's own options
    got = {k: getattr(settings, k) for k in config.overrides()}
    assert got == {
        "host": "0.0.0.0", "port": 9000, "research_mode": True, "max_inflight": 7,
        "default_model": "m1", "model_store": Path("/srv/store"),
        "torchserve_host": "127.0.0.2", "torchserve_inference_port": 9080,
        "torchserve_management_port": 9081, "torchserve_metrics_port": 9082,
    }  # fmt: skip


def test_serve_without_options_is_the_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    from service.config import Settings

    config = _serve()
    assert config.overrides() == {}
    settings, external = settings_from_config(config)
    assert settings == Settings() and not external


def test_options_win_over_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SHUFFLEGUARD_PORT", "9001")
    clean_env.setenv("SHUFFLEGUARD_RESEARCH_MODE", "1")
    clean_env.setenv("SHUFFLEGUARD_MAX_INFLIGHT", "3")
    settings, _ = settings_from_config(_serve("--port", "9002"))
    assert settings.port == 9002  # the option wins
    assert settings.research_mode  # no --research-mode: the environment holds
    assert settings.max_inflight == 3


def test_backend_url_options_and_environment(clean_env: pytest.MonkeyPatch) -> None:
    # repeated or comma-separated: one pool; management URLs: each port + 1
    for argv in (
        ["--backend-url", "http://a:8080", "--backend-url", "http://b:8090"],
        ["--backend-url", "http://a:8080,http://b:8090"],
    ):
        settings, external = settings_from_config(_serve(*argv))
        assert external
        assert [(b.url, b.management_url) for b in settings.backends] == [
            ("http://a:8080", "http://a:8081"),
            ("http://b:8090", "http://b:8091"),
        ]
    # a management URL from the environment is kept when only --backend-url is given
    clean_env.setenv("SHUFFLEGUARD_BACKEND_MANAGEMENT_URL", "http://a:9999")
    settings, _ = settings_from_config(_serve("--backend-url", "http://a:8080"))
    assert settings.backends[0].management_url == "http://a:9999"
    # the backend URL from the environment alone: external too
    clean_env.delenv("SHUFFLEGUARD_BACKEND_MANAGEMENT_URL")
    clean_env.setenv("SHUFFLEGUARD_BACKEND_URL", "http://ts:8080")
    assert settings_from_config(_serve())[1]
    with pytest.raises(ValueError, match="needs --backend-url"):
        clean_env.delenv("SHUFFLEGUARD_BACKEND_URL")
        settings_from_config(_serve("--backend-kind", "oip"))


def test_serve_command_line_round_trips(clean_env: pytest.MonkeyPatch) -> None:
    config = _serve("--port", "9000", "--backend-url", "http://a:1", "--backend-url", "http://b:2")
    words = shlex.split(config.command())
    assert words[words.index("--backend-url") + 2] == "--backend-url"  # repeated, not spread
    assert parse(words[1:]) == config


# --------------------------------------------------------------------- classify, bench
def test_classify_query_parameters() -> None:
    config = parse(["classify", "c.npy", "--no-defense", "--seed", "7", "--model", "m"])
    assert isinstance(config, ClassifyConfig) and config.file == Path("c.npy")
    assert query_params(config) == {"model": "m", "seed": "7", "defense": "false"}
    research = parse(["classify", "c.mp4", "--ensemble", "20", "--h1", "3", "--h2", "1"])
    assert query_params(research) == {"ensemble": "20", "h1": "3", "h2": "1"}


def test_bench_list_options_take_several_values() -> None:
    shuffle = parse(["bench", "shuffle", "--sizes", "8", "16", "--threads", "1", "2"])
    assert (shuffle.sizes, shuffle.threads) == ([8, 16], [1, 2])
    serve = parse(["bench", "serve", "--sizes", "toy", "--no-progress"])
    assert serve.sizes == ["toy"] and serve.no_progress
    # the command the report records reproduces the run (progress bars never show)
    assert serve.command() == "shuffleguard bench serve --sizes toy --out runs/bench_serve"
    assert dataclasses.replace(parse(shlex.split(serve.command())[1:]), no_progress=True) == serve


# ------------------------------------------------------------------ documented commands
REPO = Path(__file__).resolve().parents[2]


def _documented_command_lines() -> list[tuple[str, list[str]]]:
    """Every ``shuffleguard serve|classify|archive|bench ...`` line in a fenced code
    block of the docs (continuations joined, ``VAR=value`` prefixes and comments dropped)."""
    import re

    found = []
    for path in sorted([*REPO.glob("docs/**/*.md"), REPO / "README.md", REPO / "CONTRIBUTING.md"]):
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                    words = words[1:]
                if words[:1] == ["shuffleguard"] and words[1:2] and words[1] in OPTIONS_ROOTS:
                    found.append((str(path.relative_to(REPO)), words[1:]))
    return found


OPTIONS_ROOTS = {words.split()[0] for words in OPTIONS}


def test_documented_command_lines_parse() -> None:
    lines = _documented_command_lines()
    assert len(lines) >= 15  # docs/benchmarks.md, serving.md, models.md, results.md, ...
    for where, argv in lines:
        try:
            parse(argv)
        except Exception as exc:  # noqa: BLE001 - report which line of which file
            raise AssertionError(f"{where}: shuffleguard {shlex.join(argv)}: {exc}") from exc


def test_serve_refuses_torchserve_ports_in_use(clean_env: pytest.MonkeyPatch) -> None:
    """``serve`` names the busy TorchServe ports (exit 2) before starting anything."""
    import socket

    from service.commands import serve
    from service.config import Settings
    from service.modelserver.torchserve_proc import free_ports

    inference, management, metrics = free_ports(3)
    settings = Settings(
        torchserve_inference_port=inference,
        torchserve_management_port=management,
        torchserve_metrics_port=metrics,
    )
    assert serve._torchserve_unavailable(settings) is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", management))
        busy.listen()
        problem = serve._torchserve_unavailable(settings)
    assert problem is not None and f"port(s) [{management}] on 127.0.0.1 are in use" in problem
