"""Soak run: thousands of mixed requests against the real stack, resources sampled.

    python -m load_tests.soak --requests 4000 --out docs/soak

starts ``shuffleguard serve`` (TorchServe + gateway, supervised) on free
loopback ports with a tiny TorchScript model (``soak_tiny``: clip 8 x 32 x 32,
logits from the clip's mean colour, so the model's cost does not hide the
service's), then sends ``--requests`` requests from ``--clients`` threads,
mixed per round of :data:`MIX`: valid mp4 and .npy clips, bad uploads (random
bytes, text, an .npy whose header has an unclosed bracket, a truncated mp4, an
empty body, multipart without the file field or with a 300-byte boundary),
oversized uploads (413), stalled uploads (408 after ``upload_timeout_s``) and,
every ``--burst-every`` requests, a burst of concurrent clips over
``max_inflight + max_queue`` (429).

Every ``--sample-every`` requests it samples RSS, open file descriptors and
threads of the gateway process and of TorchServe (its frontend and workers
together). At the end it checks the targets -- RSS growth after warm-up under
``--max-rss-growth``, descriptors and threads flat, no
5xx but 503/504, the same TorchServe worker processes, ``/readyz`` 200 -- and
writes ``soak.json`` and ``soak.png`` to ``--out``. Exit status 1 when a
target is missed. Every random choice takes ``--seed``.

"Flat" means no growth: the end sample, taken once the client's connections are
closed and idle keep-alive timers have run out, is at most ``--fd-slack`` above
the warmed-up one (a bounded pool of idle threads retiring makes it lower); the
report also gives the maximum after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import psutil
import torch
from tqdm import tqdm

from service.modelserver.archive import build_mar
from service.modelserver.torchserve_proc import free_ports

logger = logging.getLogger("soak")

REPO = Path(__file__).resolve().parents[1]
MODEL = "soak_tiny"
CLIP_LEN, CROP = 8, 32
META = {
    "name": MODEL,
    "arch": "soak_tiny",
    "clip_len": CLIP_LEN,
    "frame_interval": 1,
    "crop_size": CROP,
    "labels": ["red", "green", "blue"],
    "preset": {"h1": 2, "h2": 1, "ensemble": 10},
}
#: the gateway's limits during the soak (small, so going over them is cheap)
MAX_INFLIGHT, MAX_QUEUE = 2, 4
MAX_UPLOAD_BYTES = 1_000_000
UPLOAD_TIMEOUT_S = 1.0
#: the only 5xx a client may see: documented backend faults
DOCUMENTED_5XX = {503, 504}


class MeanColor(torch.nn.Module):
    """float ``[B, 3, T, H, W]`` in [0, 1] -> logits ``[B, 3]``: the clip's mean RGB."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))


# --------------------------------------------------------------------------- #
# Request bodies
# --------------------------------------------------------------------------- #
def _frames(rng: np.random.Generator, t: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    frames = np.empty((t, h, w, 3), np.uint8)
    frames[:] = rng.integers(30, 220, size=3, dtype=np.uint8)
    for i in range(t):  # a moving square, so the codec has motion to code
        frames[i, 10:26, 3 * i : 3 * i + 16] = 255
    return frames


def _mp4(frames: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(12, 1))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _bodies(seed: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Name -> (body, headers) of every single-request kind of the mix."""
    rng = np.random.default_rng(seed)
    mp4 = _mp4(_frames(rng))
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (8, 32, 32, 3 }"
    raw = (header + " " * (64 - (len(header) + 11) % 64) + "\n").encode()
    bad_npy = b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + bytes(8 * 32 * 32 * 3)
    long_b = "b" * 300
    return {
        "mp4": (mp4, {"Content-Type": "video/mp4"}),
        "npy": (
            _npy(_frames(rng, t=CLIP_LEN, h=CROP, w=CROP)),
            {"Content-Type": "application/x-npy"},
        ),
        "random_bytes": (rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes(), {}),
        "text": (b"this is text, not a video\n" * 40, {"Content-Type": "text/plain"}),
        "npy_unclosed_bracket": (bad_npy, {"Content-Type": "application/x-npy"}),
        "truncated_mp4": (mp4[: len(mp4) // 3], {"Content-Type": "video/mp4"}),
        "empty": (b"", {}),
        "multipart_no_file": (
            b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--xyz--\r\n',
            {"Content-Type": "multipart/form-data; boundary=xyz"},
        ),
        "multipart_long_boundary": (
            f'--{long_b}\r\nContent-Disposition: form-data; name="file"\r\n\r\nx\r\n'
            f"--{long_b}--\r\n".encode(),
            {"Content-Type": f"multipart/form-data; boundary={long_b}"},
        ),
        "oversized": (bytes(MAX_UPLOAD_BYTES + 1), {"Content-Type": "video/mp4"}),
    }


#: one round of the mix: kind -> requests per round (stalled: a raw socket, see _stalled)
MIX = {
    "mp4": 6,
    "npy": 6,
    "random_bytes": 1,
    "text": 1,
    "npy_unclosed_bracket": 1,
    "truncated_mp4": 1,
    "empty": 1,
    "multipart_no_file": 1,
    "multipart_long_boundary": 1,
    "oversized": 1,
    "stalled": 1,
}


def _stalled(port: int) -> int:
    """An upload that sends 1 kB of a declared 100 kB and stalls: the gateway answers 408."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        sock.sendall(head.encode() + bytes(1000))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


# --------------------------------------------------------------------------- #
# Resources
# --------------------------------------------------------------------------- #
@dataclass
class Sample:
    requests: int
    seconds: float
    gateway_rss_mb: float
    gateway_fds: int
    gateway_threads: int
    torchserve_rss_mb: float
    torchserve_fds: int
    torchserve_threads: int
    worker_pids: list[int]


def _torchserve_procs(gateway: psutil.Process) -> tuple[list[psutil.Process], list[int]]:
    """TorchServe's processes (every descendant of the serve command: the launcher, the
    Java frontend, its Python workers) and the workers' PIDs."""
    procs = gateway.children(recursive=True)
    workers = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            parent = proc.parent()
            if parent is not None and "java" in parent.name().lower():
                workers.append(proc.pid)
    return procs, sorted(workers)


def _sample(gateway: psutil.Process, requests: int, t0: float) -> Sample:
    ts, workers = _torchserve_procs(gateway)
    return Sample(
        requests=requests,
        seconds=round(time.monotonic() - t0, 2),
        gateway_rss_mb=gateway.memory_info().rss / 2**20,
        gateway_fds=gateway.num_fds(),
        gateway_threads=gateway.num_threads(),
        torchserve_rss_mb=sum(p.memory_info().rss for p in ts) / 2**20,
        torchserve_fds=sum(p.num_fds() for p in ts),
        torchserve_threads=sum(p.num_threads() for p in ts),
        worker_pids=workers,
    )


# --------------------------------------------------------------------------- #
# Run
# --------------------------------------------------------------------------- #
def _start_stack(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    store = workdir / "model_store"
    build_mar(MeanColor(), META, store, batch_size=4, max_batch_delay_ms=5)
    port, inference, management, metrics = free_ports(4)
    env = {
        **os.environ,
        "SHUFFLEGUARD_MAX_QUEUE": str(MAX_QUEUE),
        "SHUFFLEGUARD_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "SHUFFLEGUARD_UPLOAD_TIMEOUT_S": str(UPLOAD_TIMEOUT_S),
        "SHUFFLEGUARD_LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable, "-m", "service.cli", "serve",
        "--port", str(port),
        "--model-store", str(store),
        "--default-model", MODEL,
        "--max-inflight", str(MAX_INFLIGHT),
        "--ts-inference-port", str(inference),
        "--ts-management-port", str(management),
        "--ts-metrics-port", str(metrics),
    ]  # fmt: skip
    log = workdir / "serve.log"
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    with httpx.Client(timeout=5, trust_env=False) as client:
        while True:
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not come up; see {log}")
            time.sleep(0.5)
    return proc, url, log


def run(args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)
    bodies = _bodies(args.seed)
    plan = [kind for kind, n in MIX.items() for _ in range(n)]
    workdir = Path(tempfile.mkdtemp(prefix="sg-soak-"))
    proc, url, log = _start_stack(workdir)
    port = int(url.rsplit(":", 1)[1])
    gateway = psutil.Process(proc.pid)
    statuses: Counter[str] = Counter()
    unexpected: list[str] = []
    lock = threading.Lock()
    client = httpx.Client(timeout=60, trust_env=False, limits=httpx.Limits(max_connections=64))

    def send(kind: str) -> None:
        try:
            if kind == "stalled":
                status = _stalled(port)
            else:
                body, headers = bodies[kind]
                status = client.post(
                    f"{url}/v1/classify", content=body, headers=headers
                ).status_code
        except httpx.HTTPError as exc:
            status = 0
            with lock:
                unexpected.append(f"{kind}: {type(exc).__name__}")
        with lock:
            statuses[f"{kind} {status}"] += 1
            if status >= 500 and status not in DOCUMENTED_5XX:
                unexpected.append(f"{kind}: {status}")

    t0 = time.monotonic()
    samples = [_sample(gateway, 0, t0)]
    sent = 0
    try:
        with ThreadPoolExecutor(args.clients) as pool, tqdm(total=args.requests) as bar:
            while sent < args.requests:
                n = min(args.sample_every, args.requests - sent)
                kinds = [rng.choice(plan) for _ in range(n)]
                burst_at = {i for i in range(n) if (sent + i + 1) % args.burst_every == 0}
                futures = []
                for i, kind in enumerate(kinds):
                    futures.append(pool.submit(send, kind))
                    if i in burst_at:  # concurrent clips over max_inflight + max_queue
                        burst = 3 * (MAX_INFLIGHT + MAX_QUEUE)
                        threads = [
                            threading.Thread(target=send, args=("npy",)) for _ in range(burst)
                        ]
                        for t in threads:
                            t.start()
                        for t in threads:
                            t.join()
                        sent += burst
                for f in futures:
                    f.result()
                sent += n
                bar.update(n)
                samples.append(_sample(gateway, sent, t0))
        # Quiescent end point: the client's keep-alive connections closed, the last
        # stalled uploads timed out, the gateway's idle keep-alive timers run out.
        client.close()
        time.sleep(2 * UPLOAD_TIMEOUT_S + 6)
        samples.append(_sample(gateway, sent, t0))
        with httpx.Client(timeout=10, trust_env=False) as probe:
            ready = probe.get(f"{url}/readyz").status_code
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return _report(args, samples, statuses, unexpected, ready, time.monotonic() - t0, log)


def _report(
    args: argparse.Namespace,
    samples: list[Sample],
    statuses: Counter[str],
    unexpected: list[str],
    ready: int,
    seconds: float,
    log: Path,
) -> dict[str, object]:
    warm = next(s for s in samples if s.requests >= args.warmup)
    end = samples[-1]

    def growth(field: str) -> float:
        return (getattr(end, field) - getattr(warm, field)) / getattr(warm, field)

    by_status: Counter[int] = Counter()
    for key, n in statuses.items():
        by_status[int(key.rsplit(" ", 1)[1])] += n
    targets = {
        "gateway_rss_growth_ok": growth("gateway_rss_mb") < args.max_rss_growth,
        "torchserve_rss_growth_ok": growth("torchserve_rss_mb") < args.max_rss_growth,
        # flat = no growth: the quiescent end is not above the warmed-up level (idle
        # pool threads and keep-alive connections retiring make it lower)
        "gateway_fds_flat": end.gateway_fds - warm.gateway_fds <= args.fd_slack,
        "torchserve_fds_flat": end.torchserve_fds - warm.torchserve_fds <= args.fd_slack,
        "gateway_threads_flat": end.gateway_threads - warm.gateway_threads <= args.fd_slack,
        "torchserve_threads_flat": end.torchserve_threads - warm.torchserve_threads
        <= args.fd_slack,
        "no_undocumented_5xx": not unexpected,
        "same_torchserve_workers": samples[0].worker_pids == end.worker_pids,
        "readyz_200_at_end": ready == 200,
    }
    report: dict[str, object] = {
        "command": "python -m load_tests.soak " + " ".join(sys.argv[1:]),
        "requests": end.requests,
        "seconds": round(seconds, 1),
        "warmup_requests": warm.requests,
        "statuses": dict(sorted(by_status.items())),
        "statuses_by_kind": dict(sorted(statuses.items())),
        "unexpected": unexpected[:50],
        "gateway_rss_growth": round(growth("gateway_rss_mb"), 4),
        "torchserve_rss_growth": round(growth("torchserve_rss_mb"), 4),
        "max_after_warmup": {
            field: max(getattr(s, field) for s in samples if s.requests >= warm.requests)
            for field in (
                "gateway_rss_mb",
                "gateway_fds",
                "gateway_threads",
                "torchserve_rss_mb",
                "torchserve_fds",
                "torchserve_threads",
            )
        },
        "at_warmup": asdict(warm),
        "at_end": asdict(end),
        "start": asdict(samples[0]),
        "targets": targets,
        "passed": all(targets.values()),
        "serve_log": str(log),
        "samples": [asdict(s) for s in samples],
    }
    return report


def plot(report: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    assert isinstance(samples, list)
    x = [s["requests"] for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    panels = [("rss_mb", "RSS (MiB)"), ("fds", "open file descriptors"), ("threads", "threads")]
    for ax, (field, label) in zip(axes, panels, strict=True):
        for proc in ("gateway", "torchserve"):
            ax.plot(x, [s[f"{proc}_{field}"] for s in samples], marker=".", label=proc)
        ax.axvline(int(str(report["warmup_requests"])), color="grey", linestyle=":")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="center right")
    axes[0].set_title(
        f"soak: {report['requests']} mixed requests in {report['seconds']} s "
        "(dotted: end of warm-up)"
    )
    axes[-1].set_xlabel("requests sent")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("--burst-every", type=int, default=250)
    parser.add_argument("--warmup", type=int, default=500, help="requests before the baseline")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--fd-slack", type=int, default=8, help="allowed fd/thread drift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "soak")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out / "soak.png")
    summary = {k: v for k, v in report.items() if k not in ("samples", "statuses_by_kind")}
    logger.info("%s", json.dumps(summary, indent=1))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
