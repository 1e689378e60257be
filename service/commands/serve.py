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

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("gateway")
    g.add_argument("--host", help="gateway bind address (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="gateway port (default 8000)")
    g.add_argument("--workers", type=int, default=1, help="gateway processes (default 1)")
    g.add_argument(
        "--research-mode",
        action="store_const",
        const=True,
        help="open every request parameter and response field (never in production)",
    )
    g.add_argument("--max-inflight", type=int, help="classify requests running at once")
    g.add_argument("--default-model", help="model used when a request names none")
    g.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    b = parser.add_argument_group("backend")
    b.add_argument(
        "--backend-url",
        action="append",
        help="URL of a running model server to use instead of starting a TorchServe; "
        "repeat it (or give a comma-separated list) for a pool with failover",
    )
    b.add_argument(
        "--backend-management-url",
        action="append",
        help="TorchServe management URL, one per --backend-url (default: each inference "
        "URL's host, port + 1)",
    )
    b.add_argument(
        "--backend-kind",
        choices=("torchserve", "oip"),
        help="torchserve (default) or oip: an Open Inference Protocol v2 server "
        "(KServe, Triton; needs --backend-url)",
    )
    b.add_argument("--model-store", type=Path, help="TorchServe model store (default model_store)")
    b.add_argument("--ts-host", help="TorchServe bind address (default 127.0.0.1)")
    b.add_argument("--ts-inference-port", type=int, help="default 8080")
    b.add_argument("--ts-management-port", type=int, help="default 8081")
    b.add_argument("--ts-metrics-port", type=int, help="default 8082")


#: argparse dest -> Settings field
_OVERRIDES = {
    "host": "host",
    "port": "port",
    "research_mode": "research_mode",
    "max_inflight": "max_inflight",
    "default_model": "default_model",
    "backend_url": "backend_url",
    "backend_management_url": "backend_management_url",
    "backend_kind": "backend_kind",
    "model_store": "model_store",
    "ts_host": "torchserve_host",
    "ts_inference_port": "torchserve_inference_port",
    "ts_management_port": "torchserve_management_port",
    "ts_metrics_port": "torchserve_metrics_port",
}


def settings_from_args(args: argparse.Namespace) -> tuple[Any, bool]:
    """``(settings, external)``: external when the backend is a running TorchServe."""
    from service.config import Settings, management_url_for, split_urls

    overrides = {
        field: getattr(args, dest)
        for dest, field in _OVERRIDES.items()
        if getattr(args, dest, None) is not None
    }
    for name in ("backend_url", "backend_management_url"):  # repeated options: one list
        if name in overrides:
            overrides[name] = ",".join(overrides[name])
    external = "backend_url" in overrides or bool(os.environ.get("SHUFFLEGUARD_BACKEND_URL"))
    if (
        "backend_url" in overrides
        and "backend_management_url" not in overrides
        and not os.environ.get("SHUFFLEGUARD_BACKEND_MANAGEMENT_URL")
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


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.gateway.logs import configure_logging

    try:
        settings, external = settings_from_args(args)
    except ValidationError as exc:
        print(f"shuffleguard serve: bad settings:\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"shuffleguard serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_lines=args.log_format == "json")
    if args.workers < 1:
        print("shuffleguard serve: --workers must be >= 1", file=sys.stderr)
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

    from service.torchserve_proc import (
        Supervisor,
        TorchServeError,
        TorchServeOptions,
        TorchServeProcess,
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
        print(
            f"shuffleguard serve: port(s) {busy} on {settings.torchserve_host} are in use (another"
            " TorchServe?). Use it with --backend-url, or pick free --ts-*-port values.",
            file=sys.stderr,
        )
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
        settings = settings.model_copy(
            update={
                "backend_url": server.inference_url,
                "backend_management_url": server.management_url,
            }
        )
        warn_random_init(settings.model_store, models)
        if settings.default_model not in models:
            logger.warning(
                "default model %s is not in the model store; using %s",
                settings.default_model,
                models[0],
            )
        supervisor.start()
        return _run_gateway(settings, args)
    finally:
        # A second Ctrl-C must not cut the clean-up short and orphan Java.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logger.info("stopping TorchServe")
        supervisor.stop()
        server.close()


def _run_gateway(settings: Any, args: argparse.Namespace) -> int:
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
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
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
