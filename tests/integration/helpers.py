"""Helpers shared by the integration tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn

from service.config import Settings
from service.gateway import create_app
from service.modelserver.torchserve_proc import TorchServeOptions, TorchServeProcess, free_ports

REPO = Path(__file__).resolve().parents[2]
#: the shipped default model (another archive: SG_TEST_DEFAULT_MAR=/path/to/x.mar)
DEFAULT_MAR = Path(
    os.environ.get(
        "SG_TEST_DEFAULT_MAR",
        REPO / "model_store" / f"{Settings.model_fields['default_model'].default}.mar",
    )
)
#: every archive model_store ships (all are served: TorchServe loads the whole store)
SHIPPED_MARS = sorted({DEFAULT_MAR, *(REPO / "model_store").glob("*.mar")})


def archive_meta(mar: Path) -> dict[str, Any]:
    """The ``meta.json`` inside a ``.mar`` (a zip)."""
    with zipfile.ZipFile(mar) as zf:
        meta: dict[str, Any] = json.loads(zf.read("meta.json"))
    return meta


def toy_clips_for(meta: dict[str, Any], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh clips of a shipped toy model's own data (its meta.json ``data`` recipe: the
    ``toy-data`` options, contrast blend included) and their labels: uint8
    ``[count, T, H, W, 3]`` and int ``[count]``."""
    from service.research.toy.contrast import blend_towards_background
    from service.research.toy.data import OBJECT_FRACTION, SPEED_REFERENCE, generate_toy_dataset

    recipe = meta.get("data") or {}
    data = generate_toy_dataset(
        int(recipe.get("dataset", meta.get("dataset") or 1)),
        count=count,
        seed=seed,
        frames=int(recipe.get("frames", meta["clip_len"])),
        size=int(recipe.get("size", meta["crop_size"])),
        speed_reference=int(recipe.get("speed_reference", SPEED_REFERENCE)),
        object_fraction=float(recipe.get("object_fraction", OBJECT_FRACTION)),
        spatial_fraction=float(recipe.get("spatial_fraction", 1.0)),
    )
    return blend_towards_background(data, float(recipe.get("contrast", 1.0))), data.labels


TINY = "tiny_color"
TINY_META = {
    "name": TINY,
    "arch": "tiny_color",
    "clip_len": 8,
    "frame_interval": 1,
    "crop_size": 32,
    "labels": ["red", "green", "blue"],
    "preset": {"h1": 2, "h2": 1, "ensemble": 10},
}
COLORS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


class ColorNet(torch.nn.Module):
    """float ``[B, 3, T, H, W]`` in [0, 1] -> logits ``[B, 3]``: 3 x frame 0's mean RGB
    + the clip's mean RGB."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * x[:, :, 0].mean(dim=(2, 3)) + x.mean(dim=(2, 3, 4))


def color_frames(color: str, t: int = 24, h: int = 72, w: int = 96) -> np.ndarray:
    """uint8 ``[t, h, w, 3]`` of a solid colour with a moving neutral-grey square."""
    frames = np.empty((t, h, w, 3), np.uint8)
    frames[:] = COLORS[color]
    side = max(4, min(h, w) // 5)
    for i in range(t):
        x = (3 * i) % max(1, w - side)
        frames[i, h // 2 - side // 2 : h // 2 + side // 2, x : x + side] = 128
    return frames


def first_frame_attack(t: int = 8, size: int = 32) -> np.ndarray:
    """A clip at the model's exact shape: frame 0 blue, every other frame red."""
    frames = np.empty((t, size, size, 3), np.uint8)
    frames[:] = COLORS["red"]
    frames[0] = COLORS["blue"]
    return frames


def closed_port() -> int:
    """A loopback port nobody listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout_s``."""
    t0 = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


@dataclass
class Gateway:
    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_gateway_thread(settings: Settings) -> Gateway:
    """A gateway for ``settings`` served by uvicorn in a daemon thread (port: settings.port)."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway-{settings.port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"gateway on port {settings.port} did not start")
        time.sleep(0.02)
    return Gateway(f"http://127.0.0.1:{settings.port}", settings, server, thread)


StartGateway = Callable[..., Gateway]


class Blackhole:
    """A loopback TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


class Forwarder:
    """A loopback TCP port that forwards to ``target`` once :meth:`open` is called.

    Until then nothing listens on it (connections are refused): a backend that is
    down, then comes back on the same address.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = closed_port()
        self.sock: socket.socket | None = None

    def open(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """Open a connection and send a request head (CRLF line ends added) and ``body``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read until the server closes; (status, raw response)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@contextlib.contextmanager
def running_torchserve(
    model_store: Path, workdir: Path, **options: Any
) -> Iterator[TorchServeProcess]:
    """A real TorchServe on three free loopback ports, ready on entry, stopped on exit
    (``options``: further :class:`TorchServeOptions` fields, e.g. ``models``, ``extra``)."""
    inference, management, metrics = free_ports(3)
    server = TorchServeProcess(
        TorchServeOptions(
            model_store=model_store,
            inference_port=inference,
            management_port=management,
            metrics_port=metrics,
            workdir=workdir,
            start_timeout_s=240,
            **options,
        )
    )
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()
