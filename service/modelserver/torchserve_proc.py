"""Start, watch and stop a TorchServe process.

:class:`TorchServeProcess` runs ``torchserve --start --foreground`` in a process
group of its own, with a private runtime directory, so several TorchServes (a
developer's, the test suite's, the benchmark's) can run on one machine:

* ``config.properties`` is ``model_store/config.properties`` (or the file given)
  with the addresses, ports and model store of this instance written over it;
* ``TMPDIR``/``TEMP`` point into the runtime directory: TorchServe keeps its pid
  file (``.model_server.pid``), the worker sockets (``.ts.sock.<port>``) and the
  unpacked archives in the temp directory, and two instances sharing ``/tmp``
  would refuse to start or talk to each other's workers;
* logs go to ``<runtime dir>/logs`` (``LOG_LOCATION``, ``METRICS_LOCATION``) and
  the frontend's stdout/stderr to ``<runtime dir>/logs/torchserve.out``.

:meth:`TorchServeProcess.stop` sends SIGTERM to the whole group (the launcher,
the Java frontend and its Python workers), waits, then SIGKILLs whatever is
left, so no Java process outlives it. :class:`Supervisor` restarts the server
when it dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import psutil

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONFIG",
    "Supervisor",
    "TorchServeError",
    "TorchServeOptions",
    "TorchServeProcess",
    "free_ports",
    "read_properties",
]

#: the repository's TorchServe configuration (loopback, token auth off, prometheus)
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "model_store" / "config.properties"

#: keys that always come from :class:`TorchServeOptions`, never from the base file
_OWNED_KEYS = (
    "inference_address",
    "management_address",
    "metrics_address",
    "grpc_inference_address",
    "grpc_management_address",
    "grpc_inference_port",
    "grpc_management_port",
    "initial_worker_port",
    "model_store",
    "load_models",
    "disable_token_authorization",
)


class TorchServeError(RuntimeError):
    """TorchServe did not start, or died while starting."""


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (held open together while picked)."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def read_properties(path: Path) -> dict[str, str]:
    """A Java ``.properties`` file (``key=value`` lines, ``#`` comments) as a dict."""
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


@dataclass
class TorchServeOptions:
    """Where and how one TorchServe instance runs."""

    model_store: Path
    host: str = "127.0.0.1"
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    #: ``load_models``: "all", or comma-separated archive names (``name=file.mar``)
    models: str = "all"
    #: base ``config.properties``; default: ``<model_store>/config.properties``, else
    #: the repository's :data:`DEFAULT_CONFIG`
    base_config: Path | None = None
    #: runtime directory (config, logs, temp); default: a fresh one under the temp dir
    workdir: Path | None = None
    #: extra ``config.properties`` entries (win over the base file)
    extra: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = 180.0


class TorchServeProcess:
    """One TorchServe instance in its own process group."""

    def __init__(self, options: TorchServeOptions) -> None:
        self.options = options
        self._own_workdir = options.workdir is None
        self.workdir = Path(
            options.workdir or tempfile.mkdtemp(prefix="shuffleguard-ts-")
        ).resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self.starts = 0

    # ------------------------------------------------------------ addresses
    @property
    def inference_url(self) -> str:
        return f"http://{self.options.host}:{self.options.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.options.host}:{self.options.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.options.metrics_port}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --------------------------------------------------------------- config
    def write_config(self) -> Path:
        """Write this instance's ``config.properties`` into the runtime directory."""
        opts = self.options
        base = opts.base_config
        if base is None:
            candidate = opts.model_store / "config.properties"
            base = candidate if candidate.is_file() else DEFAULT_CONFIG
        props = read_properties(base) if base.is_file() else {}
        for key in _OWNED_KEYS:
            props.pop(key, None)
        grpc_inf, grpc_mgmt, worker_port = free_ports(3, opts.host)
        props.update(
            {
                "inference_address": self.inference_url,
                "management_address": self.management_url,
                "metrics_address": self.metrics_url,
                "grpc_inference_address": opts.host,
                "grpc_management_address": opts.host,
                "grpc_inference_port": str(grpc_inf),
                "grpc_management_port": str(grpc_mgmt),
                "initial_worker_port": str(worker_port),
                "model_store": str(opts.model_store.resolve()),
                "load_models": opts.models,
                "disable_token_authorization": "true",
            }
        )
        props.update(opts.extra)
        path = self.workdir / "config.properties"
        lines = [f"# written by shuffleguard from {base}"]
        lines += [f"{k}={v}" for k, v in props.items()]
        path.write_text("\n".join(lines) + "\n")
        return path

    def command(self, config: Path) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from ts.model_server import start; start()",
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(self.options.model_store.resolve()),
            "--ts-config",
            str(config),
        ]

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Launch TorchServe (returns at once; see :meth:`wait_ready`)."""
        if self.is_running():
            raise TorchServeError("this TorchServe is already running")
        store = self.options.model_store
        if not store.is_dir():
            raise TorchServeError(f"model store {store} does not exist")
        if self.options.models == "all" and not any(store.glob("*.mar")):
            raise TorchServeError(
                f"no .mar archive in {store}: build one with `shuffleguard archive` first"
            )
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        env = dict(os.environ)
        env.update(
            TMPDIR=str(tmp),
            TEMP=str(tmp),
            LOG_LOCATION=str(self.log_dir),
            METRICS_LOCATION=str(self.log_dir),
        )
        # A gateway running with several workers sets this; TorchServe's own
        # Python workers must not write into it.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        out = open(self.log_dir / "torchserve.out", "ab")  # noqa: SIM115 (lives with the process)
        try:
            self._proc = subprocess.Popen(
                self.command(config),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: signals reach the whole tree
            )
        finally:
            out.close()  # the child holds its own descriptor
        self.starts += 1
        self._stopping = False
        logger.info(
            "TorchServe starting (pid %d): inference %s, management %s, metrics %s, logs %s",
            self._proc.pid,
            self.inference_url,
            self.management_url,
            self.metrics_url,
            self.log_dir,
        )

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(
        self,
        models: Sequence[str] | None = None,
        timeout_s: float | None = None,
        stop_event: threading.Event | None = None,
    ) -> list[str]:
        """Block until ``/ping`` answers and every model (or ``models``) has a READY worker.

        Returns the ready model names. Raises :class:`TorchServeError` when the
        process exits or the timeout passes first.
        """
        deadline = time.monotonic() + (timeout_s or self.options.start_timeout_s)
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if stop_event is not None and stop_event.is_set():
                    raise TorchServeError("stopped while waiting for TorchServe")
                if not self.is_running():
                    code = self._proc.returncode if self._proc else "?"
                    raise TorchServeError(
                        f"TorchServe exited with code {code} while starting; last log lines:\n"
                        f"{self.log_tail()}"
                    )
                ready = self._ready_models(client, models)
                if ready is not None:
                    logger.info("TorchServe ready: %s", ", ".join(ready))
                    return ready
                if time.monotonic() > deadline:
                    raise TorchServeError(
                        f"TorchServe not ready after {timeout_s or self.options.start_timeout_s:g}"
                        f" s; last log lines:\n{self.log_tail()}"
                    )
                time.sleep(0.25)

    def _ready_models(self, client: httpx.Client, models: Sequence[str] | None) -> list[str] | None:
        try:
            if client.get(f"{self.inference_url}/ping").status_code != 200:
                return None
            names = (
                list(models)
                if models
                else [
                    m["modelName"]
                    for m in client.get(f"{self.management_url}/models").json()["models"]
                ]
            )
            if not names:
                return None
            for name in names:
                response = client.get(f"{self.management_url}/models/{name}")
                if response.status_code != 200:
                    return None
                workers = [w for entry in response.json() for w in entry.get("workers", [])]
                if not any(w.get("status") == "READY" for w in workers):
                    return None
            return names
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def group_processes(self) -> list[psutil.Process]:
        """Every live process of this instance: its process group plus descendants."""
        if self._proc is None:
            return []
        pgid = self._proc.pid
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pgid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) == pgid:
                    found[proc.pid] = proc
        return [p for p in found.values() if _alive(p)]

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the whole process tree; SIGKILL what is left after ``timeout_s``. Idempotent.

        The Java frontend and its workers get SIGTERM first and the launcher, which
        waits on Java, exits by itself: that way each process is reaped by its own
        parent and no ``[java] <defunct>`` entry is left behind.
        """
        if self._proc is None:
            return
        self._stopping = True
        launcher = self._proc
        procs = self.group_processes()
        others = [p for p in procs if p.pid != launcher.pid]
        for proc in others:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(p) for p in others):
            time.sleep(0.1)
        try:
            launcher.wait(timeout=5 if others else 0.1)
        except subprocess.TimeoutExpired:
            launcher.terminate()
        left = [p for p in self.group_processes() if p.pid != launcher.pid]
        if left:
            logger.warning("TorchServe did not stop in %g s: killing %s", timeout_s, left)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(launcher.pid, signal.SIGKILL)  # the group: whatever is left
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            launcher.wait(timeout=5)
        logger.info("TorchServe stopped (pid %d)", launcher.pid)

    def kill(self) -> None:
        """SIGKILL the Java frontend only (tests: simulate a crash the supervisor must see)."""
        for proc in self.group_processes():
            with contextlib.suppress(psutil.Error):
                if "java" in proc.name():
                    proc.kill()

    def close(self) -> None:
        """Stop, and remove the runtime directory's temp files (logs stay unless it was ours)."""
        self.stop()
        shutil.rmtree(self.workdir / "tmp", ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        chunks = []
        for name in ("torchserve.out", "ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(chunks) or "(no logs)"

    def __enter__(self) -> TorchServeProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its table entry is left)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Supervisor(threading.Thread):
    """Restart TorchServe whenever it dies, with backoff, until :meth:`stop`."""

    def __init__(
        self,
        server: TorchServeProcess,
        *,
        check_interval_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        super().__init__(name="torchserve-supervisor", daemon=True)
        self.server = server
        self.check_interval_s = check_interval_s
        self.max_backoff_s = max_backoff_s
        self.restarts = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)

    def run(self) -> None:
        backoff = 1.0
        while not self._stop_event.wait(self.check_interval_s):
            if self.server.is_running():
                continue
            logger.error(
                "TorchServe died (exit code %s); restarting it. Last log lines:\n%s",
                self.server._proc.returncode if self.server._proc else "?",
                self.server.log_tail(10),
            )
            self.server.stop(timeout_s=10)  # reap anything left of the old group
            if self._stop_event.is_set():
                return
            try:
                self.server.start()
                self.server.wait_ready(stop_event=self._stop_event)
                self.restarts += 1
                backoff = 1.0
                logger.info("TorchServe is back (restart %d)", self.restarts)
            except TorchServeError as exc:
                if self._stop_event.is_set():
                    return
                logger.error("TorchServe restart failed: %s; next try in %.0f s", exc, backoff)
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
