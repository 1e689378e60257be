"""``shuffleguard redteam`` against the real stack: TorchServe + gateways on loopback.

The clips are for ``tiny_color`` (8 x 32 x 32), coloured so that red is level with
green or one level above it: the undefended model can be fooled within eps = 4 and
every outcome can be checked by re-classifying the saved clips. The attack seed is
fixed (``--seed 1``: its first clip's starting stripes already tip the tie), so what
succeeds within the tiny budget is the same on every run.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.cli import main
from service.research.experiments.redteam import GatewayClient
from tests.integration.helpers import TINY, TINY_META, Gateway, StartGateway

BUDGET = 30
EPS = 4


def write_clips(root: Path) -> Path:
    """Red-ish clips (red tied with green, or 1 level above: argmax breaks ties towards
    red) and a blue clip, labels.csv."""
    root.mkdir(parents=True, exist_ok=True)
    t, s = int(TINY_META["clip_len"]), int(TINY_META["crop_size"])  # type: ignore[call-overload]
    names: list[str] = list(TINY_META["labels"])  # type: ignore[call-overload]
    rows = ["file,label_index,label,split"]
    for i, (rgb, label) in enumerate([((120, 120, 40), 0), ((121, 120, 40), 0),
                                      ((40, 40, 200), 2)]):  # fmt: skip
        clip = np.empty((t, s, s, 3), np.uint8)
        clip[:] = rgb
        np.save(root / f"c{i}.npy", clip)
        rows.append(f"c{i}.npy,{label},{names[label]},test")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def classify_total(gateway: Gateway) -> float:
    """``shuffleguard_requests_total`` of tiny_color with status 200, from /metrics."""
    text = httpx.get(gateway.url + "/metrics", trust_env=False).text
    pattern = rf'shuffleguard_requests_total{{[^}}]*model="{TINY}"[^}}]*status="200"[^}}]*}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text))


def run_redteam(gateway: Gateway, data: Path, out: Path, *extra: str) -> dict:
    rc = main(["redteam", "--url", gateway.url, "--data", str(data), "--queries", str(BUDGET),
               "--eps", str(EPS), "--clips", "3", "--confirm", "3", "--out", str(out),
               "--seed", "1", "--no-progress", *extra])  # fmt: skip
    assert rc == 0
    for ext in ("csv", "json", "md", "png"):
        assert (out / f"redteam.{ext}").is_file()
    return dict(json.loads((out / "redteam.json").read_text()))


def check_report(res: dict, data: Path, out: Path, settings: set[str]) -> None:
    assert set(res["settings"]) == settings
    rows = res["rows"]
    assert len(rows) == 3 * len(settings)
    for r in rows:
        assert 1 <= r["queries"] <= BUDGET
        clean = np.load(data / r["file"])
        adv = np.load(out / "adv" / r["setting"] / r["file"])
        assert adv.dtype == np.uint8 and adv.shape == clean.shape
        linf = int(np.abs(adv.astype(int) - clean.astype(int)).max())
        assert linf == r["linf"] <= EPS
    # every answered query is a row's, except the one probe
    assert res["http"]["answered"] == sum(r["queries"] for r in rows) + 1
    assert res["http"]["requests"] == res["http"]["answered"] + res["http"]["throttled"]


@pytest.fixture(scope="module")
def gateways(start_gateway: StartGateway) -> dict[str, Gateway]:
    """Gateways of this module only, so /metrics counts only its requests."""
    return {"research": start_gateway(), "production": start_gateway(research_mode=False)}


def test_redteam_research_mode_counts_queries_and_saves_clips_that_reclassify(
    gateways: dict[str, Gateway], tmp_path: Path
) -> None:
    gw = gateways["research"]
    data = write_clips(tmp_path / "clips")
    before = classify_total(gw)
    res = run_redteam(gw, data, tmp_path / "out")
    assert res["mode"] == "research"
    check_report(res, data, tmp_path / "out", {"defended", "undefended"})
    # the gateway saw exactly the queries the report counts
    assert classify_total(gw) - before == res["http"]["answered"]
    assert all(s["attack"] == "square" for s in res["settings"].values())
    und = [r for r in res["rows"] if r["setting"] == "undefended"]
    assert sum(r["success"] for r in und) >= 1  # red tied with green: foolable
    with httpx.Client(trust_env=False, timeout=60) as c:
        for r in res["rows"]:
            adv = (tmp_path / "out" / "adv" / r["setting"] / r["file"]).read_bytes()
            params = {"defense": "false"} if r["setting"] == "undefended" else {}
            labels = [c.post(gw.url + "/v1/classify", content=adv, params=params,
                             headers={"Content-Type": "application/x-npy"}).json()["label_index"]
                      for _ in range(3)]  # fmt: skip
            wrong = sum(k != r["label_index"] for k in labels)
            if r["success"]:
                assert wrong >= 2, r
            elif r["setting"] == "undefended":
                assert wrong == 0, r  # deterministic: a failure stays right


def test_redteam_production_mode_is_label_only(
    gateways: dict[str, Gateway], tmp_path: Path
) -> None:
    gw = gateways["production"]
    data = write_clips(tmp_path / "clips")
    before = classify_total(gw)
    res = run_redteam(gw, data, tmp_path / "out")
    assert res["mode"] == "production"
    check_report(res, data, tmp_path / "out", {"defended"})
    assert res["settings"]["defended"]["attack"] == "rays"
    assert classify_total(gw) - before == res["http"]["answered"]
    # a score-based attack cannot run on labels: a clear refusal, not a crash
    with pytest.raises(SystemExit, match="production mode"):
        main(["redteam", "--url", gw.url, "--data", str(data), "--attack", "square",
              "--queries", "10", "--out", str(tmp_path / "sq"), "--no-progress"])  # fmt: skip


# --------------------------------------------------------------------------- #
# 429 Retry-After, against a tiny real HTTP server
# --------------------------------------------------------------------------- #
class _Throttling(BaseHTTPRequestHandler):
    """429 with Retry-After on the first ``throttle`` POSTs, then a classify answer."""

    throttle = 2
    seen: list[float] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(time.monotonic())
        if len(self.seen) <= self.throttle:
            body, status = b'{"error": {"code": "overloaded", "message": "later"}}', 429
        else:
            body, status = b'{"label": "red", "label_index": 0}', 200
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def throttling_server() -> Iterator[str]:
    _Throttling.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_waits_out_429_retry_after_and_counts_it(throttling_server: str) -> None:
    client = GatewayClient(throttling_server, timeout=10)
    try:
        answer = client.classify(np.zeros((2, 4, 4, 3), np.uint8), {})
    finally:
        client.close()
    assert answer["label_index"] == 0
    assert (client.requests, client.answered, client.throttled) == (3, 1, 2)
    assert client.slept_s == 2.0
    gaps = np.diff(_Throttling.seen)
    assert len(gaps) == 2 and all(g >= 0.95 for g in gaps)  # it really waited


def test_client_rides_out_a_real_gateways_429s(start_gateway: StartGateway) -> None:
    """A gateway that runs one classify at a time and queues none: concurrent clients
    get 429 + Retry-After, wait, retry, and every query is answered and counted."""
    gw = start_gateway(max_inflight=1, max_queue=0)
    clip = np.zeros((int(TINY_META["clip_len"]), 32, 32, 3), np.uint8)  # type: ignore[call-overload]
    clip[:] = (200, 40, 40)
    clients = [GatewayClient(gw.url, timeout=30) for _ in range(6)]
    barrier = threading.Barrier(len(clients))
    labels: list[int] = []

    def work(client: GatewayClient) -> None:
        barrier.wait()
        for _ in range(3):
            labels.append(client.classify(clip, {})["label_index"])

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for c in clients:
        c.close()
    assert labels == [0] * 18
    throttled = sum(c.throttled for c in clients)
    assert throttled >= 1  # six at once against one slot: someone was turned away
    assert all(c.requests == c.answered + c.throttled and c.answered == 3 for c in clients)
    assert all(c.slept_s == c.throttled * gw.settings.retry_after_s for c in clients)
    text = httpx.get(gw.url + "/metrics", trust_env=False).text
    pattern = r'shuffleguard_requests_total{[^}]*status="429"[^}]*} (\S+)'
    assert sum(float(v) for v in re.findall(pattern, text)) == throttled
