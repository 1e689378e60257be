"""The gateway against each backend kind: TorchServe and an Open Inference Protocol
v2 server (KServe's own Python ModelServer serving the same ``tiny_color.mar``
through :mod:`service.modelserver.oip_server`), both real, on loopback.

The core suite (classify in research and production mode, in index and copy
mode, bad input -> 4xx, backend down -> 503, metrics) runs once per kind; a
few tests speak OIP directly (binary tensor data both ways, the JSON fallback,
metadata, the model's own 400 for bad tensors).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.gateway.oip import HEADER_LENGTH, OIPBackend
from service.modelserver.torchserve_proc import free_ports
from tests import media
from tests.integration.helpers import (
    REPO,
    TINY,
    Gateway,
    StartGateway,
    closed_port,
    color_frames,
    first_frame_attack,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLEAN = media.write_kind(None, color_frames("blue", t=24, h=48, w=64), "mp4_h264")
ATTACK = media.npy_bytes(first_frame_attack())


@pytest.fixture(scope="session")
def oip_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m service.modelserver.oip_server`` (KServe ModelServer) on a free port;
    its base URL."""
    port = free_ports(1)[0]
    log = tmp_path_factory.mktemp("oip") / "oip_server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.modelserver.oip_server",
                "--model-store",
                str(model_store),
                "--http-port",
                str(port),
                "--models",
                TINY,
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the OIP server exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v2/models/{TINY}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the OIP server did not get ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session", params=["torchserve", "oip"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def kind_gateways(
    kind: str, request: pytest.FixtureRequest, start_gateway: StartGateway
) -> dict[str, Gateway]:
    """Research and production gateways on the backend of ``kind``."""
    extra: dict[str, object] = {}
    if kind == "oip":
        extra = {"backend_kind": "oip", "backend_url": request.getfixturevalue("oip_server")}
    return {
        "research": start_gateway(**extra),
        "production": start_gateway(research_mode=False, **extra),
        "copy": start_gateway(shuffle_mode="copy", **extra),
    }


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60.0, trust_env=False) as c:
        yield c


# --------------------------------------------------------------------------- #
# the core suite, once per backend kind
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("mode", ["research", "copy"])
def test_classify_research_mode(
    mode: str, kind_gateways: dict[str, Gateway], client: httpx.Client
) -> None:
    url = f"{kind_gateways[mode].url}/v1/classify"
    clean = client.post(url, content=CLEAN)
    assert clean.status_code == 200, clean.text
    assert clean.json()["label"] == "blue" and clean.json()["suspected_adversarial"] is False
    body = client.post(url, content=ATTACK).json()
    assert body["undefended_label"] == "blue" and body["label"] == "red"
    assert body["votes"] == {"red": 6} and body["suspected_adversarial"] is True
    models = client.get(f"{kind_gateways[mode].url}/v1/models").json()
    tiny = next(m for m in models["models"] if m["name"] == TINY)
    assert tiny["labels"] == ["red", "green", "blue"] and tiny["preset"]["ensemble"] == 10


def test_classify_production_mode(kind_gateways: dict[str, Gateway], client: httpx.Client) -> None:
    r = client.post(f"{kind_gateways['production'].url}/v1/classify", content=ATTACK)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "red" and body["model"] == TINY  # the label only
    assert "votes" not in body and "undefended_label" not in body
    assert "suspected_adversarial" not in body


@pytest.mark.parametrize(
    "content",
    [b"", b"not a video at all", media.npy_bytes(np.zeros((8, 32, 32), np.uint8))],
    ids=["empty", "garbage", "npy_without_channels"],
)
def test_bad_clip_is_4xx_and_the_gateway_stays_ready(
    content: bytes, kind_gateways: dict[str, Gateway], client: httpx.Client
) -> None:
    gateway = kind_gateways["research"]
    r = client.post(f"{gateway.url}/v1/classify", content=content)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]
    assert client.get(f"{gateway.url}/readyz").status_code == 200
    assert client.post(f"{gateway.url}/v1/classify", content=ATTACK).status_code == 200


def test_backend_down_is_503(kind: str, start_gateway: StartGateway, client: httpx.Client) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    gateway = start_gateway(backend_kind=kind, backend_url=down, backend_management_url=down)
    r = client.post(f"{gateway.url}/v1/classify", content=CLEAN)
    assert r.status_code == 503 and r.headers.get("retry-after"), r.text
    assert client.get(f"{gateway.url}/readyz").status_code == 503


def test_metrics_move(kind_gateways: dict[str, Gateway], client: httpx.Client) -> None:
    gateway = kind_gateways["production"]

    def count(text: str, name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and f'model="{TINY}"' in line and 'status="200"' in line
        )

    before = count(client.get(f"{gateway.url}/metrics").text, "shuffleguard_requests_total")
    for _ in range(3):
        assert client.post(f"{gateway.url}/v1/classify", content=ATTACK).status_code == 200
    after = count(client.get(f"{gateway.url}/metrics").text, "shuffleguard_requests_total")
    assert after - before == 3


# --------------------------------------------------------------------------- #
# OIP on the wire
# --------------------------------------------------------------------------- #
def test_binary_tensor_data_both_ways(oip_server: str) -> None:
    clip = first_frame_attack()
    header = (
        b'{"inputs":[{"name":"clips","shape":[1,8,32,32,3],"datatype":"UINT8",'
        b'"parameters":{"binary_data_size":%d}}],'
        b'"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}' % clip.nbytes
    )
    r = httpx.post(
        f"{oip_server}/v2/models/{TINY}/infer",
        content=header + clip.tobytes(),
        headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
    )
    assert r.status_code == 200, r.text
    head_len = int(r.headers[HEADER_LENGTH])
    logits = np.frombuffer(r.content[head_len:], "<f4").reshape(1, 3)
    assert logits.argmax() == 2  # blue: frame 0 weighs 3x


@pytest.mark.parametrize("binary", [None, False])
def test_backend_infers_in_both_encodings_and_modes(oip_server: str, binary: bool | None) -> None:
    asyncio.run(_infer_both_modes(oip_server, binary))


async def _infer_both_modes(oip_server: str, binary: bool | None) -> None:
    backend = OIPBackend(oip_server, binary_data=binary)
    try:
        meta = await backend.describe(TINY)
        assert meta.extra["wire_modes"] == ["copy", "index"]
        assert (meta.clip_len, meta.crop_size, meta.labels) == (8, 32, ("red", "green", "blue"))
        clip = first_frame_attack()
        copied = await backend.infer(TINY, clip[None])
        indices = np.array([[1, 0, 2, 3, 4, 5, 6, 7], list(range(8))], np.int64)
        gathered = await backend.infer_indexed(TINY, clip, indices)
        np.testing.assert_allclose(gathered[1], copied[0], rtol=1e-6)
        assert gathered[0].argmax() == 0 and gathered[1].argmax() == 2
        assert backend.binary_data is (binary is not False)  # kserve 0.21 takes binary data
        assert await backend.ready(TINY) and not await backend.ready("no_such_model")
    finally:
        await backend.aclose()


def test_model_refuses_bad_tensors_with_400(oip_server: str) -> None:
    bad = {
        "inputs": [
            {"name": "clip", "shape": [8, 32, 32, 3], "datatype": "UINT8", "data": [0] * 24576},
            {"name": "indices", "shape": [1, 8], "datatype": "INT64", "data": [9] * 8},
        ]
    }
    r = httpx.post(f"{oip_server}/v2/models/{TINY}/infer", json=bad)
    assert r.status_code == 400 and "frame indices" in r.text
    r = httpx.post(f"{oip_server}/v2/models/{TINY}/infer", json={"inputs": bad["inputs"][:1]})
    assert r.status_code == 400 and "index mode" in r.text
    assert httpx.get(f"{oip_server}/v2/models/{TINY}/ready").status_code == 200


# --------------------------------------------------------------------------- #
# serve --backend-kind oip, with several gateway workers
# --------------------------------------------------------------------------- #
def test_serve_oip_kind_with_two_workers_counts_every_request(
    oip_server: str, tmp_path: Path
) -> None:
    """``shuffleguard serve --backend-kind oip --workers 2``: N requests on fresh
    connections (spread over the workers by the kernel) give a counter of N."""
    port = free_ports(1)[0]
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"]
    cmd += ["--backend-kind", "oip", "--backend-url", oip_server, "--default-model", TINY]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    n = 12
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        for _ in range(n):  # a new connection each: the workers share the listening socket
            r = httpx.post(f"{url}/v1/classify", content=ATTACK, timeout=60)
            assert r.status_code == 200, r.text
        text = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("shuffleguard_requests_total{") and 'status="200"' in line
    )
    assert total == n
    pids = {p.name.rsplit("_", 1)[1] for p in prom_dir.glob("counter_*.db")}
    print(f"{n} requests over {len(pids)} worker process(es): counter {total:g}")
