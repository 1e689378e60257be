"""``shuffleguard serve`` as a user runs it: a real process, real signals, real Java."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from service.modelserver.archive import build_mar
from service.modelserver.torchserve_proc import TorchServeProcess, free_ports
from tests import media
from tests.integration.helpers import (
    TINY,
    TINY_META,
    ColorNet,
    Gateway,
    color_frames,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIP = media.write_kind(None, color_frames("red"), "mp4_h264")


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("serve_store")
    build_mar(ColorNet(), TINY_META, store)
    return store


class Serve:
    """A ``shuffleguard serve`` child process and its addresses."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), *args]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited early:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def java(self) -> list[psutil.Process]:
        return [p for p in self.descendants() if p.name() == "java"]

    def stop(self, sig: int, timeout_s: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _ts_args(store: Path) -> tuple[list[str], str, str]:
    inference, management, metrics = free_ports(3)
    args = [
        "--model-store",
        str(store),
        "--default-model",
        TINY,
        "--ts-inference-port",
        str(inference),
        "--ts-management-port",
        str(management),
        "--ts-metrics-port",
        str(metrics),
    ]
    return args, f"http://127.0.0.1:{inference}", f"http://127.0.0.1:{management}"


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:  # a failed test must not leave Java behind either
        tree = serve.descendants() if serve.proc.poll() is None else []
        serve.kill()
        for p in _alive(tree):
            p.kill()


def _classify(url: str) -> int:
    return httpx.post(f"{url}/v1/classify", content=CLIP, timeout=60).status_code


def _backend_ready(inference_url: str, management_url: str) -> bool:
    try:
        if httpx.get(f"{inference_url}/ping", timeout=2).status_code != 200:
            return False
        desc = httpx.get(f"{management_url}/models/{TINY}", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(w.get("status") == "READY" for e in desc for w in e.get("workers", []))


def _diagnose(
    serve: Serve,
    inference_url: str,
    management_url: str,
    polls: int,
    backend_back: float | None,
    gateway_back: float | None,
) -> str:
    """Everything needed to tell a slow restart from a stuck gateway, in one message."""
    log = serve.log.read_text()
    parts = [
        f"polls={polls} backend_back={backend_back} gateway_back={gateway_back}",
        f"backend ready now: {_backend_ready(inference_url, management_url)}",
    ]
    try:
        readyz = httpx.get(f"{serve.url}/readyz", timeout=5)
        parts.append(f"gateway /readyz now: {readyz.status_code} {readyz.text[:300]}")
    except httpx.HTTPError as exc:
        parts.append(f"gateway /readyz now: {exc!r}")
    parts.append("--- serve log\n" + log[-3000:])
    # The supervisor names the restarted TorchServe's log directory; its own log says
    # whether the model came back.
    for line in reversed(log.splitlines()):
        if "TorchServe starting" in line and "logs " in line:
            ts_log = Path(line.rsplit("logs ", 1)[1].strip()) / "ts_log.log"
            if ts_log.is_file():
                parts.append(f"--- {ts_log}\n" + ts_log.read_text()[-3000:])
            break
    return "\n".join(parts)


def test_serve_restarts_a_dead_torchserve_and_stops_clean_on_sigint(
    tiny_store: Path, tmp_path: Path, serve_factory: list[Serve]
) -> None:
    args, inference_url, management_url = _ts_args(tiny_store)
    serve = Serve(args, tmp_path / "serve.log")
    serve_factory.append(serve)
    wait_until(serve.ready, 180, 0.25)
    assert _classify(serve.url) == 200

    # TorchServe dies: the gateway answers 503 meanwhile, serve starts it again, and
    # the gateway is ready within 10 s of the backend being ready, without a restart.
    (java,) = serve.java()
    java.kill()
    wait_until(lambda: httpx.get(f"{serve.url}/readyz", timeout=2).status_code == 503, 10, 0.05)
    # While it is down a classify gets 503 (or 429); on an idle machine the supervisor
    # may already have the tiny model back by the time the request lands, and then
    # the only right answer is a real 200 from the new backend.
    code = _classify(serve.url)
    assert code in (503, 429) or (code == 200 and _backend_ready(inference_url, management_url)), (
        code
    )
    backend_back = gateway_back = None
    # Bounded by polls as well as by the clock: a paused VM can make the monotonic
    # clock jump past a pure deadline before a single poll has seen the restart.
    polls = 0
    deadline = time.monotonic() + 180
    while gateway_back is None and (time.monotonic() < deadline or polls < 600):
        polls += 1
        now = time.monotonic()
        if backend_back is None and _backend_ready(inference_url, management_url):
            backend_back = now
        if serve.ready():
            gateway_back = time.monotonic()
            if backend_back is None:
                # The backend came up between this poll's two checks (the gateway is
                # only ready once it is), so it must be ready now; counting from the
                # start of this poll only overstates the gateway's delay.
                assert _backend_ready(inference_url, management_url)
                backend_back = now
        time.sleep(0.1)
    assert backend_back is not None and gateway_back is not None, _diagnose(
        serve, inference_url, management_url, polls, backend_back, gateway_back
    )
    assert gateway_back - backend_back < 10
    assert _classify(serve.url) == 200
    new_java = serve.java()
    assert len(new_java) == 1 and new_java[0].pid != java.pid

    tree = serve.descendants()
    assert serve.stop(signal.SIGINT) in (0, 130)
    assert _alive(tree) == [], f"left behind: {_alive(tree)}"
    assert not _backend_ready(inference_url, management_url)


def test_sigterm_stops_gateway_and_torchserve(
    tiny_store: Path, tmp_path: Path, serve_factory: list[Serve]
) -> None:
    args, inference_url, management_url = _ts_args(tiny_store)
    serve = Serve(args, tmp_path / "serve.log")
    serve_factory.append(serve)
    wait_until(serve.ready, 180, 0.25)
    tree = serve.descendants()
    assert any(p.name() == "java" for p in tree)
    code = serve.stop(signal.SIGTERM)
    assert code in (0, 128 + signal.SIGTERM)
    assert _alive(tree) == [], f"left behind: {_alive(tree)}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{serve.url}/healthz", timeout=2)
    assert "TorchServe stopped" in serve.log.read_text()


def test_backend_url_uses_a_running_torchserve_and_leaves_it_alone(
    torchserve: TorchServeProcess, tmp_path: Path, serve_factory: list[Serve]
) -> None:
    serve = Serve(
        [
            "--backend-url",
            torchserve.inference_url,
            "--backend-management-url",
            torchserve.management_url,
            "--default-model",
            TINY,
        ],
        tmp_path / "serve.log",
    )
    serve_factory.append(serve)
    wait_until(serve.ready, 60, 0.1)
    assert serve.java() == []  # it started no TorchServe of its own
    assert _classify(serve.url) == 200
    assert serve.stop(signal.SIGTERM) in (0, 128 + signal.SIGTERM)
    assert torchserve.is_running()
    assert httpx.get(f"{torchserve.inference_url}/ping", timeout=5).status_code == 200


def test_classify_command_prints_table_and_json(research_gateway: Gateway, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(CLIP)
    url = research_gateway.url
    cmd = [sys.executable, "-m", "service.cli", "classify", str(clip), "--url", url]
    table = subprocess.run(cmd + ["--seed", "4"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "label" in table.stdout and "red (index 0)" in table.stdout
    assert "seed=4" in table.stdout
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["label"] == "red"
    bad = subprocess.run(cmd + ["--ensemble", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "invalid_parameter" in bad.stderr
