"""What a client may see and change: production (default) vs research mode (SPEC §4)."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests import media
from tests.integration.helpers import TINY, Gateway, color_frames, first_frame_attack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PRODUCTION_FIELDS = {"label", "label_index", "model", "request_id", "timings_ms"}
RESEARCH_FIELDS = PRODUCTION_FIELDS | {
    "confidence",
    "votes",
    "ensemble",
    "votes_cast",
    "h1",
    "h2",
    "seed",
    "undefended_label",
    "suspected_adversarial",
}
CLIP = media.write_kind(None, color_frames("green"), "mp4_h264")


def test_production_answers_label_only(prod_gateway: Gateway, client: httpx.Client) -> None:
    r = client.post(f"{prod_gateway.url}/v1/classify", content=CLIP)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == PRODUCTION_FIELDS
    assert body["label"] == "green" and body["model"] == TINY
    assert set(body["timings_ms"]) == {"decode", "shuffle", "backend", "vote", "total"}


def test_production_accepts_the_model_parameter(
    prod_gateway: Gateway, client: httpx.Client
) -> None:
    r = client.post(f"{prod_gateway.url}/v1/classify?model={TINY}", content=CLIP)
    assert r.status_code == 200 and set(r.json()) == PRODUCTION_FIELDS


@pytest.mark.parametrize(
    "query",
    ["defense=false", "ensemble=1", "h1=0", "h2=8", "seed=1", "ensemble=1000", "early_stop=false"],
)
def test_production_refuses_the_defense_knobs(
    query: str, prod_gateway: Gateway, client: httpx.Client
) -> None:
    r = client.post(f"{prod_gateway.url}/v1/classify?{query}", content=CLIP)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "research_mode_required"


def test_production_still_flags_attacks_in_metrics_and_log(
    prod_gateway: Gateway, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    def flagged() -> float:
        for line in client.get(f"{prod_gateway.url}/metrics").text.splitlines():
            if line.startswith(f'shuffleguard_suspected_adversarial_total{{model="{TINY}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = flagged()
    with caplog.at_level(logging.INFO, logger="shuffleguard.access"):
        r = client.post(
            f"{prod_gateway.url}/v1/classify",
            content=media.npy_bytes(first_frame_attack()),
            headers={"X-Request-ID": "attack-1"},
        )
    assert r.status_code == 200
    assert set(r.json()) == PRODUCTION_FIELDS and r.json()["label"] == "red"
    assert flagged() == before + 1
    lines = [rec.getMessage() for rec in caplog.records if "attack-1" in rec.getMessage()]
    assert len(lines) == 1  # one structured line per request, with its id
    assert '"suspected_adversarial":true' in lines[0] and '"undefended_label":"blue"' in lines[0]


def test_research_mode_opens_every_field(research_gateway: Gateway, client: httpx.Client) -> None:
    r = client.post(
        f"{research_gateway.url}/v1/classify?ensemble=5&h1=1&h2=2&seed=9&defense=true",
        content=CLIP,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == RESEARCH_FIELDS
    assert (body["ensemble"], body["h1"], body["h2"], body["seed"]) == (5, 1, 2, 9)
    assert sum(body["votes"].values()) == body["votes_cast"] <= 5
    assert isinstance(body["suspected_adversarial"], bool)
    assert 0.0 < body["confidence"] <= 1.0
