"""The query-attack watch on the real stack: TorchServe + a production gateway on loopback
with ``detect_policy=refuse``. A benign client sending as many distinct clips as the attack's
budget is never flagged; ``shuffleguard redteam`` (RayS, label-only) is refused within the
number of queries docs/detection.md states; the refusal is a clear 403 and the service
stays healthy."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.cli import main
from service.gateway.keys import hash_key, new_key
from service.research.experiments.redteam import GatewayError
from tests.integration.helpers import TINY, TINY_META, Gateway, StartGateway
from tests.integration.test_redteam import write_clips

BUDGET = 30
#: docs/detection.md: the default rule (4 near-duplicates among the last 20 queries) detects
#: Square by its 5th query and RayS by its 10th (the clean check included; 8 clips each)
DETECTED_BY = 10


def npy(clip: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, clip)
    return buf.getvalue()


def distinct_clip(seed: int) -> np.ndarray:
    """A benign clip for tiny_color: its own random texture and a moving bright block."""
    rng = np.random.default_rng(seed)
    t, s = int(TINY_META["clip_len"]), int(TINY_META["crop_size"])  # type: ignore[call-overload]
    clip = np.repeat(rng.integers(0, 256, (1, s, s, 3), dtype=np.uint8), t, axis=0)
    y, x = rng.integers(0, s - 12, 2)
    for i in range(t):
        clip[i, y + i : y + i + 4, x + i : x + i + 4] = 255
    return clip


def metric(gateway: Gateway, name: str) -> float:
    text = httpx.get(gateway.url + "/metrics", trust_env=False).text
    return sum(float(v) for v in re.findall(rf"^shuffleguard_{name}{{[^}}]*}} (\S+)$", text, re.M))


def status_count(gateway: Gateway, status: int) -> float:
    text = httpx.get(gateway.url + "/metrics", trust_env=False).text
    pattern = (
        rf'shuffleguard_requests_total{{[^}}]*model="{TINY}"[^}}]*status="{status}"[^}}]*}} (\S+)'
    )
    return sum(float(v) for v in re.findall(pattern, text))


@pytest.fixture(scope="module")
def guarded(start_gateway: StartGateway) -> Gateway:
    return start_gateway(research_mode=False, detect_policy="refuse", detect_penalty_s=600)


def test_benign_run_then_redteam_is_refused_and_service_stays_healthy(
    guarded: Gateway, tmp_path: Path
) -> None:
    with httpx.Client(trust_env=False, timeout=60) as c:
        for seed in range(BUDGET):  # a benign client, as long as the attack's budget
            r = c.post(guarded.url + "/v1/classify", content=npy(distinct_clip(seed)),
                       headers={"Content-Type": "application/x-npy"})  # fmt: skip
            assert r.status_code == 200, r.text
            if seed % 10 == 0:  # a retry of the same clip: not a near-duplicate
                assert (
                    c.post(
                        guarded.url + "/v1/classify",
                        content=npy(distinct_clip(seed)),
                        headers={"Content-Type": "application/x-npy"},
                    ).status_code
                    == 200
                )
    assert metric(guarded, "near_duplicate_queries_total") == 0
    assert metric(guarded, "query_attacks_detected_total") == 0

    answered_before = status_count(guarded, 200)
    data = write_clips(tmp_path / "clips")
    with pytest.raises(GatewayError, match="HTTP 403.*client_refused"):
        main(["redteam", "--url", guarded.url, "--data", str(data), "--queries", str(BUDGET),
              "--eps", "4", "--clips", "3", "--confirm", "3", "--seed", "1",
              "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    # answered: redteam's probe + the attack's queries before the refused one
    answered = status_count(guarded, 200) - answered_before
    assert 2 <= answered <= DETECTED_BY
    assert metric(guarded, "query_attacks_detected_total") == 1
    assert metric(guarded, "near_duplicate_queries_total") >= 4

    with httpx.Client(trust_env=False, timeout=60) as c:
        r = c.post(guarded.url + "/v1/classify", content=npy(distinct_clip(999)),
                   headers={"Content-Type": "application/x-npy"})  # fmt: skip
        assert r.status_code == 403
        body = r.json()["error"]
        assert body["code"] == "client_refused" and "docs/detection.md" in body["message"]
        assert 500 <= int(r.headers["Retry-After"]) <= 600
        assert c.get(guarded.url + "/healthz").status_code == 200
        assert c.get(guarded.url + "/readyz").status_code == 200
        assert c.get(guarded.url + "/v1/models").status_code == 200
    assert metric(guarded, "query_watch_refusals_total") >= 2


def test_with_keys_the_watch_refuses_the_attacking_key_alone(
    start_gateway: StartGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyed: each key has its own history; the key running redteam is refused, another
    key keeps being served, and the metrics name the key (never the key itself)."""
    keys = {name: new_key() for name in ("mallory", "alice")}
    key_file = tmp_path / "keys.yaml"
    key_file.write_text(
        "keys:\n"
        + "".join(
            f"  - {{name: {n}, role: client, sha256: {hash_key(k)}, rate: 1000, burst: 1000}}\n"
            for n, k in keys.items()
        )
    )
    gateway = start_gateway(
        research_mode=False, api_keys_file=key_file, detect_policy="refuse", detect_penalty_s=600
    )
    monkeypatch.setenv("SHUFFLEGUARD_API_KEY", keys["mallory"])
    with pytest.raises(GatewayError, match="HTTP 403.*client_refused"):
        main(["redteam", "--url", gateway.url, "--data", str(write_clips(tmp_path / "clips")),
              "--queries", str(BUDGET), "--eps", "4", "--clips", "3", "--confirm", "3",
              "--seed", "1", "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    with httpx.Client(trust_env=False, timeout=60) as c:
        for name, expected in (("mallory", 403), ("alice", 200)):
            r = c.post(gateway.url + "/v1/classify", content=npy(distinct_clip(7)),
                       headers={"Content-Type": "application/x-npy",
                                "Authorization": f"Bearer {keys[name]}"})  # fmt: skip
            assert r.status_code == expected, (name, r.text)
        text = c.get(gateway.url + "/metrics").text
    assert re.search(r'query_attacks_detected_total{client="mallory",policy="refuse"} 1', text)
    assert 'client="alice",policy' not in text
    assert keys["mallory"] not in text and hash_key(keys["mallory"]) not in text
