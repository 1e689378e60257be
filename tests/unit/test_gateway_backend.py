"""The TorchServe client's failure handling, on real sockets.

TorchServe itself runs in tests/integration; here the network faults it cannot
be made to produce on demand: nobody listening, a server that never answers, a
connection dropped mid-request. Outgoing headers and status mapping are checked
with httpx's MockTransport (TorchServe cannot show what headers it received).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from service.gateway.backend import TorchServeBackend, forwardable_headers
from service.gateway.errors import (
    BackendOverloaded,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
)
from service.modelserver import wire

CLIPS = np.zeros((2, 4, 8, 8, 3), np.uint8)


class _Listener:
    """A TCP server on loopback that counts connections and accepts, then ``mode``s."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == "drop":
                conn.recv(65536)
                conn.close()
            else:  # "silent": read and never answer
                self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[_Listener]:
    server = _Listener(request.param)
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nobody_listening_is_unavailable_after_retries() -> None:
    port = _closed_port()
    backend = TorchServeBackend(
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{port}",
        connect_retries=2,
        retry_backoff_s=0.05,
    )

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            await backend.infer("m", CLIPS)
        assert time.monotonic() - t0 >= 0.05 + 0.1  # two backoffs: it did retry
        assert info.value.status_code == 503 and info.value.retryable
        assert str(port) not in info.value.message  # no internal address for clients
        assert await backend.ready("m") is False
        await backend.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("listener", ["silent"], indirect=True)
def test_no_answer_within_the_timeout_is_504(listener: _Listener) -> None:
    url = f"http://127.0.0.1:{listener.port}"
    backend = TorchServeBackend(url, url, timeout_s=0.5)

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(BackendTimeout) as info:
            await backend.infer("m", CLIPS)
        assert 0.4 < time.monotonic() - t0 < 3
        assert info.value.status_code == 504
        await backend.aclose()

    asyncio.run(main())
    assert listener.connections == 1  # a request that may have run is never retried


@pytest.mark.parametrize("listener", ["drop"], indirect=True)
def test_dropped_connection_is_503_and_not_retried(listener: _Listener) -> None:
    url = f"http://127.0.0.1:{listener.port}"
    backend = TorchServeBackend(url, url, connect_retries=3)

    async def main() -> None:
        with pytest.raises(BackendUnavailable):
            await backend.infer("m", CLIPS)
        await backend.aclose()

    asyncio.run(main())
    assert listener.connections == 1


def _mock_backend(handler: httpx.MockTransport) -> TorchServeBackend:
    client = httpx.AsyncClient(transport=handler)
    return TorchServeBackend("http://ts:8080", "http://ts:8081", client=client)


def test_only_allow_listed_headers_reach_the_backend() -> None:
    seen: dict[str, str] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        seen["url"] = str(request.url)
        rows = wire.decode_clips(request.content).shape[0]
        return httpx.Response(200, content=wire.encode_logits(np.zeros((rows, 3))))

    backend = _mock_backend(httpx.MockTransport(handle))
    incoming = {
        "X-Request-ID": "abc",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "Authorization": "Bearer secret",
        "Cookie": "session=1",
        "X-Forwarded-For": "10.0.0.1",
    }
    logits = asyncio.run(backend.infer("my.model", CLIPS, headers=incoming))
    assert logits.shape == (2, 3)
    assert seen["url"] == "http://ts:8080/predictions/my.model"
    assert seen["content-type"] == "application/x-npy"
    assert seen["x-request-id"] == "abc" and seen["traceparent"].startswith("00-")
    for leaked in ("authorization", "cookie", "x-forwarded-for"):
        assert leaked not in seen
    assert forwardable_headers({"TraceState": "a=b", "Host": "x"}) == {"tracestate": "a=b"}


@pytest.mark.parametrize(
    "status, error",
    [
        (404, ModelNotFound),
        (503, BackendOverloaded),  # TorchServe's queue is full: the client should back off
        (500, BackendProtocolError),
        (507, BackendProtocolError),
        (400, BackendProtocolError),
        (504, BackendTimeout),
    ],
)
def test_backend_statuses_map_to_gateway_errors(status: int, error: type[Exception]) -> None:
    body = b'{"code": %d, "type": "X", "message": "details"}' % status
    backend = _mock_backend(httpx.MockTransport(lambda r: httpx.Response(status, content=body)))
    with pytest.raises(error):
        asyncio.run(backend.infer("m", CLIPS))


def test_wrong_number_of_logit_rows_is_a_backend_error() -> None:
    logits = wire.encode_logits(np.zeros((1, 3)))
    backend = _mock_backend(httpx.MockTransport(lambda r: httpx.Response(200, content=logits)))
    with pytest.raises(BackendProtocolError, match="1 rows for 2 clips"):
        asyncio.run(backend.infer("m", CLIPS))


def test_describe_reads_customized_metadata_as_object_or_string() -> None:
    import json

    meta = {
        "name": "m",
        "arch": "a",
        "clip_len": 4,
        "frame_interval": 1,
        "crop_size": 8,
        "labels": ["x", "y"],
        "preset": {"h1": 1, "h2": 1, "ensemble": 3},
    }
    for embedded in (meta, json.dumps(meta)):
        payload = [{"modelName": "m", "customizedMetadata": embedded, "workers": []}]
        backend = _mock_backend(
            httpx.MockTransport(lambda r, p=payload: httpx.Response(200, json=p))
        )
        described = asyncio.run(backend.describe("m"))
        assert described.clip_len == 4 and described.labels == ("x", "y")
    bare = [{"modelName": "m", "workers": []}]
    backend = _mock_backend(httpx.MockTransport(lambda r: httpx.Response(200, json=bare)))
    with pytest.raises(BackendProtocolError, match="meta.json"):
        asyncio.run(backend.describe("m"))
