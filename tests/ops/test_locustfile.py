"""The load-test scenario and its headless runner.

locust monkey-patches the standard library (gevent) on import, so everything that
imports it runs in a subprocess; the runner's own module imports only the standard
library and is tested in-process. The end-to-end runs target a tiny HTTP server
started here on a free loopback port.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "load_tests" / "locustfile.py"
RUNNER = REPO / "load_tests" / "run_headless.py"

PAYLOAD_SCRIPT = """
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("sg_locustfile", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
out = Path(sys.argv[2])
p = mod.PAYLOADS
(out / "clip.mp4").write_bytes(p.mp4)
(out / "clip.npy").write_bytes(p.npy)
(out / "still.png").write_bytes(p.png)
tasks = {t.__name__: sorted(getattr(t, "locust_tag_set", ())) for t in mod.GatewayUser.tasks}
hosts = ["http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:8000",
         "http://10.0.0.1:8000", "http://example.com", ""]
print(json.dumps({
    "frames": p.frames, "size": p.size, "tasks": tasks,
    "loopback": {h: mod.is_loopback_url(h) for h in hosts},
}))
"""


def load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sg_run_headless", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner() -> ModuleType:
    return load_runner()


# ----------------------------------------------------------------------------- locustfile
@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("payloads")
    env = {**os.environ, "SG_LOAD_FRAMES": "12", "SG_LOAD_SIZE": "48"}
    proc = subprocess.run(
        [sys.executable, "-c", PAYLOAD_SCRIPT, str(LOCUSTFILE), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_npy_payload_is_a_uint8_clip(payloads: tuple[Path, dict]) -> None:
    out, info = payloads
    clip = np.load(out / "clip.npy", allow_pickle=False)
    assert (info["frames"], info["size"]) == (12, 48)  # the env settings were honoured
    assert clip.dtype == np.uint8
    assert clip.shape == (12, 48, 48, 3)
    # it moves: no two consecutive frames are equal
    assert all(not np.array_equal(clip[t], clip[t + 1]) for t in range(len(clip) - 1))


def test_mp4_payload_decodes_to_the_same_clip(payloads: tuple[Path, dict]) -> None:
    out, _ = payloads
    clip = np.load(out / "clip.npy", allow_pickle=False)
    with av.open(io.BytesIO((out / "clip.mp4").read_bytes())) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert frames.shape == clip.shape
    error = np.abs(frames.astype(np.int16) - clip.astype(np.int16)).mean()
    assert error < 8.0, f"mp4 drifts from the clip by {error:.1f} levels on average"


def test_bad_input_payload_is_a_still_image(payloads: tuple[Path, dict]) -> None:
    out, _ = payloads
    data = (out / "still.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with av.open(io.BytesIO(data)) as container:
        assert len(list(container.decode(video=0))) == 1  # not a video: SPEC says 415


def test_task_mix_and_tags(payloads: tuple[Path, dict]) -> None:
    _, info = payloads
    tasks = info["tasks"]
    assert set(tasks) == {
        "classify_mp4",
        "classify_npy",
        "list_models",
        "readiness",
        "classify_not_a_video",
    }
    assert tasks["classify_not_a_video"] == ["bad-input"]
    assert all(
        "bad-input" not in tags for name, tags in tasks.items() if name != "classify_not_a_video"
    )


def test_locustfile_accepts_only_loopback_hosts(payloads: tuple[Path, dict]) -> None:
    _, info = payloads
    assert info["loopback"] == {
        "http://127.0.0.1:8000": True,
        "http://localhost:1": True,
        "http://[::1]:8000": True,
        "http://10.0.0.1:8000": False,
        "http://example.com": False,
        "": False,
    }


# ------------------------------------------------------------------ runner: arguments
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("1h30m", 5400.0), ("1.5m", 90.0), ("45", 45.0)],
)
def test_parse_duration(runner: ModuleType, text: str, seconds: float) -> None:
    assert runner.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "5m10", "-3s"])
def test_parse_duration_rejects(runner: ModuleType, text: str) -> None:
    with pytest.raises(ValueError):
        runner.parse_duration(text)


def test_parse_args_defaults_and_normalisation(runner: ModuleType) -> None:
    args = runner.parse_args(
        ["--host", "http://localhost:8000/", "--users", "8", "--spawn-rate", "4",
         "--run-time", "30s", "--out", "r.json"]
    )  # fmt: skip
    assert args.host == "http://localhost:8000"
    assert (args.users, args.spawn_rate, args.run_time) == (8, 4.0, 30.0)
    assert args.out == Path("r.json")
    assert args.max_requests == runner.DEFAULT_MAX_REQUESTS
    assert not args.bad_input


@pytest.mark.parametrize(
    "argv",
    [
        ["--host", "http://10.0.0.1:8000"],
        ["--host", "http://192.168.1.5:8000"],
        ["--host", "https://example.com"],
        ["--host", "ftp://127.0.0.1:21"],
        ["--host", "http://127.0.0.1:8000/v1"],
        ["--users", "0"],
        ["--users", "100000"],
        ["--run-time", "2h"],
        ["--run-time", "0s"],
        ["--max-requests", "0"],
    ],
)
def test_parse_args_refuses(runner: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.parse_args(argv)
    assert exc.value.code == 2


# ------------------------------------------------------------------ runner: the report
def test_build_report_counts_and_exact_percentiles(runner: ModuleType, tmp_path: Path) -> None:
    record = runner.RunRecord()
    for i in range(1, 101):  # 1..100 ms; every 10th classify is a 429
        status = 429 if i % 10 == 0 else 200
        record.add(
            "POST", "/v1/classify [mp4]", float(i), status, "HTTP 429" if status == 429 else None
        )
    record.add("GET", "/readyz", 500.0, 503, None)
    report = runner.build_report(
        record,
        duration_s=10.0,
        stop_reason="run_time",
        started_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        config={"host": "http://127.0.0.1:8000"},
    )
    assert report["requests"] == 101
    assert report["failures"] == 10
    assert report["failures_excluding_429"] == 0
    assert report["status_codes"] == {"200": 90, "429": 10, "503": 1}
    assert report["ratio_429"] == pytest.approx(10 / 101)
    assert report["rps"] == pytest.approx(10.1)
    assert report["classify"]["requests"] == 100
    assert report["classify"]["ratio_429"] == pytest.approx(0.1)
    assert report["classify"]["latency_ms"] == {
        "p50": 50.0, "p95": 95.0, "p99": 99.0, "mean": 50.5, "min": 1.0, "max": 100.0,
    }  # fmt: skip
    assert report["latency_ms"]["max"] == 500.0
    assert [e["name"] for e in report["endpoints"]] == ["/readyz", "/v1/classify [mp4]"]
    assert report["errors"] == [
        {"method": "POST", "name": "/v1/classify [mp4]", "error": "HTTP 429", "occurrences": 10}
    ]

    path = tmp_path / "nested" / "report.json"
    runner.write_report(report, path)
    assert json.loads(path.read_text()) == report
    assert not list(path.parent.glob("*.tmp"))


# ------------------------------------------------------------------ runner: end to end
class _FakeGateway(BaseHTTPRequestHandler):
    """Answers like the gateway: every 3rd classify is a 429 with Retry-After."""

    counts: dict[str, int]
    lock: threading.Lock

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _count(self, key: str) -> int:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            return self.counts[key]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._count("total")
        if self.path.startswith("/v1/models"):
            self._reply(200, {"models": [{"name": "toy", "default": True}]})
        else:
            self._reply(200, {"status": "ready"})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._count("total")
        n = self._count("classify")
        if n % 3 == 0:
            self._count("429")
            self._reply(
                429, {"error": {"code": "overloaded", "message": "retry"}}, {"Retry-After": "1"}
            )
        else:
            self._reply(200, {"label": "a", "label_index": 0, "model": "toy"})


@pytest.fixture()
def fake_gateway() -> Iterator[tuple[str, dict[str, int]]]:
    counts: dict[str, int] = {}
    handler = type("Handler", (_FakeGateway,), {"counts": counts, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()


def run_headless(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "load_tests.run_headless", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_headless_run_writes_the_report(
    fake_gateway: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    host, counts = fake_gateway
    out = tmp_path / "report.json"
    proc = run_headless(
        "--host", host, "--users", "2", "--spawn-rate", "2", "--run-time", "2s",
        "--out", str(out), "--log-level", "WARNING",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())

    for key in ("requests", "failures", "rps", "latency_ms", "status_codes", "ratio_429"):
        assert key in report, key
    assert set(report["latency_ms"]) >= {"p50", "p95", "p99"}
    assert report["stop_reason"] == "run_time"
    assert 2.0 <= report["duration_s"] < 2.0 + 10.0
    # every request the server answered is in the report, once
    assert report["requests"] == counts["total"] == sum(report["status_codes"].values())
    assert report["status_codes"]["429"] == counts["429"]
    assert report["classify"]["requests"] == counts["classify"]
    assert report["ratio_429"] == pytest.approx(counts["429"] / counts["total"])
    assert report["failures_excluding_429"] == 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    assert report["config"]["exclude_tags"] == ["bad-input"]
    names = {e["name"] for e in report["endpoints"]}
    assert "/v1/classify [mp4]" in names
    assert not any("png" in n for n in names)


def test_headless_run_stops_at_max_requests(
    fake_gateway: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    host, counts = fake_gateway
    out = tmp_path / "report.json"
    proc = run_headless(
        "--host", host, "--users", "2", "--spawn-rate", "2", "--run-time", "60s",
        "--max-requests", "6", "--out", str(out), "--log-level", "WARNING",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["stop_reason"] == "max_requests"
    assert 6 <= report["requests"] <= 6 + 2  # users finish the request they are in
    assert report["duration_s"] < 30


def test_headless_run_refuses_a_remote_host(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = run_headless("--host", "http://10.9.8.7:8000", "--run-time", "1s", "--out", str(out))
    assert proc.returncode == 2
    assert "loopback" in proc.stderr
    assert not out.exists()
