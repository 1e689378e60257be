"""Serve the defended model: TorchServe + the gateway, in the foreground.

By default this starts TorchServe on the model store (``model_store/``), waits
until its models are ready, then runs the gateway on http://127.0.0.1:8000.
TorchServe is supervised: if it dies, the gateway answers 503 meanwhile and
TorchServe is started again. Ctrl-C or SIGTERM stops both; no Java process is
left behind.

With ``--backend-url`` (or ``SHUFFLEGUARD_BACKEND_URL``) the gateway uses a
model server that is already running and leaves it alone on exit: a TorchServe,
or with ``--backend-kind oip`` an Open Inference Protocol v2 server (KServe,
Triton). Several URLs (the option repeated, or comma-separated) make a pool:
requests go to the least busy ready server and fail over when one goes down.

Every option also has an environment variable ``SHUFFLEGUARD_<NAME>`` (see
``service/config.py``); options given here win.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Literal, get_args, get_origin

from service.config import PrometheusSettings, Settings, management_url_for, split_urls
from service.options import ExperimentConfig, opt

logger = logging.getLogger(__name__)


def _setting(name: str, help: str | None = None, **kw: Any) -> Any:  # noqa: A002
    """An option that overrides the :class:`~service.config.Settings` field ``name``
    (default None: not given, the environment variable or the setting's default holds).
    Help and default come from the setting."""
    field = Settings.model_fields[name]
    default = field.default
    shown = default if not isinstance(default, Path) else str(default)
    text = f"{help or field.description} (default {shown}; SHUFFLEGUARD_{name.upper()})"
    if get_origin(field.annotation) is Literal:  # the setting's allowed values
        kw["choices"] = get_args(field.annotation)
    return opt(None, text, setting=name, **kw)


@dataclass
class ServeConfig(ExperimentConfig):
    """Settings of ``shuffleguard serve``: the options that override :class:`Settings`
    carry ``setting=<field>`` in their metadata; ``workers`` and ``log_format`` are
    serve's own."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "serve")
    USAGE_ERRORS: ClassVar[bool] = True

    host: str | None = _setting("host", panel="gateway")
    port: int | None = _setting("port", panel="gateway")
    workers: int = opt(1, "gateway processes", panel="gateway")
    research_mode: bool = opt(
        False,
        "open every request parameter and response field (never in production)",
        setting="research_mode",
        panel="gateway",
    )
    max_inflight: int | None = _setting("max_inflight", panel="gateway")
    default_model: str | None = _setting("default_model", panel="gateway")
    api_keys_file: Path | None = _setting("api_keys_file", panel="gateway")
    log_format: str = opt("text", "log line format", choices=("text", "json"), panel="gateway")
    backend_url: list[str] | None = _setting(
        "backend_url",
        "URL of a running model server to use instead of starting a TorchServe; repeat it"
        " (or give a comma-separated list) for a pool with failover",
        repeat=True,
        panel="backend",
    )
    backend_management_url: list[str] | None = _setting(
        "backend_management_url",
        "TorchServe management URL, one per --backend-url (unset: each inference URL's host,"
        " port + 1)",
        repeat=True,
        panel="backend",
    )
    backend_kind: str | None = _setting(
        "backend_kind",
        "torchserve or oip: an Open Inference Protocol v2 server (KServe, Triton; needs"
        " --backend-url)",
        panel="backend",
    )
    model_store: Path | None = _setting("model_store", panel="backend")
    ts_host: str | None = _setting("torchserve_host", panel="backend")
    ts_inference_port: int | None = _setting("torchserve_inference_port", panel="backend")
    ts_management_port: int | None = _setting("torchserve_management_port", panel="backend")
    ts_metrics_port: int | None = _setting("torchserve_metrics_port", panel="backend")

    def check(self) -> None:
        if self.workers < 1:
            raise ValueError("--workers must be >= 1")

    def overrides(self) -> dict[str, Any]:
        """The :class:`Settings` fields given on the command line (repeated URL options
        joined with commas, as the environment variables take them)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            name = f.metadata.get("setting")
            if name is None or value is None or value is False or value == []:
                continue
            out[name] = ",".join(value) if isinstance(value, list) else value
        return out


def settings_from_config(config: ServeConfig) -> tuple[Settings, bool]:
    """``(settings, external)``: the options given win over ``SHUFFLEGUARD_*``
    environment variables, which win over the defaults; external when the backend is
    a running server (``--backend-url`` or ``SHUFFLEGUARD_BACKEND_URL``). Only
    ``--backend-url`` given, with no management URL in options or environment: each
    URL's management API is its port + 1."""
    overrides = config.overrides()
    from_env = Settings.environment_fields()
    external = "backend_url" in overrides or "backend_url" in from_env
    if (
        "backend_url" in overrides
        and "backend_management_url" not in overrides
        and "backend_management_url" not in from_env
    ):
        overrides["backend_management_url"] = ",".join(
            management_url_for(url) for url in split_urls(overrides["backend_url"], name="url")
        )
    settings = Settings(**overrides)
    if settings.backend_kind == "oip" and not external:
        raise ValueError("--backend-kind oip needs --backend-url (serve starts TorchServe only)")
    return settings, external


def warn_random_init(model_store: Path, models: list[str]) -> list[str]:
    """Log a warning for every served archive whose meta.json says ``weights: random``;
    returns their names."""
    import json
    import zipfile

    random_init = []
    for name in models:
        mar = Path(model_store) / f"{name}.mar"
        try:
            with zipfile.ZipFile(mar) as zf:
                meta = json.loads(zf.read("meta.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
        if meta.get("weights") == "random":
            random_init.append(name)
            logger.warning(
                "model %s has random-init weights (a smoke-test/benchmark archive): its labels"
                " mean nothing",
                name,
            )
    return random_init


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the servers do: connections of a previous run in TIME_WAIT do not count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    # SIGTERM outside uvicorn (while TorchServe starts, or re-raised by uvicorn after
    # its graceful shutdown): unwind through the `finally` that stops TorchServe.
    raise SystemExit(128 + signum)


def run(args: ServeConfig) -> int:
    from pydantic import ValidationError

    from service.gateway.logs import configure_logging

    try:
        settings, external = settings_from_config(args)
    except ValidationError as exc:
        print(f"shuffleguard serve: bad settings:\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"shuffleguard serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_lines=args.log_format == "json")
    if settings.api_keys_file is not None:  # fail before TorchServe starts, not after
        from service.gateway.keys import KeyFileError, read_key_file

        try:
            read_key_file(settings.api_keys_file)
        except KeyFileError as exc:
            print(f"shuffleguard serve: {exc}", file=sys.stderr)
            return 2
    if args.workers == 1 and not _port_free(settings.host, settings.port):
        print(
            f"shuffleguard serve: {settings.host}:{settings.port} is in use; pick another --port",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _raise_system_exit)

    if external:
        logger.info(
            "using the running %s backend(s) at %s (left alone on exit)",
            settings.backend_kind,
            settings.backend_url,
        )
        return _run_gateway(settings, args)
    return _run_with_torchserve(settings, args)


def _run_with_torchserve(settings: Settings, args: ServeConfig) -> int:
    """Start TorchServe on the model store, wait for its models, run the gateway in
    front of it under a :class:`Supervisor`; stop TorchServe however the gateway ends."""
    from service.modelserver.torchserve_proc import (
        Supervisor,
        TorchServeError,
        TorchServeOptions,
        TorchServeProcess,
    )

    problem = _torchserve_unavailable(settings)
    if problem is not None:
        print(f"shuffleguard serve: {problem}", file=sys.stderr)
        return 2
    server = TorchServeProcess(
        TorchServeOptions(
            model_store=settings.model_store,
            host=settings.torchserve_host,
            inference_port=settings.torchserve_inference_port,
            management_port=settings.torchserve_management_port,
            metrics_port=settings.torchserve_metrics_port,
            start_timeout_s=settings.torchserve_start_timeout_s,
        )
    )
    supervisor = Supervisor(server)
    try:
        try:
            server.start()
            logger.info("waiting for TorchServe's models to be ready (logs: %s)", server.log_dir)
            models = server.wait_ready()
        except TorchServeError as exc:
            print(f"shuffleguard serve: TorchServe failed to start: {exc}", file=sys.stderr)
            return 1
        settings = _served_settings(settings, server.inference_url, server.management_url)
        _check_models(settings, models)
        supervisor.start()
        return _run_gateway(settings, args)
    finally:
        # A second Ctrl-C must not cut the clean-up short and orphan Java.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logger.info("stopping TorchServe")
        supervisor.stop()
        server.close()


def _torchserve_unavailable(settings: Settings) -> str | None:
    """Why TorchServe cannot start here (not installed, a port in use), or None."""
    if importlib.util.find_spec("ts") is None:  # the core install has no TorchServe
        return (
            "starting TorchServe needs the `models` extra"
            " (pip install 'shuffleguard[models]'); or point the gateway at a running"
            " model server with --backend-url."
        )
    busy = [
        p
        for p in (
            settings.torchserve_inference_port,
            settings.torchserve_management_port,
            settings.torchserve_metrics_port,
        )
        if not _port_free(settings.torchserve_host, p)
    ]
    if busy:
        return (
            f"port(s) {busy} on {settings.torchserve_host} are in use (another"
            " TorchServe?). Use it with --backend-url, or pick free --ts-*-port values."
        )
    return None


def _served_settings(settings: Settings, inference_url: str, management_url: str) -> Settings:
    """``settings`` pointed at the TorchServe this command started."""
    return settings.model_copy(
        update={"backend_url": inference_url, "backend_management_url": management_url}
    )


def _check_models(settings: Settings, models: list[str]) -> None:
    """Warn about random-init archives and a default model the store lacks."""
    warn_random_init(settings.model_store, models)
    if settings.default_model not in models:
        logger.warning(
            "default model %s is not in the model store; using %s",
            settings.default_model,
            models[0],
        )


def _run_gateway(settings: Any, args: ServeConfig) -> int:
    import uvicorn

    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # keep configure_logging's handlers
        "access_log": False,  # the gateway writes its own access line
        "timeout_graceful_shutdown": 10,
        "server_header": False,
    }
    logger.info(
        "gateway on http://%s:%d (docs: /docs, metrics: /metrics)", settings.host, settings.port
    )
    try:
        if args.workers == 1:
            from service.gateway.app import create_app

            uvicorn.Server(uvicorn.Config(create_app(settings), **common)).run()
            return 0
        # Several processes: each builds its app from the environment.
        for name in type(settings).model_fields:
            value = getattr(settings, name)
            if value is not None:
                os.environ[f"SHUFFLEGUARD_{name.upper()}"] = str(value)
        made_dir = None
        if PrometheusSettings().multiproc_dir is None:
            made_dir = tempfile.mkdtemp(prefix="shuffleguard-prom-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_dir
        try:
            uvicorn.run(
                "service.gateway.app:create_app_from_env",
                factory=True,
                workers=args.workers,
                **common,
            )
        finally:
            if made_dir is not None:
                shutil.rmtree(made_dir, ignore_errors=True)
        return 0
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        with contextlib.suppress(TypeError, ValueError):
            return int(exc.code or 0)
        return 1
