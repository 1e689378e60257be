"""docker-compose.yml, the Dockerfiles, the TorchServe container config and the
Prometheus config agree with each other and with the two command lines, checked
without a Docker engine (YAML, the images' CMD lines and the real argument parsers)."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
GATEWAY_DOCKERFILE = REPO / "docker" / "gateway.Dockerfile"
TORCHSERVE_DOCKERFILE = REPO / "docker" / "torchserve.Dockerfile"
TS_CONTAINER_CONFIG = REPO / "docker" / "torchserve.config.properties"
PROMETHEUS = REPO / "docker" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDERS = REPO / "docker/grafana/provisioning/dashboards/dashboards.yml"
SERVICES = {"gateway", "torchserve", "prometheus", "grafana"}
TINI = ["/usr/bin/tini", "-g", "--"]


# ------------------------------------------------------------------------------ helpers
_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ``${NAME:-default}`` with nothing set in the environment."""
    if not isinstance(value, str):
        return value
    return _VAR.sub(lambda m: m.group("default") or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert starts, f"{path.name} has no FROM"
    return instructions[starts[-1] :]


def exec_form(path: Path, keyword: str) -> list[str]:
    """The last ``keyword`` (CMD/ENTRYPOINT) of the final stage, which must be exec form."""
    values = [args for kw, args in final_stage(path) if kw == keyword]
    assert values, f"{path.name}: no {keyword} in the final stage"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), (
        f"{path.name}: {keyword} must be a JSON (exec form) list so signals reach the process"
    )
    return parsed


def exec_form_healthcheck(path: Path) -> list[str]:
    """The final stage's ``HEALTHCHECK [options] CMD [...]`` as compose's ``test`` list."""
    (check,) = [a for kw, a in final_stage(path) if kw == "HEALTHCHECK"]
    return ["CMD", *json.loads(check.split(" CMD ", 1)[1])]


def arg_default(path: Path, name: str) -> str:
    for kw, args in dockerfile_instructions(path):
        if kw == "ARG" and args.startswith(name + "="):
            return args.split("=", 1)[1]
    raise AssertionError(f"{path.name}: no ARG {name}=default")


def properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def pyproject_pin(package: str) -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = [*project["dependencies"], *project["optional-dependencies"]["models"]]
    for dep in deps:
        name, sep, version = dep.partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"pyproject.toml pins no {package}==")


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


# ----------------------------------------------------------------------- the compose file
def test_compose_has_exactly_the_four_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_published_ports_bind_loopback_only(compose: dict[str, Any]) -> None:
    published = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, dict), f"{name}: use the long port syntax with host_ip"
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} is not loopback-only"
            published[name] = int(interpolate(port["published"]))
    assert set(published) == {"gateway", "prometheus", "grafana"}
    assert published == {"gateway": 8000, "prometheus": 9090, "grafana": 3000}


def test_torchserve_is_unpublished_on_an_internal_network(compose: dict[str, Any]) -> None:
    ts = service(compose, "torchserve")
    assert "ports" not in ts
    for network in ts["networks"]:
        assert compose["networks"][network].get("internal") is True, network
    # the gateway and Prometheus must share a network with it to reach it
    for peer in ("gateway", "prometheus"):
        assert set(ts["networks"]) & set(service(compose, peer)["networks"]), peer


def test_every_service_has_healthcheck_restart_limits_and_log_rotation(
    compose: dict[str, Any],
) -> None:
    for name, svc in compose["services"].items():
        check = svc.get("healthcheck", {})
        assert check.get("test", [None])[0] == "CMD", f"{name}: healthcheck test in exec form"
        assert check.get("interval") and check.get("retries"), name
        assert svc.get("restart") in {"unless-stopped", "always", "on-failure"}, name
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name}: no cpu/memory limit"
        # docker refuses a cpu limit above the host's core count: defaults must fit 2
        assert 0 < float(interpolate(limits["cpus"])) <= 2, f"{name}: cpus {limits['cpus']}"
        assert svc["logging"]["options"]["max-size"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert svc.get("cap_drop") == ["ALL"], name


def test_startup_waits_on_health(compose: dict[str, Any]) -> None:
    gateway_deps = service(compose, "gateway")["depends_on"]
    assert gateway_deps["torchserve"]["condition"] == "service_healthy"
    grafana_deps = service(compose, "grafana")["depends_on"]
    assert grafana_deps["prometheus"]["condition"] == "service_healthy"


def test_gateway_defaults_to_production_mode(compose: dict[str, Any]) -> None:
    env = service(compose, "gateway")["environment"]
    entries = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    assert interpolate(entries["SHUFFLEGUARD_RESEARCH_MODE"]) == "0"


def test_gateway_environment_names_are_settings(compose: dict[str, Any]) -> None:
    """Settings ignore unknown SHUFFLEGUARD_* variables, so a typo here would do nothing."""
    from service.config import Settings

    names = [e.split("=", 1)[0] for e in service(compose, "gateway")["environment"]]
    assert names
    for name in names:
        assert name.startswith("SHUFFLEGUARD_"), name
        assert name.removeprefix("SHUFFLEGUARD_").lower() in Settings.model_fields, name


# -------------------------------------------------------------- command lines and images
def test_gateway_command_is_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    from service.cli import parse
    from service.commands.serve import ServeConfig, settings_from_config

    command = service(compose, "gateway")["command"]
    assert command[:2] == ["shuffleguard", "serve"]
    config = parse(command[1:])  # the click command `shuffleguard serve` runs
    assert isinstance(config, ServeConfig)
    settings, external = settings_from_config(config)
    assert external  # compose's TorchServe, not one serve starts
    assert [(b.url, b.management_url) for b in settings.backends] == [
        ("http://torchserve:8080", "http://torchserve:8081")
    ]
    assert config.host == settings.host == "0.0.0.0"
    assert config.port == settings.port == 8000


def test_torchserve_command_is_accepted_by_torchserve(compose: dict[str, Any]) -> None:
    from ts.arg_parser import ArgParser

    command = service(compose, "torchserve")["command"]
    assert command[0] == "torchserve"
    args = ArgParser.ts_parser().parse_args(command[1:])
    assert args.start and args.foreground and args.no_config_snapshots
    assert args.token_auth, "--disable-token-auth"
    assert args.model_store == "/app/model_store"
    assert args.models == ["all"]
    # the config it reads is the one the image writes
    writes = " ".join(a for kw, a in final_stage(TORCHSERVE_DOCKERFILE) if kw == "RUN")
    assert f"> {args.ts_config}" in writes, f"the image never writes {args.ts_config}"
    copies = " ".join(a for kw, a in final_stage(TORCHSERVE_DOCKERFILE) if kw == "COPY")
    assert f"model_store/ {args.model_store}/" in copies


@pytest.mark.parametrize(
    ("name", "dockerfile"),
    [("gateway", GATEWAY_DOCKERFILE), ("torchserve", TORCHSERVE_DOCKERFILE)],
)
def test_dockerfile_cmd_matches_compose(
    compose: dict[str, Any], name: str, dockerfile: Path
) -> None:
    svc = service(compose, name)
    assert exec_form(dockerfile, "CMD") == svc["command"]
    assert exec_form(dockerfile, "ENTRYPOINT") == TINI
    assert "entrypoint" not in svc, "compose must keep the image's tini entrypoint"
    assert svc["build"] == {"context": ".", "dockerfile": str(dockerfile.relative_to(REPO))}


@pytest.mark.parametrize("dockerfile", [GATEWAY_DOCKERFILE, TORCHSERVE_DOCKERFILE])
def test_images_run_as_numeric_non_root_with_a_healthcheck(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    users = [a for kw, a in stage if kw == "USER"]
    assert users, f"{dockerfile.name}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, users[-1]
    assert any(kw == "HEALTHCHECK" for kw, _ in stage)
    assert arg_default(dockerfile, "PYTHON_IMAGE") == "python:3.11-slim-bookworm"


def test_images_pin_the_projects_versions() -> None:
    assert arg_default(TORCHSERVE_DOCKERFILE, "TORCH_VERSION") == pyproject_pin("torch")
    assert arg_default(TORCHSERVE_DOCKERFILE, "TORCHSERVE_VERSION") == pyproject_pin("torchserve")
    assert pyproject_pin("torch-model-archiver") == pyproject_pin("torchserve")
    assert arg_default(TORCHSERVE_DOCKERFILE, "TORCH_INDEX_URL").endswith("/whl/cpu")


def test_gateway_image_is_the_core_install_without_torch() -> None:
    """The gateway image installs the project without extras, and torch is not among
    the core dependencies (it lives in the `models` extra)."""
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    heavy = ("torch", "torchvision", "torchserve", "pytorchvideo", "scipy", "matplotlib")
    names = {d.split("==")[0].split(">=")[0].split("[")[0].strip().lower() for d in core}
    assert not names & set(heavy), names & set(heavy)
    runs = " ".join(a for kw, a in dockerfile_instructions(GATEWAY_DOCKERFILE) if kw == "RUN")
    assert "pip install . " in runs + " " and "[models" not in runs and "torch==" not in runs


def test_healthchecks_probe_the_right_endpoints(compose: dict[str, Any]) -> None:
    ts_props = properties(TS_CONTAINER_CONFIG)
    management = port_of(ts_props["management_address"])
    gateway_port = int(service(compose, "gateway")["command"][-1])

    def probe(test: list[str]) -> str:
        return " ".join(test)

    assert f"127.0.0.1:{gateway_port}/healthz" in probe(
        service(compose, "gateway")["healthcheck"]["test"]
    )
    ts_check = service(compose, "torchserve")["healthcheck"]["test"]
    assert f"127.0.0.1:{management}" in probe(ts_check) and "'READY'" in probe(ts_check)
    assert (
        exec_form_healthcheck(GATEWAY_DOCKERFILE)
        == service(compose, "gateway")["healthcheck"]["test"]
    )
    assert exec_form_healthcheck(TORCHSERVE_DOCKERFILE) == ts_check
    exposed = " ".join(a for kw, a in final_stage(GATEWAY_DOCKERFILE) if kw == "EXPOSE")
    assert str(gateway_port) in exposed.split()


def effective_torchserve_config() -> dict[str, str]:
    """What the image writes: model_store/config.properties, then the container overrides."""
    props: dict[str, str] = {}
    repo_config = REPO / "model_store" / "config.properties"
    if repo_config.is_file():
        props.update(properties(repo_config))
    props.update(properties(TS_CONTAINER_CONFIG))
    return props


def test_torchserve_container_config() -> None:
    props = effective_torchserve_config()
    addresses = {
        key: urlsplit(props[key])
        for key in ("inference_address", "management_address", "metrics_address")
    }
    assert {k: (u.hostname, u.port) for k, u in addresses.items()} == {
        "inference_address": ("0.0.0.0", 8080),
        "management_address": ("0.0.0.0", 8081),
        "metrics_address": ("0.0.0.0", 8082),
    }
    assert props["metrics_mode"] == "prometheus"
    assert props["disable_token_authorization"] == "true"
    assert props["enable_model_api"] == "false"
    # one classify call is one request: (ensemble + 1) clips of uint8 in a single .npy
    assert int(props.get("max_request_size", 6553500)) >= 100 * 2**20


def test_gateway_backend_urls_match_torchserve_ports(compose: dict[str, Any]) -> None:
    from service.cli import parse
    from service.commands.serve import settings_from_config

    config = parse(service(compose, "gateway")["command"][1:])
    (backend,) = settings_from_config(config)[0].backends
    props = properties(TS_CONTAINER_CONFIG)
    for url, key in (
        (backend.url, "inference_address"),
        (backend.management_url, "management_address"),
    ):
        assert urlsplit(url).hostname == "torchserve"
        assert port_of(url) == port_of(props[key])
        assert str(port_of(url)) in service(compose, "torchserve")["expose"]


# ------------------------------------------------------------------ prometheus + grafana
def scrape_targets(config: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    return {
        job["job_name"]: (
            job.get("metrics_path", "/metrics"),
            [t for sc in job.get("static_configs", []) for t in sc["targets"]],
        )
        for job in config["scrape_configs"]
    }


def test_prometheus_scrapes_the_gateway_and_torchserve(compose: dict[str, Any]) -> None:
    jobs = scrape_targets(yaml.safe_load(PROMETHEUS.read_text()))
    gateway_port = int(service(compose, "gateway")["command"][-1])
    metrics_port = port_of(properties(TS_CONTAINER_CONFIG)["metrics_address"])
    assert ("/metrics", [f"gateway:{gateway_port}"]) in jobs.values()
    assert ("/metrics", [f"torchserve:{metrics_port}"]) in jobs.values()
    assert str(metrics_port) in service(compose, "torchserve")["expose"]


def test_prometheus_container_reads_this_config(compose: dict[str, Any]) -> None:
    svc = service(compose, "prometheus")
    flags = dict(f.split("=", 1) for f in svc["command"])
    assert f"./docker/prometheus.yml:{flags['--config.file']}:ro" in svc["volumes"]
    assert any(v.endswith(":" + flags["--storage.tsdb.path"]) for v in svc["volumes"])
    assert flags["--storage.tsdb.retention.size"]


def test_grafana_mounts_what_the_providers_expect(compose: dict[str, Any]) -> None:
    svc = service(compose, "grafana")
    mounts = {}
    for volume in svc["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = source
    assert mounts["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    providers = yaml.safe_load(GRAFANA_DASHBOARD_PROVIDERS.read_text())["providers"]
    for provider in providers:
        source = mounts[provider["options"]["path"]]
        assert list((REPO / source).glob("*.json")), f"no dashboards under {source}"
    home = svc["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_dir, home_file = home.rsplit("/", 1)
    assert (REPO / mounts[home_dir] / home_file).is_file()


# -------------------------------------------------------------------------- .dockerignore
def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent) decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        variants = {pat, pat[3:]} if pat.startswith("**/") else {pat}
        hit = any(
            fnmatch.fnmatchcase(c, v) or fnmatch.fnmatchcase(c, "*/" + v)
            for c in candidates
            for v in variants
            if v
        )
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    # the checker itself can say no
    assert dockerignore_excludes(patterns, ".venv/bin/python")
    assert dockerignore_excludes(patterns, ".git/HEAD")
    assert dockerignore_excludes(patterns, "service/__pycache__/cli.cpython-311.pyc")

    sources: list[str] = []
    for dockerfile in (GATEWAY_DOCKERFILE, TORCHSERVE_DOCKERFILE):
        for kw, args in dockerfile_instructions(dockerfile):
            if kw == "COPY" and "--from=" not in args:
                *srcs, _dest = [a for a in args.split() if not a.startswith("--")]
                sources += [s.rstrip("/") for s in srcs]
    assert {"pyproject.toml", "README.md", "service", "model_store"} <= set(sources)
    for source in sources:
        assert not dockerignore_excludes(patterns, source), f".dockerignore drops {source}"
        root = REPO / source
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for file in files:
            rel = file.relative_to(REPO).as_posix()
            if "__pycache__" in rel or rel.endswith(".tmp"):
                continue
            assert not dockerignore_excludes(patterns, rel), f".dockerignore drops {rel}"
