"""Two real TorchServes behind one gateway: spreading, failover and rejoining.

The session's TorchServe and a second one on its own free ports (same model
store) form a pool. Under a loop of concurrent classify requests the second is
killed (its Java frontend, as in a crash): every request must still get 200.
When it is started again on the same ports, the pool's probe finds it ready and
it gets calls again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.modelserver.torchserve_proc import TorchServeProcess
from tests import media
from tests.integration.helpers import (
    Gateway,
    StartGateway,
    color_frames,
    running_torchserve,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

logger = logging.getLogger(__name__)

MP4 = media.write_kind(None, color_frames("green", t=16, h=48, w=64), "mp4_h264")


@pytest.fixture(scope="module")
def second_torchserve(
    model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchServeProcess]:
    with running_torchserve(model_store, tmp_path_factory.mktemp("torchserve2")) as server:
        yield server


def _backend_metric(text: str, name: str, url: str) -> float:
    match = re.search(rf'^shuffleguard_{name}\{{backend="{re.escape(url)}"\}} (\S+)$', text, re.M)
    assert match, f"no {name} for {url}"
    return float(match.group(1))


def test_one_of_two_torchserves_killed_under_load(
    torchserve: TorchServeProcess,
    second_torchserve: TorchServeProcess,
    start_gateway: StartGateway,
) -> None:
    first, second = torchserve, second_torchserve
    gateway: Gateway = start_gateway(
        backend_url=f"{first.inference_url},{second.inference_url}",
        backend_management_url=f"{first.management_url},{second.management_url}",
        backend_probe_interval_s=0.5,
        max_inflight=8,
        max_queue=32,
        research_mode=False,
    )
    metrics_url = f"{gateway.url}/metrics"
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60, trust_env=False) as c:
            while not stop.is_set():
                r = c.post(f"{gateway.url}/v1/classify", content=MP4)
                statuses[r.status_code] += 1
                if r.status_code != 200:
                    logger.error("classify answered %d: %s", r.status_code, r.text)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # both take work while both are up
        wait_until(lambda: sum(statuses.values()) >= 8, 120)
        wait_until(
            lambda: (
                _backend_metric(
                    httpx.get(metrics_url).text, "backend_calls_total", second.inference_url
                )
                >= 3
            ),
            60,
        )
        before_kill = sum(statuses.values())
        second.kill()  # the Java frontend dies mid-load: connections refused or dropped
        wait_until(
            lambda: (
                _backend_metric(httpx.get(metrics_url).text, "backend_up", second.inference_url)
                == 0
            ),
            30,
        )
        during = sum(statuses.values())
        wait_until(lambda: sum(statuses.values()) >= during + 40, 180)  # load while it is down
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
    sent = sum(statuses.values())
    logger.info("failover: %d requests (%d before the kill): %s", sent, before_kill, dict(statuses))
    assert statuses == Counter({200: sent}), dict(statuses)
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    text = httpx.get(metrics_url).text
    assert _backend_metric(text, "backend_failovers_total", second.inference_url) >= 1
    assert _backend_metric(text, "backend_failovers_total", first.inference_url) == 0

    # the killed one comes back on the same ports and rejoins
    second.stop()
    second.start()
    second.wait_ready()
    back = time.monotonic()
    rejoin_s = wait_until(
        lambda: (
            _backend_metric(httpx.get(metrics_url).text, "backend_up", second.inference_url) == 1
        ),
        30,
    )
    calls_before = _backend_metric(
        httpx.get(metrics_url).text, "backend_calls_total", second.inference_url
    )
    with httpx.Client(timeout=60, trust_env=False) as c:
        for _ in range(4):
            assert c.post(f"{gateway.url}/v1/classify", content=MP4).status_code == 200
    calls_after = _backend_metric(
        httpx.get(metrics_url).text, "backend_calls_total", second.inference_url
    )
    logger.info("rejoined %.2f s after it was ready again", time.monotonic() - back)
    print(f"failover: {sent} requests, statuses {dict(statuses)}; rejoin {rejoin_s:.2f} s")
    assert rejoin_s < 5
    assert calls_after > calls_before
