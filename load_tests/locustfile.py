"""Locust scenario for the ShuffleGuard gateway.

One user class, :class:`GatewayUser`, that mostly classifies a small synthetic clip
and now and then lists models and probes readiness:

========================  ======  ====================================================
task                      weight  request
========================  ======  ====================================================
``classify_mp4``          8       ``POST /v1/classify`` multipart ``file`` = H.264 mp4
``classify_npy``          4       ``POST /v1/classify`` raw body, ``application/x-npy``
``list_models``           1       ``GET /v1/models``
``readiness``             1       ``GET /readyz``
``classify_not_a_video``  1       ``POST /v1/classify`` a PNG (tag ``bad-input``, 415
                                  expected; excluded unless asked for)
========================  ======  ====================================================

The clip is made once, in memory, at import: uint8 ``[T, H, W, 3]`` RGB frames of a bar
moving across a gradient (``SG_LOAD_FRAMES`` x ``SG_LOAD_SIZE`` x ``SG_LOAD_SIZE``,
default 16 x 64 x 64), encoded as mp4 (PyAV, libx264) and as ``.npy``. No files, no
network beyond the gateway under test.

A 429 (overloaded) or 503 counts as a failure here: it is not an answer. The headless
runner (``load_tests/run_headless.py``) reports status codes separately, so a 429 share
can be read apart from real errors.

Run it with the runner (preferred: bounded, loopback only, JSON report)::

    python -m load_tests.run_headless --host http://127.0.0.1:8000 --users 8 \\
        --spawn-rate 4 --run-time 30s --out report.json

or with locust itself::

    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:8000 \\
        -u 8 -r 4 -t 30s --exclude-tags bad-input

Both refuse a host that is not on the loopback interface.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
from locust import HttpUser, between, tag, task
from locust.exception import StopUser

logger = logging.getLogger(__name__)

#: seconds a single request may take before the client gives up (the gateway's own
#: backend timeout is 30 s, so it should always answer first).
REQUEST_TIMEOUT_S = 60.0


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or an address in 127.0.0.0/8 or ::1."""
    host = urlsplit(url).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def synthetic_frames(frames: int, size: int) -> np.ndarray:
    """A clip with motion: uint8 ``[frames, size, size, 3]`` RGB 0..255.

    A vertical bright bar sweeps left to right over a fixed colour gradient, so every
    frame differs (an encoder cannot collapse it into one frame) and the content is
    deterministic.
    """
    if frames < 2 or size < 16:
        raise ValueError(f"need at least 2 frames of 16x16, got {frames} x {size}x{size}")
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = np.empty((size, size, 3), dtype=np.float32)
    base[..., 0] = ramp[None, :]
    base[..., 1] = ramp[:, None]
    base[..., 2] = 128.0
    clip = np.repeat(base[None], frames, axis=0)
    bar = max(2, size // 8)
    for t in range(frames):
        x0 = (t * (size - bar)) // (frames - 1)
        clip[t, :, x0 : x0 + bar, :] = 255.0
    return clip.astype(np.uint8)


def encode_mp4(clip: np.ndarray, fps: int = 16) -> bytes:
    """uint8 ``[T, H, W, 3]`` -> H.264 mp4 bytes (yuv420p, so H and W must be even)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = int(clip.shape[2])
        stream.height = int(clip.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def encode_npy(clip: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(clip), allow_pickle=False)
    return buf.getvalue()


def tiny_png() -> bytes:
    """A valid 16x16 PNG: a still image, which the gateway must refuse with 415."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@dataclass(frozen=True)
class Payloads:
    frames: int
    size: int
    mp4: bytes
    npy: bytes
    png: bytes


def build_payloads(frames: int | None = None, size: int | None = None) -> Payloads:
    """The request bodies, from ``SG_LOAD_FRAMES`` / ``SG_LOAD_SIZE`` unless given."""
    frames = frames if frames is not None else int(os.environ.get("SG_LOAD_FRAMES", "16"))
    size = size if size is not None else int(os.environ.get("SG_LOAD_SIZE", "64"))
    if size % 2:
        raise ValueError(f"SG_LOAD_SIZE must be even (yuv420p), got {size}")
    clip = synthetic_frames(frames, size)
    return Payloads(frames, size, encode_mp4(clip), encode_npy(clip), tiny_png())


PAYLOADS = build_payloads()


class GatewayUser(HttpUser):
    """A client of ``/v1/classify``; see the module docstring for the task mix."""

    wait_time = between(0.05, 0.25)

    def on_start(self) -> None:
        if not is_loopback_url(self.host or ""):
            logger.error("refusing to load-test %r: only loopback hosts are allowed", self.host)
            raise StopUser()
        self.model = os.environ.get("SG_LOAD_MODEL") or None

    def _params(self) -> dict[str, str]:
        return {"model": self.model} if self.model else {}

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"X-Request-ID": f"load-{uuid.uuid4().hex}", **extra}

    def _check_classified(self, response: Any) -> None:
        if response.status_code != 200:
            response.failure(f"HTTP {response.status_code}")
            return
        try:
            body = response.json()
        except ValueError:
            response.failure("200 with a body that is not JSON")
            return
        if "label" not in body:
            response.failure("200 without a 'label' field")

    @tag("classify")
    @task(8)
    def classify_mp4(self) -> None:
        with self.client.post(
            "/v1/classify",
            params=self._params(),
            files={"file": ("clip.mp4", PAYLOADS.mp4, "video/mp4")},
            headers=self._headers(),
            name="/v1/classify [mp4]",
            timeout=REQUEST_TIMEOUT_S,
            catch_response=True,
        ) as response:
            self._check_classified(response)

    @tag("classify")
    @task(4)
    def classify_npy(self) -> None:
        with self.client.post(
            "/v1/classify",
            params=self._params(),
            data=PAYLOADS.npy,
            headers=self._headers(**{"Content-Type": "application/x-npy"}),
            name="/v1/classify [npy]",
            timeout=REQUEST_TIMEOUT_S,
            catch_response=True,
        ) as response:
            self._check_classified(response)

    @tag("models")
    @task(1)
    def list_models(self) -> None:
        with self.client.get(
            "/v1/models",
            headers=self._headers(),
            timeout=REQUEST_TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            try:
                body = response.json()
            except ValueError:
                response.failure("200 with a body that is not JSON")
                return
            if "models" not in body:
                response.failure("200 without a 'models' field")

    @tag("health")
    @task(1)
    def readiness(self) -> None:
        self.client.get("/readyz", headers=self._headers(), timeout=REQUEST_TIMEOUT_S)

    @tag("bad-input")
    @task(1)
    def classify_not_a_video(self) -> None:
        """A still image must be refused with 415 and a JSON error, not crash anything."""
        with self.client.post(
            "/v1/classify",
            files={"file": ("still.png", PAYLOADS.png, "image/png")},
            headers=self._headers(),
            name="/v1/classify [png, expect 415]",
            timeout=REQUEST_TIMEOUT_S,
            catch_response=True,
        ) as response:
            if response.status_code == 415:
                response.success()
            else:
                response.failure(f"expected 415, got HTTP {response.status_code}")
