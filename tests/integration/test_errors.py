"""Bad inputs, limits, overload and backend faults, against the real stack.

Every bad request gets its own 4xx with the JSON error body, and the gateway
stays ready afterwards.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from service.decoder.sniff import NPY_MAGIC
from service.modelserver.torchserve_proc import TorchServeProcess
from tests import media
from tests.fuzz import targets as fuzz_targets
from tests.integration.helpers import (
    TINY,
    Blackhole,
    Forwarder,
    Gateway,
    StartGateway,
    closed_port,
    color_frames,
    raw_request,
    read_response,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MP4 = media.write_kind(None, color_frames("red", t=24, h=64, w=96), "mp4_h264")


def _npy_with_header(header: str) -> bytes:
    """A v1.0 .npy with ``header`` as its header text and a 16x64x64x3 payload."""
    raw = (header + " " * (64 - (len(header) + 11) % 64) + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + bytes(16 * 64 * 64 * 3)


def _bad_inputs() -> dict[str, tuple[Callable[[], bytes], int, str]]:
    rng = np.random.default_rng(0)
    return {
        "empty body": (lambda: b"", 400, "empty_upload"),
        "random bytes": (
            lambda: rng.integers(0, 256, 20000, dtype=np.uint8).tobytes(),
            400,
            "bad_video",
        ),
        "truncated mp4": (lambda: MP4[: len(MP4) // 3], 400, "bad_video"),
        "text": (lambda: b"GET / HTTP/1.1\nthis is text, not a video\n" * 20, 400, "bad_video"),
        "png image": (
            lambda: media.write_image(None, color_frames("red", t=1)[0], "png"),
            415,
            "not_a_video",
        ),
        "jpeg image": (
            lambda: media.write_image(None, color_frames("red", t=1)[0], "mjpeg"),
            415,
            "not_a_video",
        ),
        "audio only": (lambda: media.write_audio_only(), 415, "not_a_video"),
        "zero frames": (
            lambda: media.npy_bytes(np.zeros((0, 32, 32, 3), np.uint8)),
            400,
            "bad_video",
        ),
        "one frame npy": (
            lambda: media.npy_bytes(np.zeros((1, 32, 32, 3), np.uint8)),
            415,
            "not_a_video",
        ),
        "float npy": (
            lambda: media.npy_bytes(np.zeros((8, 32, 32, 3), np.float32)),
            400,
            "bad_video",
        ),
        "npy header with an unclosed bracket": (  # was a 500 (numpy's tokenize.TokenError)
            lambda: _npy_with_header(
                "{'descr': '|u1', 'fortran_order': False, 'shape': (16, 64, 64, 3 }"
            ),
            400,
            "bad_video",
        ),
        "npy header that is not a dict": (lambda: _npy_with_header("[1, 2"), 400, "bad_video"),
        "huge frame dimensions": (
            lambda: media.npy_header_only((16, 8000, 8000, 3)),
            413,
            "frame_too_large",
        ),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_its_4xx_and_the_gateway_stays_ready(
    name: str, research_gateway: Gateway, client: httpx.Client
) -> None:
    make, status, code = BAD[name]
    r = client.post(f"{research_gateway.url}/v1/classify", content=make())
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    assert client.get(f"{research_gateway.url}/readyz").status_code == 200


@pytest.mark.parametrize(
    "query, status, code",
    [
        ("ensemble=0", 422, "invalid_parameter"),
        ("ensemble=65", 422, "invalid_parameter"),
        ("h1=-1", 422, "invalid_parameter"),
        ("h2=0", 422, "invalid_parameter"),
        ("h2=9", 422, "invalid_parameter"),  # > clip_len of tiny_color
        ("seed=-1", 422, "invalid_parameter"),
        ("defense=sometimes", 422, "invalid_parameter"),
        ("model=no_such_model", 404, "model_not_found"),
        ("model=..%2F..%2Fmodels", 422, "invalid_parameter"),
    ],
)
def test_bad_parameters(
    query: str, status: int, code: str, research_gateway: Gateway, client: httpx.Client
) -> None:
    r = client.post(f"{research_gateway.url}/v1/classify?{query}", content=MP4)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert client.get(f"{research_gateway.url}/readyz").status_code == 200


@pytest.fixture(scope="module")
def strict_gateway(start_gateway: StartGateway) -> Gateway:
    """Small limits, so that tests can go over them cheaply."""
    return start_gateway(max_upload_bytes=1_000_000, upload_timeout_s=1.5, max_pixels=320 * 240)


def test_oversized_upload_with_content_length(
    strict_gateway: Gateway, client: httpx.Client
) -> None:
    r = client.post(f"{strict_gateway.url}/v1/classify", content=b"\0" * 3_000_000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "upload_too_large"


def test_oversized_chunked_upload(strict_gateway: Gateway, client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b"\1" * 65536

    r = client.post(f"{strict_gateway.url}/v1/classify", content=chunks())
    assert r.status_code == 413
    r = client.post(
        f"{strict_gateway.url}/v1/classify",
        files={"file": ("big.mp4", b"\2" * 1_500_000, "video/mp4")},
    )
    assert r.status_code == 413
    assert client.get(f"{strict_gateway.url}/readyz").status_code == 200


def test_frame_over_the_pixel_limit(strict_gateway: Gateway, client: httpx.Client) -> None:
    big = media.write_kind(None, color_frames("red", t=4, h=480, w=640), "mp4_h264")
    r = client.post(f"{strict_gateway.url}/v1/classify", content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "frame_too_large"


def test_stalled_upload_gets_408_without_holding_up_others(
    strict_gateway: Gateway, client: httpx.Client
) -> None:
    port = int(strict_gateway.url.rsplit(":", 1)[1])
    t0 = time.monotonic()
    stalled = raw_request(
        port,
        "POST /v1/classify HTTP/1.1\nHost: x\nContent-Type: video/mp4\nContent-Length: 100000",
        b"\0" * 1000,
    )
    # meanwhile a complete request goes through at once
    r = client.post(f"{strict_gateway.url}/v1/classify", content=MP4)
    served = time.monotonic() - t0
    assert r.status_code == 200 and served < 1.5
    status, raw = read_response(stalled)  # returns when the gateway closes the connection
    waited = time.monotonic() - t0
    assert status == 408 and b"upload_timeout" in raw
    assert 1.4 < waited < 6
    stalled.close()


def test_overload_gets_429_with_retry_after(
    start_gateway: StartGateway, client: httpx.Client
) -> None:
    gateway = start_gateway(max_inflight=1, max_queue=0, upload_timeout_s=30, retry_after_s=3)
    port = int(gateway.url.rsplit(":", 1)[1])
    stalled = raw_request(
        port, "POST /v1/classify HTTP/1.1\nHost: x\nContent-Length: 100000", b"\0" * 10
    )
    time.sleep(0.3)  # the stalled request is admitted and holds the only place
    r = client.post(f"{gateway.url}/v1/classify", content=MP4)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3" and r.json()["error"]["code"] == "overloaded"
    stalled.close()  # capacity comes back once the gateway sees the client leave
    wait_until(lambda: client.post(f"{gateway.url}/v1/classify", content=MP4).status_code == 200, 5)


def test_concurrent_requests_all_succeed_within_capacity(
    start_gateway: StartGateway,
) -> None:
    gateway = start_gateway(max_inflight=2, max_queue=8)
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(timeout=60, trust_env=False) as c:
            statuses.append(c.post(f"{gateway.url}/v1/classify", content=MP4).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8


def test_backend_down_is_503(start_gateway: StartGateway, client: httpx.Client) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    gateway = start_gateway(backend_url=url, backend_management_url=url, retry_after_s=2)
    r = client.post(f"{gateway.url}/v1/classify", content=MP4)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "backend_unavailable"
    ready = client.get(f"{gateway.url}/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "2"


def test_backend_timeout_is_504(
    start_gateway: StartGateway, torchserve: TorchServeProcess, client: httpx.Client
) -> None:
    hole = Blackhole()  # inference never answers; metadata comes from the real TorchServe
    try:
        gateway = start_gateway(
            backend_url=f"http://127.0.0.1:{hole.port}",
            backend_management_url=torchserve.management_url,
            backend_timeout_s=1.0,
        )
        t0 = time.monotonic()
        r = client.post(f"{gateway.url}/v1/classify", content=MP4)
        assert r.status_code == 504 and r.json()["error"]["code"] == "backend_timeout"
        assert 0.9 < time.monotonic() - t0 < 5
        metrics = client.get(f"{gateway.url}/metrics").text
        assert 'shuffleguard_backend_errors_total{kind="timeout"} 1.0' in metrics
    finally:
        hole.close()


def test_gateway_recovers_by_itself_when_the_backend_comes_back(
    start_gateway: StartGateway, torchserve: TorchServeProcess, client: httpx.Client
) -> None:
    inference = Forwarder(int(torchserve.inference_url.rsplit(":", 1)[1]))
    management = Forwarder(int(torchserve.management_url.rsplit(":", 1)[1]))
    try:
        gateway = start_gateway(
            backend_url=f"http://127.0.0.1:{inference.port}",
            backend_management_url=f"http://127.0.0.1:{management.port}",
        )
        assert client.get(f"{gateway.url}/readyz").status_code == 503
        assert client.post(f"{gateway.url}/v1/classify", content=MP4).status_code == 503
        inference.open()
        management.open()  # the backend is back, on the same address
        took = wait_until(lambda: client.get(f"{gateway.url}/readyz").status_code == 200, 10)
        assert took < 10
        r = client.post(f"{gateway.url}/v1/classify", content=MP4)
        assert r.status_code == 200 and r.json()["model"] == TINY
    finally:
        inference.close()
        management.close()


def _worker_pids(torchserve: TorchServeProcess, client: httpx.Client) -> list[int]:
    described = client.get(f"{torchserve.management_url}/models/{TINY}").json()
    return sorted(int(w["pid"]) for entry in described for w in entry["workers"])


def _bad_batches() -> dict[str, bytes]:
    good = media.npy_bytes(np.zeros((2, 8, 32, 32, 3), np.uint8))
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 8, 32, 32, 3 }"
    return {
        "empty": b"",
        "not npy": b"hello, not an array",
        "magic only": b"\x93NUMPY",
        "unclosed bracket": _npy_with_header(header),
        "truncated data": good[:-100],
        "wrong dtype": media.npy_bytes(np.zeros((2, 8, 32, 32, 3), np.float32)),
        "wrong shape": media.npy_bytes(np.zeros((2, 8, 16, 16, 3), np.uint8)),
        "zero clips": media.npy_bytes(np.zeros((0, 8, 32, 32, 3), np.uint8)),
        "huge declared shape": media.npy_header_only((10**6, 8, 32, 32, 3)),
        "pickled objects": pickled.getvalue(),
    }


def test_bad_batches_straight_to_torchserve_get_400_json_and_no_worker_restart(
    torchserve: TorchServeProcess, client: httpx.Client
) -> None:
    wait_until(lambda: len(_worker_pids(torchserve, client)) > 0, 60)
    before = _worker_pids(torchserve, client)
    url = f"{torchserve.inference_url}/predictions/{TINY}"
    for name, body in _bad_batches().items():
        r = client.post(url, content=body, headers={"Content-Type": "application/x-npy"})
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert r.json()["error"]["code"] == "bad_batch", (name, r.text)
    good = media.npy_bytes(np.zeros((2, 8, 32, 32, 3), np.uint8))
    r = client.post(url, content=good, headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200
    assert _worker_pids(torchserve, client) == before  # the same worker(s), none restarted


def _fuzz_findings() -> dict[str, tuple[bytes, str | None]]:
    """The committed fuzz corpus as request bodies (and Content-Types) for the gateway."""
    found: dict[str, tuple[bytes, str | None]] = {}
    for path in sorted(fuzz_targets.CORPUS.glob("*/*")):
        data, ctype = path.read_bytes(), None
        if path.parent.name == "npy":
            data = NPY_MAGIC + data
        elif path.parent.name == "upload":
            head, data = fuzz_targets.split_upload(data)
            ctype, data = head.decode("latin-1"), b"".join(data)
        elif path.parent.name != "video":
            continue
        found[f"{path.parent.name}/{path.name}"] = (data, ctype)
    return found


FINDINGS = _fuzz_findings()


@pytest.mark.parametrize("name", list(FINDINGS))
def test_fuzz_findings_get_a_4xx_through_the_gateway(
    name: str, research_gateway: Gateway, client: httpx.Client
) -> None:
    body, ctype = FINDINGS[name]
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post(f"{research_gateway.url}/v1/classify", content=body, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]
    assert client.get(f"{research_gateway.url}/readyz").status_code == 200
