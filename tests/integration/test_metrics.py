"""/metrics moves with the traffic: counters, stage histograms, vote agreement."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.modelserver.torchserve_proc import TorchServeProcess
from tests import media
from tests.integration.helpers import TINY, Gateway, color_frames, first_frame_attack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(client: httpx.Client, gateway: Gateway) -> Samples:
    r = client.get(f"{gateway.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_move(research_gateway: Gateway, client: httpx.Client) -> None:
    before = _scrape(client, research_gateway)
    clean = media.write_kind(None, color_frames("blue"), "mp4_h264")
    url = f"{research_gateway.url}/v1/classify"
    assert client.post(url, content=clean).status_code == 200
    assert client.post(url, content=media.npy_bytes(first_frame_attack())).status_code == 200
    assert client.post(url, content=b"").status_code == 400
    assert client.post(f"{url}?ensemble=0", content=clean).status_code == 422
    assert client.post(f"{url}?model=nope", content=clean).status_code == 404
    after = _scrape(client, research_gateway)

    requests = "shuffleguard_requests_total"
    assert _delta(after, before, requests, model=TINY, status="200") == 2
    assert _delta(after, before, requests, model=TINY, status="400") == 1
    assert _delta(after, before, requests, model=TINY, status="422") == 1
    assert _delta(after, before, requests, model="unknown", status="404") == 1
    for stage in ("decode", "shuffle", "backend", "vote", "total"):
        count = _delta(after, before, "shuffleguard_request_duration_seconds_count", stage=stage)
        assert count == 2, stage
        assert _delta(after, before, "shuffleguard_request_duration_seconds_sum", stage=stage) > 0
    assert _delta(after, before, "shuffleguard_vote_agreement_count") == 2
    assert _delta(after, before, "shuffleguard_vote_agreement_sum") == pytest.approx(2.0)
    assert _delta(after, before, "shuffleguard_suspected_adversarial_total", model=TINY) == 1
    # both defended clips are unanimous: one round of a strict majority (6 of 10) each
    assert _delta(after, before, "shuffleguard_copies_classified_count") == 2
    assert _delta(after, before, "shuffleguard_copies_classified_sum") == 12
    # index mode: the 8 x 32 x 32 clip once + [7, 8] int64 indices, per request
    sent = _delta(after, before, "shuffleguard_backend_sent_bytes_total", model=TINY)
    assert sent == 2 * (8 * 32 * 32 * 3 + 7 * 8 * 8)
    assert after[("shuffleguard_inflight_requests", ())] == 0


def test_backend_metrics_of_torchserve_are_on_their_own_port(
    torchserve: TorchServeProcess, client: httpx.Client
) -> None:
    # metrics_mode=prometheus in model_store/config.properties
    r = client.get(f"{torchserve.metrics_url}/metrics")
    assert r.status_code == 200
    assert "ts_inference_requests_total" in r.text
